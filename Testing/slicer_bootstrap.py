"""A headless Slicer for pytest, built on the PyPI package ``slicer-core``.

``slicer-core`` gives a real MRML scene, nodes, storage, module logics and ``slicer.util``;
this file adds what the Slicer application normally provides and stubs only what needs a GUI:

* ``slicer.mrmlScene`` with a ``vtkSlicerApplicationLogic`` and the module logics (Colors,
  Volumes, Transforms, Segmentations, SubjectHierarchy, Markups), reachable as
  ``slicer.modules.<name>.logic()``;
* ``slicer.app`` with ``coreIOManager()`` (so ``slicer.util.loadVolume``/``saveNode`` run
  unchanged), ``processEvents``, ``exit(status)`` (raises ``SystemExit``), ``testingEnabled``;
* ``slicer.ScriptedLoadableModule``, ``slicer.i18n``, a small ``slicer.parameterNodeWrapper``
  (parameters and node references stored in the scripted module node, as in Slicer);
* inert ``qt`` and ``ctk`` modules so that Widget classes import.

Call :func:`bootstrap` once (idempotent); it returns the ``slicer`` module. Between tests call
``slicer.mrmlScene.Clear(0)``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import types
import typing
import unittest
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent.parent / "SlicerLabelReg"


# ------------------------------------------------------------------ inert Qt
class _Inert:
    """Accepts any attribute access, call, connection or assignment and does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert()

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __or__(self, other):
        return self


def _inert_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def __getattr__(attr):  # `import torch` probes modules for dunder/private names: refuse those
        if attr.startswith("_"):
            raise AttributeError(attr)
        return _Inert

    module.__getattr__ = __getattr__
    return module


# ------------------------------------------------------- application pieces
class _CommandOptions:
    runPythonAndExit = False


class _IOManager:
    """The part of qSlicerCoreIOManager that slicer.util uses, over the real storage logics."""

    def __init__(self, slicer):
        self._slicer = slicer

    @staticmethod
    def fileType(filename) -> str:
        name = str(filename).lower()
        if name.endswith((".seg.nrrd", ".seg.nii.gz")):
            return "SegmentationFile"
        if name.endswith((".h5", ".tfm", ".mat", ".txt")):
            return "TransformFile"
        return "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None) -> bool:
        slicer = self._slicer
        path = str(properties["fileName"])
        name = properties.get("name") or Path(path).name.split(".")[0]
        node = None
        if fileType in ("VolumeFile", "LabelMapVolumeFile"):
            labelmap = bool(properties.get("labelmap")) or fileType == "LabelMapVolumeFile"
            node = slicer.modules.volumes.logic().AddArchetypeVolume(path, name, 1 if labelmap else 0)
        elif fileType == "SegmentationFile":
            node = slicer.modules.segmentations.logic().LoadSegmentationFromFile(path, False, name)
        elif fileType == "TransformFile":
            node = slicer.modules.transforms.logic().AddTransform(path, slicer.mrmlScene)
        if node is None:
            if userMessages is not None:
                userMessages.AddMessage(
                    slicer.vtkCommand.ErrorEvent if hasattr(slicer, "vtkCommand") else 0,
                    f"cannot read {path} as {fileType}",
                )
            return False
        if hasattr(node, "CreateDefaultDisplayNodes"):
            node.CreateDefaultDisplayNodes()
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True

    @staticmethod
    def fileWriterFileType(node) -> str:
        return "NodeFile"

    def saveNodes(self, fileType, properties, userMessages=None) -> bool:
        node = self._slicer.mrmlScene.GetNodeByID(properties["nodeID"])
        if node is None or not node.AddDefaultStorageNode():
            return False
        storage = node.GetStorageNode()
        storage.SetFileName(str(properties["fileName"]))
        return bool(storage.WriteData(node))


class _App:
    """The part of qSlicerApplication that modules and slicer.util use headlessly."""

    applicationName = "Slicer"
    majorVersion, minorVersion = 5, 13

    def __init__(self, slicer, app_logic):
        self._io = _IOManager(slicer)
        self._options = _CommandOptions()
        self._app_logic = app_logic
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-headless-")
        self.testing = True

    def coreIOManager(self):
        return self._io

    def ioManager(self):
        return self._io

    def applicationLogic(self):
        return self._app_logic

    def commandOptions(self):
        return self._options

    def testingEnabled(self) -> bool:
        return self.testing

    def processEvents(self, *args):
        pass

    def setOverrideCursor(self, *args):
        pass

    def restoreOverrideCursor(self):
        pass

    def moduleManager(self):
        return _Inert()

    def exit(self, status=0):
        raise SystemExit(status)


# ------------------------------------------------- ScriptedLoadableModule
def _scripted_loadable_module(slicer) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent if parent is not None else types.SimpleNamespace()
            self.moduleName = self.__class__.__name__
            self.parent.title = self.moduleName

        def resourcePath(self, filename):
            return os.path.join(os.path.dirname(sys.modules[self.__module__].__file__), "Resources", filename)

        def runTest(self, msec=100, **kwargs):
            testCase = getattr(sys.modules[self.__module__], self.moduleName + "Test")()
            testCase.messageDelay = msec
            testCase.runTest(**kwargs)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent
            self.moduleName = self.__class__.__name__[: -len("Widget")]
            self.developerMode = False

        def resourcePath(self, filename):
            return os.path.join(os.path.dirname(sys.modules[self.__module__].__file__), "Resources", filename)

        def setup(self):
            self.layout = _Inert()

        def cleanup(self):
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            name = self.__class__.__name__
            self.moduleName = name.removesuffix("Logic")
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
                node.SetModuleName(self.moduleName)
                node = slicer.mrmlScene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        messageDelay = 0

        def delayDisplay(self, message, msec=None):
            logging.getLogger(self.__class__.__module__).info(message)

    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    module.__all__ = [c for c in dir(module) if c.startswith("ScriptedLoadable")]
    return module


# ---------------------------------------------------- parameterNodeWrapper
def _parameter_node_wrapper(slicer) -> types.ModuleType:
    """Enough of slicer.parameterNodeWrapper for modules: typed properties stored in the node
    (plain values as parameters, MRML nodes as references); connectGui is a no-op."""
    module = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = list(choices)

    def _base(annotation):
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        if typing.get_origin(annotation) is typing.Union:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if all(isinstance(a, type) and a.__name__.startswith("vtkMRML") for a in args):
                return slicer.vtkMRMLNode
            annotation = args[0]
        return annotation

    def _property(name, kind, default):
        if isinstance(kind, type) and kind.__name__.startswith("vtkMRML"):
            return property(
                lambda self: self.parameterNode.GetNodeReference(name),
                lambda self, node: self.parameterNode.SetNodeReferenceID(name, node.GetID() if node else None),
            )

        def get(self):
            text = self.parameterNode.GetParameter(name)
            if text == "":
                return default
            if kind is bool:
                return text == "True"
            return kind(text)

        return property(get, lambda self, value: self.parameterNode.SetParameter(name, str(value)))

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        defaults = {}
        for name, annotation in hints.items():
            kind = _base(annotation)
            default = cls.__dict__.get(
                name, None if not isinstance(kind, type) or kind.__name__.startswith("vtk") else kind()
            )
            defaults[name] = default
            setattr(cls, name, _property(name, kind, default))

        def __init__(self, parameterNode):
            self.parameterNode = parameterNode
            for key, value in defaults.items():
                if value is not None and not parameterNode.GetParameter(key):
                    parameterNode.SetParameter(key, str(value))

        cls.__init__ = __init__
        cls.connectGui = lambda self, gui: object()
        cls.disconnectGui = lambda self, tag: None
        cls.StartModify = lambda self: self.parameterNode.StartModify()
        cls.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
        return cls

    module.Choice = Choice
    module.parameterNodeWrapper = parameterNodeWrapper
    return module


# ----------------------------------------------------------------- bootstrap
def bootstrap():
    """Set up the headless application once and return the ``slicer`` module."""
    import slicer

    if getattr(slicer, "_headless_bootstrap", False):
        return slicer
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, _inert_module(name))
    import vtk

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {}

    def add_logic(key, name, logic):
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[key] = logic
        return logic

    # vtkMRMLColorLogic adds the default color nodes without looking for Slicer's color files
    colors = add_logic("colors", "Colors", slicer.vtkMRMLColorLogic())
    app_logic.SetColorLogic(colors)
    add_logic("volumes", "Volumes", slicer.vtkSlicerVolumesLogic())
    add_logic("transforms", "Transforms", slicer.vtkSlicerTransformLogic())
    add_logic("segmentations", "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
    add_logic("subjecthierarchy", "SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
    add_logic("markups", "Markups", slicer.vtkSlicerMarkupsLogic())

    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        **{key: types.SimpleNamespace(logic=(lambda logic=logic: logic), name=key) for key, logic in logics.items()}
    )
    slicer.app = _App(slicer, app_logic)
    slicer.vtkCommand = vtk.vtkCommand

    slicer.ScriptedLoadableModule = _scripted_loadable_module(slicer)
    slicer.parameterNodeWrapper = _parameter_node_wrapper(slicer)
    slicer.i18n = types.ModuleType("slicer.i18n")
    slicer.i18n.tr = lambda text: text
    slicer.i18n.translate = lambda context, text: text
    for name in ("ScriptedLoadableModule", "parameterNodeWrapper", "i18n"):
        sys.modules[f"slicer.{name}"] = getattr(slicer, name)

    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    slicer._headless_bootstrap = True
    return slicer

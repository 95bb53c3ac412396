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
* ``qt`` and ``ctk`` modules that are inert except for stand-ins of the widgets LabelReg's .ui
  uses (signals emitted on value changes as in Qt, ``blockSignals``), ``QTimer`` driven by
  ``slicer.app.processEvents()`` (see :func:`runEventLoop`) and ``QFile``/``QUiLoader``, so that
  ``slicer.util.loadUI`` builds the widget tree of a real .ui file (its connections included);
* a ``connectGui`` that does what Slicer's parameterNodeWrapper does: it writes every bound
  widget from the parameter node (which emits the widgets' signals), writes the parameter when a
  widget changes, rewrites the widgets on every parameter node modification, and refuses
  a widget/type pair Slicer has no connector for (e.g. a ctkSliderWidget for an unbounded float).

Call :func:`bootstrap` once (idempotent); it returns the ``slicer`` module. Between tests call
``slicer.mrmlScene.Clear(0)``.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import os
import sys
import tempfile
import time
import types
import typing
import unittest
import weakref
import xml.etree.ElementTree as ET
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


# ------------------------------------------------------- Qt stand-ins
def _accepted_arguments(slot) -> int | None:
    """How many positional arguments a slot takes (None: any number)."""
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


class Signal:
    """A Qt signal of one object: slots run synchronously, not while the sender blocks signals;
    as PythonQt does, a slot that takes fewer arguments than the signal gets the first ones."""

    def __init__(self, sender=None):
        self._sender, self._slots = sender, []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        self._slots = [s for s in self._slots if slot is not None and s != slot]

    def emit(self, *args):
        if self._sender is not None and self._sender.signalsBlocked():
            return
        for slot in list(self._slots):
            count = _accepted_arguments(slot)
            slot(*(args if count is None else args[:count]))


def _qt_property(attribute, *signals, convert=lambda widget, value: value):
    """A widget property that emits ``signals`` (name, argument function) when its value changes."""

    def get(self):
        return getattr(self, "_" + attribute)

    def set(self, value):
        value = convert(self, value)
        if value == getattr(self, "_" + attribute):
            return
        setattr(self, "_" + attribute, value)
        for name, argument in signals:
            getattr(self, name).emit(argument(value))

    return builtins.property(get, set)


class FakeWidget:
    """QWidget: a name, children, dynamic properties, ``connect("signal(args)", slot)``."""

    SIGNALS = ()

    def __init__(self, parent=None, name=""):
        self.name, self._children, self._properties, self._blocked = name, [], {}, False
        self.enabled, self.visible, self.toolTip = True, True, ""
        for signal in self.SIGNALS:
            setattr(self, signal, Signal(self))
        if parent is not None:
            parent._children.append(self)

    def children(self):
        return list(self._children)

    def findChildren(self, *args):
        found = []
        for child in self._children:
            found += [child] + child.findChildren()
        return found

    def setProperty(self, name, value):
        self._properties[name] = value

    def blockSignals(self, block):
        previous, self._blocked = self._blocked, bool(block)
        return previous

    def signalsBlocked(self):
        return self._blocked

    def isWidgetType(self):
        return True

    def className(self):
        return type(self).__name__.replace("Fake", "")

    def connect(self, signature, slot):
        getattr(self, signature.split("(")[0]).connect(slot)

    def property(self, name):  # last: the name shadows the builtin in the class body
        return self._properties.get(name)


class FakeLabel(FakeWidget):
    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self.text = ""


class FakeProgressBar(FakeWidget):
    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self.value = 0


class FakePushButton(FakeWidget):
    SIGNALS = ("clicked",)

    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self.text, self.checkable, self.checked = "", False, False

    def click(self):
        if self.enabled:
            self.clicked.emit(False)


class FakeCheckBox(FakeWidget):
    SIGNALS = ("toggled", "stateChanged", "clicked")
    checked = _qt_property("checked", ("toggled", bool), ("stateChanged", lambda v: 2 if v else 0),
                           convert=lambda w, v: bool(v))

    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self._checked, self.text = False, ""

    def setChecked(self, value):
        self.checked = value

    def isChecked(self):
        return self.checked

    def click(self):
        """A user's click: toggles the box (toggled, stateChanged), then clicked."""
        if self.enabled:
            self.checked = not self.checked
            self.clicked.emit(self.checked)


class FakeComboBox(FakeWidget):
    SIGNALS = ("currentIndexChanged",)
    currentIndex = _qt_property("currentIndex", ("currentIndexChanged", int))

    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self._currentIndex, self.items = -1, []

    def addItem(self, text):
        self.items.append(str(text))
        self.currentIndex = max(self.currentIndex, 0)

    def clear(self):
        self.items = []
        self.currentIndex = -1

    @builtins.property
    def currentText(self):
        return self.items[self.currentIndex] if 0 <= self.currentIndex < len(self.items) else ""


class FakeSliderWidget(FakeWidget):
    """ctkSliderWidget: ``value`` kept within [minimum, maximum]; ``valueChanged(double)``."""

    SIGNALS = ("valueChanged",)
    value = _qt_property("value", ("valueChanged", float),
                         convert=lambda w, v: min(max(float(v), w.minimum), w.maximum))

    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self.minimum, self.maximum, self.singleStep, self.decimals, self._value = 0.0, 99.0, 1.0, 2, 0.0


class FakePathLineEdit(FakeWidget):
    SIGNALS = ("currentPathChanged",)
    currentPath = _qt_property("currentPath", ("currentPathChanged", str), convert=lambda w, v: str(v))

    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self._currentPath, self.nameFilters = "", []


class FakeNodeComboBox(FakeWidget):
    """qMRMLNodeComboBox: ``setCurrentNode``, ``currentNodeChanged(vtkMRMLNode*)``; with
    ``noneEnabled`` false it selects the first node of its types when it gets a scene."""

    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged")

    def __init__(self, parent=None, name=""):
        super().__init__(parent, name)
        self.nodeTypes, self.noneEnabled, self.addEnabled, self._node, self._scene = [], True, False, None, None

    def setMRMLScene(self, scene):
        self._scene = scene
        if not self.noneEnabled and self._node is None:
            for nodeType in self.nodeTypes:
                if scene.GetNumberOfNodesByClass(nodeType):
                    self.setCurrentNode(scene.GetNthNodeByClass(0, nodeType))
                    break

    def currentNode(self):
        if self._node is not None and self._scene is not None and self._scene.GetNodeByID(self._node.GetID()) is None:
            self._node = None  # removed from the scene
        return self._node

    def setCurrentNode(self, node):
        if node is self._node:
            return
        self._node = node
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")


class FakeMRMLWidget(FakeWidget):
    """qMRMLWidget: ``setMRMLScene`` emits ``mrmlSceneChanged`` (the .ui connects it to its selectors)."""

    SIGNALS = ("mrmlSceneChanged",)

    def setMRMLScene(self, scene):
        self.mrmlSceneChanged.emit(scene)


WIDGET_CLASSES = {
    "QWidget": FakeWidget, "QLabel": FakeLabel, "QProgressBar": FakeProgressBar, "QPushButton": FakePushButton,
    "QCheckBox": FakeCheckBox, "QComboBox": FakeComboBox, "ctkSliderWidget": FakeSliderWidget,
    "ctkPathLineEdit": FakePathLineEdit, "qMRMLNodeComboBox": FakeNodeComboBox, "qMRMLWidget": FakeMRMLWidget,
    "ctkCollapsibleButton": FakeWidget,
}


def _ui_value(element):
    """The value of a .ui <property> element."""
    value = element[0]
    if value.tag == "bool":
        return value.text == "true"
    if value.tag in ("double", "number"):
        return float(value.text)
    if value.tag == "stringlist":
        return [s.text for s in value.findall("string")]
    return value.text or ""


def build_ui(path) -> FakeWidget:
    """The widget tree of a Qt Designer file, with the stand-ins above (other classes: plain
    widgets), its properties, combo box items and signal/slot connections."""
    root = ET.parse(path).getroot()
    widgets = {}

    def build(element, parent):
        widget = WIDGET_CLASSES.get(element.get("class"), FakeWidget)(parent, element.get("name"))
        widgets[widget.name] = widget
        for prop in element.findall("property"):
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), _ui_value(prop))
            elif prop.get("name") in ("checked", "value", "minimum", "maximum", "singleStep", "text", "enabled",
                                      "toolTip", "nodeTypes", "noneEnabled", "addEnabled", "nameFilters"):
                setattr(widget, prop.get("name"), _ui_value(prop))
        for item in element.findall("item"):
            widget.addItem(_ui_value(item.find("property")))
        walk(element, widget)
        return widget

    def walk(element, parent):
        for child in element:
            if child.tag == "widget":
                build(child, parent)
            elif child.tag in ("layout", "item"):
                walk(child, parent)

    top = build(root.find("widget"), None)
    for connection in root.iter("connection"):
        sender, receiver = widgets[connection.find("sender").text], widgets[connection.find("receiver").text]
        signal = connection.find("signal").text.split("(")[0]
        getattr(sender, signal).connect(getattr(receiver, connection.find("slot").text.split("(")[0]))
    return top


class FakeFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.isfile(self.path)

    def open(self, mode):
        return True


class FakeUiLoader:
    def load(self, qfile):
        return build_ui(qfile.path)


class FakeTimer:
    """QTimer: fires ``timeout`` from ``slicer.app.processEvents()`` once its interval has passed."""

    active: typing.ClassVar[list] = []  # started timers, in start order

    def __init__(self, parent=None):
        self.timeout, self.interval, self.singleShot, self._due = Signal(), 0, False, None

    def start(self, msec=None):
        self.interval = self.interval if msec is None else msec
        self._due = time.perf_counter() + self.interval / 1000.0
        if self not in FakeTimer.active:
            FakeTimer.active.append(self)

    def stop(self):
        if self in FakeTimer.active:
            FakeTimer.active.remove(self)

    def isActive(self):
        return self in FakeTimer.active

    @staticmethod
    def fire_due():
        now = time.perf_counter()
        for timer in list(FakeTimer.active):
            if timer.isActive() and timer._due <= now:
                if timer.singleShot:
                    timer.stop()
                else:
                    timer._due = now + timer.interval / 1000.0
                timer.timeout.emit()


def runEventLoop(seconds: float, until=None) -> bool:
    """Process events (fire due timers) for up to ``seconds``, or until ``until()`` is true;
    returns whether ``until()`` became true (True when there is no ``until``)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        FakeTimer.fire_due()
        if until is not None and until():
            return True
        time.sleep(0.002)
    return until is None or bool(until())


def _qt_module():
    qt = _inert_module("qt")
    qt.QWidget, qt.QLabel, qt.QProgressBar, qt.QPushButton = FakeWidget, FakeLabel, FakeProgressBar, FakePushButton
    qt.QCheckBox, qt.QComboBox, qt.QTimer, qt.QFile, qt.QUiLoader = (FakeCheckBox, FakeComboBox, FakeTimer, FakeFile,
                                                                     FakeUiLoader)
    return qt


def _ctk_module():
    ctk = _inert_module("ctk")
    ctk.ctkSliderWidget, ctk.ctkPathLineEdit, ctk.ctkCollapsibleButton = FakeSliderWidget, FakePathLineEdit, FakeWidget
    return ctk


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
        self._connections = {}

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
        FakeTimer.fire_due()

    def setOverrideCursor(self, *args):
        pass

    def restoreOverrideCursor(self):
        pass

    def moduleManager(self):
        return _Inert()

    def connect(self, signal, slot):
        """Application signals (e.g. ``startupCompleted()``): recorded, fired by :meth:`emit`."""
        self._connections.setdefault(signal, []).append(slot)

    def emit(self, signal):
        for slot in self._connections.get(signal, []):
            slot()

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
_observed_nodes = []  # parameter nodes with connectGui observers (see connectGui)
class _Connector:
    """One widget bound to one parameter, as Slicer's GuiConnector subclasses do it."""

    def __init__(self, widget, read, write, signal):
        self.widget, self.read, self.write, self._signal, self._callback = widget, read, write, signal, None

    def onChanged(self, callback):
        if self._callback is not None:
            getattr(self.widget, self._signal).disconnect(self._callback)
        self._callback = callback
        if callback is not None:
            getattr(self.widget, self._signal).connect(callback)


def _parameter_node_wrapper(slicer) -> types.ModuleType:
    """slicer.parameterNodeWrapper for modules: typed properties stored in the node (plain values
    as parameters, MRML nodes as references), ``Choice``/``WithinRange`` checked on writes, and
    ``connectGui``/``disconnectGui`` that behave like Slicer's (Base/Python/slicer/
    parameterNodeWrapper/wrapper.py and guiConnectors.py):

    * the widgets are those with a ``SlicerParameterName`` property (children of a widget, or
      attributes of a ``childWidgetVariables`` object);
    * each is written from the node at once (no signal blocking: a changed value emits the
      widget's signals), then a change of the widget writes the parameter;
    * every ModifiedEvent of the node writes all connected widgets again;
    * a widget/type pair without a Slicer connector raises RuntimeError, e.g. a ctkSliderWidget
      bound to a float without ``WithinRange`` (or ``Minimum`` and ``Maximum``), or a QComboBox
      bound without ``Choice``; a combo box's items are replaced by the choices.
    """
    module = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = list(choices)

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    class Minimum:
        def __init__(self, minimum):
            self.minimum = minimum

    class Maximum:
        def __init__(self, maximum):
            self.maximum = maximum

    def _split(annotation):
        """(base type, annotations) of a hint; a union of MRML node classes gives vtkMRMLNode."""
        extras = []
        if typing.get_origin(annotation) is typing.Annotated:
            annotation, *extras = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Union:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if all(isinstance(a, type) and a.__name__.startswith("vtkMRML") for a in args):
                return slicer.vtkMRMLNode, extras
            annotation = args[0]
        return annotation, extras

    def _find(extras, kind):
        return next((e for e in extras if isinstance(e, kind)), None)

    def _check(name, value, extras):
        choice, within = _find(extras, Choice), _find(extras, WithinRange)
        if choice is not None and value not in choice.choices:
            raise ValueError(f"{name}: {value!r} is not one of {choice.choices}")
        if within is not None and not within.minimum <= value <= within.maximum:
            raise ValueError(f"{name}: {value!r} is not within [{within.minimum}, {within.maximum}]")

    def _is_node(kind):
        return isinstance(kind, type) and kind.__name__.startswith("vtkMRML")

    def _property(name, kind, extras, default):
        if _is_node(kind):
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

        def set(self, value):
            _check(name, value, extras)
            self.parameterNode.SetParameter(name, str(value))

        return property(get, set)

    def _connector(widget, name, kind, extras):
        within, low, high = _find(extras, WithinRange), _find(extras, Minimum), _find(extras, Maximum)
        if isinstance(widget, slicer.qMRMLNodeComboBox) and _is_node(kind):
            return _Connector(widget, widget.currentNode, widget.setCurrentNode, "currentNodeChanged")
        if type(widget).__name__ == "FakeCheckBox" and kind is bool:
            return _Connector(widget, lambda: widget.checked, lambda v: setattr(widget, "checked", v), "stateChanged")
        if type(widget).__name__ == "FakeSliderWidget" and kind is float:
            if within is None and (low is None or high is None):
                raise RuntimeError("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")
            widget.minimum = within.minimum if within else low.minimum
            widget.maximum = within.maximum if within else high.maximum
            return _Connector(widget, lambda: widget.value, lambda v: setattr(widget, "value", v), "valueChanged")
        if type(widget).__name__ == "FakeComboBox" and kind in (int, float, str, bool):
            choice = _find(extras, Choice)
            if choice is None:
                raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
            widget.clear()
            for item in choice.choices:
                widget.addItem(str(item))
            return _Connector(widget, lambda: choice.choices[widget.currentIndex],
                              lambda v: setattr(widget, "currentIndex", choice.choices.index(v)),
                              "currentIndexChanged")
        raise RuntimeError(f"Unable to create GUI connector from datatype '{kind}' to widget type '{type(widget)}' "
                           f"(parameter {name})")

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        kinds, defaults = {}, {}
        for name, annotation in hints.items():
            kind, extras = _split(annotation)
            default = cls.__dict__.get(name, None if not isinstance(kind, type) or _is_node(kind) else kind())
            kinds[name], defaults[name] = (kind, extras), default
            setattr(cls, name, _property(name, kind, extras, default))

        def __init__(self, parameterNode):
            self.parameterNode = parameterNode
            self._guis, self._updating, self._next_tag = {}, False, 0
            for key, value in defaults.items():
                if value is not None and not parameterNode.GetParameter(key):
                    parameterNode.SetParameter(key, str(value))

        def _update_gui(self):
            if self._updating:
                return
            self._updating = True
            try:
                with slicer.util.NodeModify(self):
                    for connectors in self._guis.values():
                        for name, connector in connectors.items():
                            connector.write(getattr(self, name))
            finally:
                self._updating = False

        def connectGui(self, gui):
            widgets = gui.findChildren() if hasattr(gui, "isWidgetType") else list(vars(gui).values())
            bound = {w.property("SlicerParameterName"): w for w in widgets
                     if hasattr(w, "property") and callable(w.property) and w.property("SlicerParameterName")}
            unknown = set(bound) - set(kinds)
            if unknown:
                raise ValueError(f"Cannot find a param with the given name: {sorted(unknown)}")
            connectors = {name: _connector(widget, name, *kinds[name]) for name, widget in bound.items()}
            tag, self._next_tag = self._next_tag, self._next_tag + 1
            self._guis[tag] = connectors
            for name, connector in connectors.items():
                connector.write(getattr(self, name))

                def changed(*args, name=name, connector=connector):
                    with slicer.util.NodeModify(self):
                        if not self._updating:
                            setattr(self, name, connector.read())

                connector.onChanged(changed)
            # As in Slicer the observer stays after disconnectGui (it then writes nothing). With
            # VTK 9.6's Python wrapping, Python's garbage collector may free an observer that is
            # part of a node -> observer -> ... -> node cycle while the node lives on in the scene;
            # VTK then calls freed memory. Keeping the node's Python object referenced prevents it.
            wrapper = weakref.ref(self)

            def on_modified(caller, event):
                if wrapper() is not None:
                    _update_gui(wrapper())

            self.parameterNode.AddObserver(vtk_modified_event(), on_modified)
            _observed_nodes.append(self.parameterNode)
            return tag

        def disconnectGui(self, tag):
            for connector in self._guis.pop(tag, {}).values():
                connector.onChanged(None)

        cls.__init__ = __init__
        cls.connectGui = connectGui
        cls.disconnectGui = disconnectGui
        cls.StartModify = lambda self: self.parameterNode.StartModify()
        cls.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
        return cls

    def vtk_modified_event():
        import vtk

        return vtk.vtkCommand.ModifiedEvent

    module.Choice, module.WithinRange, module.Minimum, module.Maximum = Choice, WithinRange, Minimum, Maximum
    module.parameterNodeWrapper = parameterNodeWrapper
    return module


# ----------------------------------------------------------------- bootstrap
def bootstrap():
    """Set up the headless application once and return the ``slicer`` module."""
    import slicer

    if getattr(slicer, "_headless_bootstrap", False):
        return slicer
    sys.modules.setdefault("qt", _qt_module())
    sys.modules.setdefault("ctk", _ctk_module())
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
    slicer.qMRMLNodeComboBox, slicer.qMRMLWidget = FakeNodeComboBox, FakeMRMLWidget

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

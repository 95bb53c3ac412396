"""LabelReg: register a prostate MR (moving) to a 3D TRUS (fixed) volume with a label-driven
neural network (Hu et al. 2018), in one click or live while the TRUS streams in.

Layers: ``labelreg`` (pure library, no Slicer), ``LabelRegLib`` (Slicer adapters: nodes, the
registration worker process and its job runner, dependencies, sample data) and this file
(Module, parameter node, Widget, Logic, Test).
"""
from __future__ import annotations

import logging
import os
import time
import unittest
from typing import Annotated, Callable, Union

import qt
import slicer
import vtk
from labelreg.choices import DEVICES, USER_MODES
from LabelRegLib import dependencies, process, sampledata
from LabelRegLib.inference import LabelRegOutputs
from LabelRegLib.worker import LatestJobRunner
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)
#: Logic objects in live mode. Their TRUS observer and the Logic form a cycle through the node's
#: Python object; were the Logic otherwise unreferenced (a script's ``LabelRegLogic().startAutoUpdate``),
#: Python's garbage collector could free the observer while VTK still calls it (a crash).
_liveLogics = set()

#: the results line's colour per verdict of labelreg.confidence
VERDICT_COLORS = {"good": "#1a7f37", "check": "#b35900", "doubtful": "#c62828"}


class LabelReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LabelReg MR-TRUS")
        self.parent.categories = [_("Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerLabelReg developers (SlicerLabelReg)"]
        self.parent.helpText = _(
            "Registers a prostate MR volume (and its gland/landmark segmentation) to a 3D transrectal "
            "ultrasound volume with weakly-supervised registration networks: the bundled model first "
            "aligns the gland it finds in both images, then deforms the MR. Outputs: an affine and a "
            "deformable transform, the MR segmentation shown on the TRUS, the resampled MR. "
            "'Live TRUS' re-registers whenever the TRUS image changes (e.g. an OpenIGTLink stream). "
            "Sample data: 'LabelRegProstateMRTRUS' in the Sample Data module.")
        self.parent.acknowledgementText = _(
            "Method: Y. Hu et al., Weakly-supervised convolutional neural networks for multimodal image "
            "registration, Medical Image Analysis 49 (2018). Example data: YipengHu/example-data (mrus).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the bundled MR-TRUS pair to the Sample Data module (where there is one)."""
    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "LabelReg.png")
    sampledata.register(icon, customDownloader=loadSampleDataIntoModule)


def loadSampleDataIntoModule(source=None):
    """Sample Data button: load the pair and select it in the LabelReg module."""
    return LabelRegLogic().loadSampleData(selectInModule=True)


def workerProcess() -> process.WorkerProcess:
    """The registration worker process shared by the module's Logic objects (PythonSlicer)."""
    return process.sharedWorker(lambda: process.slicerPython(slicer))


@parameterNodeWrapper
class LabelRegParameterNode:
    """Module settings, saved with the scene. Empty ``modelPath`` means the bundled model. Live
    TRUS is deliberately not a parameter: loading a scene never starts registrations."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    # typing.Union: get_type_hints evaluates these, and Slicer's Python may be 3.9
    movingSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]  # noqa: UP007
    fixedSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]  # noqa: UP007
    mode: Annotated[str, Choice(list(USER_MODES))] = "deformable"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    modelPath: str = ""
    outputTransform: vtkMRMLTransformNode
    outputAffineTransform: vtkMRMLTransformNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputVolume: vtkMRMLScalarVolumeNode
    createResampledVolume: bool = True
    hardenSegmentation: bool = False
    volumeOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


class LabelRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the parameter node and calls the Logic; no processing here.

    Results keep arriving when the user has left the module (live TRUS goes on); nothing here
    then reads the parameter node. One-shot errors open a dialog; live errors go to the status
    line, counted.
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiTag = None
        self._connectingGui = False
        self._liveErrors = 0
        self._liveShown = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LabelReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LabelRegLogic()
        self.logic.worker.onProgress, self.logic.worker.onIdle = self.onProgress, self.updateButtons
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.autoUpdateCheckBox.connect("toggled(bool)", self.onAutoUpdateToggled)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.volumeOpacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.initializeParameterNode()

    def cleanup(self):
        """Application exit or module reload: unbind the widgets, stop live mode, any registration
        and the worker process."""
        self.setParameterNode(None)
        self.removeObservers()
        self.logic.shutdown()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.logic.stopAutoUpdate()
        self.logic.worker.cancel()  # its inputs are about to disappear
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event):
        """A loaded scene's node references resolve after its parameter node was read (no
        ModifiedEvent follows): write the widgets again."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if parameterNode:
            self._connectingGui = True  # connectGui writes every widget and emits its signals
            try:
                self._guiTag = parameterNode.connectGui(self.ui)
            finally:
                self._connectingGui = False
            self.ui.modelPathLineEdit.currentPath = parameterNode.modelPath
            self.addObserver(parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    def updateButtons(self, caller=None, event=None):
        pn = self._parameterNode
        ready = bool(pn and pn.fixedVolume and pn.movingVolume and pn.fixedVolume != pn.movingVolume)
        live = self.logic.liveActive
        running = self.logic.worker.busy and not live
        self.ui.registerButton.enabled = (ready or running) and not live
        self.ui.registerButton.text = _("Cancel") if running else _("Register")
        self.ui.registerButton.toolTip = (_("Live TRUS registers every new frame") if live
                                          else _("Register the MR to the TRUS") if ready
                                          else _("Select a TRUS and an MR volume"))
        if self.ui.autoUpdateCheckBox.checked != self.logic.liveActive:  # e.g. stopped by a scene close
            self._setLiveCheckBox(self.logic.liveActive)

    def _setLiveCheckBox(self, checked):
        wasBlocked = self.ui.autoUpdateCheckBox.blockSignals(True)
        self.ui.autoUpdateCheckBox.checked = checked
        self.ui.autoUpdateCheckBox.blockSignals(wasBlocked)

    def onModelPathChanged(self, path):
        if self._parameterNode:
            self._parameterNode.modelPath = path

    # ---------------------------------------------------------- one-shot
    def onRegisterButton(self):
        if self.logic.worker.busy and not self.logic.liveActive:
            self.logic.worker.cancel()
            self.ui.statusLabel.text = _("Cancelled: the scene was not changed.")
            self.updateButtons()
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed.")):
                dependencies.ensureTorch(askConfirmation=True, testing=slicer.app.testingEnabled())
                self.ui.resultsLabel.text = ""
                self.logic.registerUsingParameterNode(self._parameterNode, waitForCompletion=False,
                                                      onFinished=self.onFinished, onError=self.onError)
        except Exception as exc:  # noqa: BLE001 - shown by tryWithErrorDisplay; keep it on the status line
            self.ui.statusLabel.text = _("Failed: ") + _firstLine(exc)
        self.updateButtons()

    def onProgress(self, fraction, message, elapsed):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = f"{message} ({elapsed:.1f} s)"

    def onFinished(self, outputs):
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = _("Done.")
        self._showSummary(outputs)
        self._showOutputs(outputs)
        self.updateButtons()

    def _showSummary(self, outputs):
        """The results line, coloured by the registration's verdict (good, check, doubtful)."""
        self.ui.resultsLabel.text = outputs.summary
        verdict = getattr(outputs.outcome.result, "verdict", None)
        self.ui.resultsLabel.styleSheet = f"color: {VERDICT_COLORS[verdict]}" if verdict in VERDICT_COLORS else ""

    def onError(self, error):
        self.ui.statusLabel.text = _("Failed: ") + _firstLine(error)
        self.updateButtons()
        slicer.util.errorDisplay(_("Registration failed.") + f"\n\n{error}")

    def _showOutputs(self, outputs):
        """The TRUS as background, the resampled MR as foreground (the outputs know their TRUS:
        this works after the user has left the module)."""
        if outputs.volumeNode is not None:
            slicer.util.setSliceViewerLayers(background=outputs.fixedVolumeNode, foreground=outputs.volumeNode,
                                             foregroundOpacity=self.ui.volumeOpacitySlider.value)

    def onOpacityChanged(self, value):
        """The slider sets the opacity of the views that show the resampled MR, and only when the
        user moves it (connectGui also writes it when a scene or parameter node is loaded)."""
        pn = self._parameterNode
        if self._connectingGui or pn is None or pn.outputVolume is None:
            return
        outputID = pn.outputVolume.GetID()
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            if composite.GetForegroundVolumeID() == outputID:
                composite.SetForegroundOpacity(value)

    # --------------------------------------------------------------- live
    def onAutoUpdateToggled(self, checked):
        """The user switched live TRUS on or off (the check box is not saved with the scene)."""
        if not checked:
            self.logic.stopAutoUpdate()
            self.ui.statusLabel.text = _("Live TRUS stopped.")
            self.updateButtons()
            return
        self._liveErrors, self._liveShown = 0, False
        try:
            dependencies.ensureTorch(askConfirmation=True, testing=slicer.app.testingEnabled())
            self.logic.startAutoUpdateUsingParameterNode(self._parameterNode, onFinished=self.onLiveFinished,
                                                         onError=self.onLiveError)
            self.ui.statusLabel.text = _("Live TRUS: waiting for the first registration.")
        except Exception as exc:  # noqa: BLE001 - a live-mode problem goes to the status line
            self.ui.statusLabel.text = _("Live TRUS not started: ") + _firstLine(exc)
            self._setLiveCheckBox(False)
        self.updateButtons()

    def onLiveFinished(self, outputs):
        self.ui.progressBar.value = 100
        self._showSummary(outputs)
        failed = _(" ({count} frames failed)").format(count=self._liveErrors) if self._liveErrors else ""
        self.ui.statusLabel.text = _("Live TRUS: updated") + failed + "."
        if not self._liveShown:  # the layers once; afterwards the user's view settings are kept
            self._showOutputs(outputs)
            self._liveShown = True

    def onLiveError(self, error):
        self._liveErrors += 1
        self.ui.statusLabel.text = _("Live TRUS: {count} frames failed; last: {error}").format(
            count=self._liveErrors, error=_firstLine(error))


def _firstLine(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class LabelRegLogic(ScriptedLoadableModuleLogic, VTKObservationMixin):
    """All processing; usable without the GUI::

        outputs = LabelRegLogic().register(trusNode, mrNode, mrSegmentationNode)
        print(outputs.summary)

    The network runs in the registration worker process (``LabelRegLib/process.py``), started on
    the first registration with Slicer's Python, the model kept loaded between registrations.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        VTKObservationMixin.__init__(self)
        self.worker = LatestJobRunner(workerProcess, timerFactory=qt.QTimer)
        self._live = None  # (fixed node, observer callback) while live updates are on
        self.lastOutputs = None

    def getParameterNode(self):
        return LabelRegParameterNode(super().getParameterNode())

    @property
    def liveActive(self) -> bool:
        return self._live is not None

    def shutdown(self) -> None:
        """Stop live updates and any registration, and end the worker process (module cleanup)."""
        self.stopAutoUpdate()
        self.worker.cancel()
        self.worker.process.close()

    def register(self, fixedVolumeNode, movingVolumeNode, movingSegmentationNode=None, mode: str = "deformable",
                 device: str = "auto", modelPath: str = "", fixedSegmentationNode=None, outputTransformNode=None,
                 outputAffineTransformNode=None, outputSegmentationNode=None, outputVolumeNode=None,
                 createResampledVolume: bool = True, hardenSegmentation: bool = False,
                 progress: Callable | None = None, cancel: Callable | None = None,
                 waitForCompletion: bool = True, onFinished: Callable | None = None,
                 onError: Callable | None = None) -> LabelRegOutputs | None:
        """Register the MR (moving) to the TRUS (fixed) and return the output nodes.

        ``mode``: "deformable" (global + local network) or "affine"; ``device``: "auto", "cpu" or
        "cuda"; ``modelPath``: a .pt model file, empty for the bundled model. A segmentation (or
        labelmap) of the TRUS enables Dice and landmark distances. Output nodes are created, or
        the given ones updated; inputs are never modified and their parent transforms are
        respected. ``hardenSegmentation`` puts the segmentation on the TRUS grid instead of under
        the transform. ``waitForCompletion=False`` returns at once and calls
        ``onFinished(outputs)`` / ``onError(exception)`` on the main thread later.
        ``cancel()`` returning True (or ``self.worker.cancel()``) stops the run at once and
        leaves the scene unchanged.

        Raises:
            LabelRegError: missing torch (with installation advice), bad inputs, or a missing or
                tampered model file. RegistrationCancelled: ``cancel()`` returned True.
                LabelRegLib.process.WorkerStopped: the worker process crashed or was killed.
        """
        settings = dict(locals())  # the registration settings: every argument but the run control
        for key in ("self", "progress", "cancel", "waitForCompletion", "onFinished", "onError"):
            settings.pop(key)
        if waitForCompletion:
            request = self._prepare(**settings)
            return self._apply(request, self.worker.run(request, progress, cancel))

        def deliver(request, outcome):
            outputs = self._apply(request, outcome)
            if onFinished:
                onFinished(outputs)

        self.worker.submit(lambda: self._prepare(**settings), deliver, onError)
        return None

    def registerUsingParameterNode(self, parameterNode, **kwargs) -> LabelRegOutputs | None:
        """:meth:`register` with the settings of a :class:`LabelRegParameterNode`; stores the outputs in it."""
        if parameterNode is None:
            raise ValueError("LabelReg: no parameter node")
        store = self._storer(parameterNode, kwargs.pop("onFinished", None))
        outputs = self.register(**self._settings(parameterNode), onFinished=store, **kwargs)
        return store(outputs) if outputs is not None else None

    def loadSampleData(self, selectInModule: bool = False) -> dict:
        """Load the bundled MR-TRUS pair (LabelRegLib.sampledata.loadPair) and, with
        ``selectInModule``, select it as the module's inputs."""
        loaded = sampledata.loadPair()
        if selectInModule:
            pn = self.getParameterNode()
            for key, node in loaded.items():
                setattr(pn, key, node)
        return loaded

    # ------------------------------------------------------------- live TRUS
    def startAutoUpdate(self, fixedVolumeNode, movingVolumeNode, onFinished=None, onError=None, **settings):
        """Re-register whenever the fixed volume's image data changes (e.g. an OpenIGTLink stream),
        with the :meth:`register` settings given as keywords.

        At most one registration runs at a time and the newest frame wins; output nodes are
        created by the first update and reused afterwards. ``outputs.latency`` is the time from
        the image change to the updated outputs. Raises LabelRegError (nothing started) when a
        volume is missing or torch is unusable.
        """
        from labelreg.errors import LabelRegError

        self.stopAutoUpdate()
        if fixedVolumeNode is None or movingVolumeNode is None:
            raise LabelRegError("Select the TRUS (fixed) and MR (moving) volumes first.")
        if fixedVolumeNode is movingVolumeNode:
            raise LabelRegError("The TRUS (fixed) and MR (moving) volumes must be different nodes.")
        dependencies.requireTorch()
        state = {"eventTime": time.perf_counter(), "outputs": {}}

        def prepare():
            state["requestedAt"] = state["eventTime"]
            return self._prepare(fixedVolumeNode, movingVolumeNode, **dict(settings, **state["outputs"]))

        def deliver(request, outcome):
            outputs = self._apply(request, outcome)
            outputs.latency = time.perf_counter() - state["requestedAt"]
            state["outputs"] = {key: node for key, node in (
                ("outputTransformNode", outputs.transformNode),
                ("outputAffineTransformNode", outputs.affineTransformNode),
                ("outputSegmentationNode", outputs.segmentationNode),
                ("outputVolumeNode", outputs.volumeNode)) if node}
            if onFinished:
                onFinished(outputs)

        def onImageModified(caller, event):
            state["eventTime"] = time.perf_counter()
            self.worker.submit(prepare, deliver, onError)

        self.addObserver(fixedVolumeNode, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, onImageModified)
        self._live = (fixedVolumeNode, onImageModified)
        _liveLogics.add(self)
        onImageModified(fixedVolumeNode, None)  # register the current frame now

    def startAutoUpdateUsingParameterNode(self, parameterNode, onFinished=None, onError=None):
        if parameterNode is None:
            raise ValueError("LabelReg: no parameter node")
        self.startAutoUpdate(onFinished=self._storer(parameterNode, onFinished), onError=onError,
                             **self._settings(parameterNode))

    def stopAutoUpdate(self):
        """Stop reacting to TRUS changes (a registration already running still delivers)."""
        if self._live is not None:
            self.removeObserver(self._live[0], slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._live[1])
            self._live = None
        _liveLogics.discard(self)

    # -------------------------------------------------------------- the steps
    @staticmethod
    def _settings(pn) -> dict:
        return {
            "fixedVolumeNode": pn.fixedVolume, "movingVolumeNode": pn.movingVolume,
            "movingSegmentationNode": pn.movingSegmentation, "fixedSegmentationNode": pn.fixedSegmentation,
            "mode": pn.mode, "device": pn.device, "modelPath": pn.modelPath,
            "outputTransformNode": pn.outputTransform, "outputAffineTransformNode": pn.outputAffineTransform,
            "outputSegmentationNode": pn.outputSegmentation, "outputVolumeNode": pn.outputVolume,
            "createResampledVolume": pn.createResampledVolume, "hardenSegmentation": pn.hardenSegmentation,
        }

    @staticmethod
    def _storer(pn, onFinished=None):
        def store(outputs):
            pn.outputTransform, pn.outputAffineTransform = outputs.transformNode, outputs.affineTransformNode
            pn.outputSegmentation, pn.outputVolume = outputs.segmentationNode, outputs.volumeNode
            if onFinished:
                onFinished(outputs)
            return outputs

        return store

    def _prepare(self, fixedVolumeNode, movingVolumeNode, movingSegmentationNode=None, fixedSegmentationNode=None,
                 mode="deformable", device="auto", modelPath="", createResampledVolume=True,
                 hardenSegmentation=False, **outputNodes):
        """Main thread: validate the inputs and copy them out of the scene (world coordinates)."""
        from labelreg.errors import LabelRegError

        if mode not in USER_MODES or device not in DEVICES:
            raise LabelRegError(f"mode must be one of {USER_MODES} and device one of {DEVICES}")
        if fixedVolumeNode is not None and fixedVolumeNode is movingVolumeNode:
            raise LabelRegError("The TRUS (fixed) and MR (moving) volumes must be different nodes.")
        dependencies.requireTorch()
        from LabelRegLib import nodes
        from LabelRegLib.inference import RegistrationRequest

        fixed = nodes.volumeFromNode(fixedVolumeNode, "TRUS (fixed)")
        moving = nodes.volumeFromNode(movingVolumeNode, "MR (moving)")
        context = dict(outputNodes, fixedVolumeNode=fixedVolumeNode, movingVolumeNode=movingVolumeNode,
                       movingSegmentationNode=movingSegmentationNode, createResampledVolume=createResampledVolume,
                       hardenSegmentation=hardenSegmentation)
        request = RegistrationRequest(fixed, moving, mode=mode, device=device, modelPath=str(modelPath or ""),
                                      context=context)
        if movingSegmentationNode is not None:
            request.movingLabels, request.segmentNames, request.segmentColors = nodes.labelsFromNode(
                movingSegmentationNode, moving.grid, "MR segmentation")
        if fixedSegmentationNode is not None:
            request.fixedLabels = nodes.labelsFromNode(fixedSegmentationNode, fixed.grid, "TRUS segmentation")[0]
        return request

    def _apply(self, request, outcome) -> LabelRegOutputs:
        """Main thread: create or update the output nodes."""
        from LabelRegLib import nodes

        self.lastOutputs = nodes.writeOutputs(request, outcome)
        logger.info(self.lastOutputs.summary)
        return self.lastOutputs


class LabelRegTest(ScriptedLoadableModuleTest):
    """The module without PyTorch (always), then, where PyTorch is usable, a registration of a
    small synthetic pair with the bundled model (or an untrained one): its outputs, Slicer's own
    application of the exported transform, and live updates. Without PyTorch (the Extensions
    Index factory) the registration part is skipped with a message: ``skipTest`` under Slicer's
    ctest runner (unittest), a message in ``runTest`` (Reload and Test)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_WithoutTorch()
        self.setUp()
        try:
            self.test_RegisterPhantom()
        except unittest.SkipTest as skipped:
            self.delayDisplay(str(skipped))

    def test_WithoutTorch(self):
        """What needs no PyTorch: the parameter node, input checks, the install advice."""
        from labelreg.errors import LabelRegError

        logic = LabelRegLogic()
        pn = logic.getParameterNode()
        self.assertEqual((pn.mode, pn.device, pn.volumeOpacity), ("deformable", "auto", 0.5))
        with self.assertRaisesRegex(LabelRegError, "Select the TRUS"):
            logic.startAutoUpdate(None, None)
        self.assertFalse(logic.liveActive)
        if dependencies.torchProblem():
            with self.assertRaisesRegex(dependencies.MissingDependencyError, "PyTorch"):
                logic.register(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"),
                               slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
        self.delayDisplay("LabelReg test without PyTorch passed")

    def test_RegisterPhantom(self):
        problem = dependencies.torchProblem()
        if problem:
            self.skipTest("LabelReg test: the registration part is skipped because PyTorch is not usable "
                          f"here ({problem})")
        import tempfile
        from pathlib import Path

        from labelreg import resources
        from labelreg.metrics import dice
        from labelreg.model import RegistrationModel
        from labelreg.model_io import save_model
        from labelreg.phantom import make_pair
        from labelreg.volume import Volume
        from LabelRegLib import nodes

        pair = make_pair(1, fixed_size=(24, 28, 22), moving_size=(28, 28, 26), spacing=(2.5, 2.5, 2.5))
        trained = resources.BUNDLED_MODEL_FILE.exists()
        modelPath = "" if trained else str(save_model(Path(tempfile.mkdtemp()) / "m.pt", RegistrationModel()))
        fixed, moving = nodes.addVolume("TRUS", pair.fixed), nodes.addVolume("MR", pair.moving)
        movingSeg = nodes.addLabelSegmentation("MR seg", pair.moving_labels)
        fixedSeg = nodes.addLabelSegmentation("TRUS seg", pair.fixed_labels)
        logic = LabelRegLogic()
        outputs = logic.register(fixed, moving, movingSeg, fixedSegmentationNode=fixedSeg, modelPath=modelPath,
                                 device="cpu")
        self.delayDisplay(outputs.summary)
        self.assertEqual(outputs.segmentationNode.GetParentTransformNode(), outputs.transformNode)
        self.assertEqual(outputs.transformNode.GetNodeReference(nodes.FIXED_VOLUME_REF), fixed)
        self.assertIn("dice", outputs.outcome.metrics)

        # Slicer resamples the MR gland through the exported transform like the library does
        gland = nodes.addVolume("gland", Volume(pair.moving_labels.channels[0], pair.moving.grid))
        gland.SetAndObserveTransformNodeID(outputs.transformNode.GetID())
        resampled = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(gland, fixed)
        self.assertGreater(dice(slicer.util.arrayFromVolume(resampled), outputs.outcome.result.warped_labels[0]), 0.99)

        # live TRUS: a burst of frames costs at most two registrations
        logic.startAutoUpdate(fixed, moving, movingSegmentationNode=movingSeg, modelPath=modelPath, device="cpu")
        for _frame in range(5):
            slicer.util.updateVolumeFromArray(fixed, pair.fixed.array)
        self.assertTrue(logic.worker.wait(120))
        logic.stopAutoUpdate()
        self.assertLessEqual(logic.worker.started, 2)
        self.delayDisplay("LabelReg test passed")

"""LabelReg: register a prostate MR (moving) to a 3D TRUS (fixed) volume with a label-driven
neural network (Hu et al. 2018), in one click or live while the TRUS streams in.

Layers: ``labelreg`` (pure library, no Slicer), ``LabelRegLib`` (Slicer adapters: nodes,
background worker, dependencies, engine cache) and this file (Module, parameter node, Widget,
Logic, Test).
"""
from __future__ import annotations

import logging
import time
from typing import Annotated, Callable, Union

import qt
import slicer
import vtk
from LabelRegLib import dependencies
from LabelRegLib.inference import LabelRegOutputs
from LabelRegLib.worker import LatestJobRunner
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)
MODES = ["deformable", "affine"]
DEVICES = ["auto", "cpu", "cuda"]


class LabelReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LabelReg MR-TRUS")
        self.parent.categories = [_("Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerLabelReg contributors"]
        self.parent.helpText = _(
            "Registers a prostate MR volume (and its gland/landmark segmentation) to a 3D transrectal "
            "ultrasound volume with weakly-supervised registration networks: the bundled model first "
            "aligns the gland it finds in both images, then deforms the MR. Outputs: an affine and a "
            "deformable transform, the MR segmentation shown on the TRUS, the resampled MR. "
            "'Live TRUS' re-registers whenever the TRUS image changes (e.g. an OpenIGTLink stream).")
        self.parent.acknowledgementText = _(
            "Method: Y. Hu et al., Weakly-supervised convolutional neural networks for multimodal image "
            "registration, Medical Image Analysis 49 (2018). Example data: YipengHu/example-data (mrus).")


@parameterNodeWrapper
class LabelRegParameterNode:
    """Module settings, saved with the scene. Empty ``modelPath`` means the bundled model."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    # typing.Union: get_type_hints evaluates these, and Slicer's Python may be 3.9
    movingSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]  # noqa: UP007
    fixedSegmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]  # noqa: UP007
    mode: Annotated[str, Choice(MODES)] = "deformable"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    modelPath: str = ""
    outputTransform: vtkMRMLTransformNode
    outputAffineTransform: vtkMRMLTransformNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputVolume: vtkMRMLScalarVolumeNode
    createResampledVolume: bool = True
    hardenSegmentation: bool = False
    volumeOpacity: float = 0.5
    autoUpdate: bool = False


class LabelRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the parameter node and calls the Logic; no processing here."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiTag = None

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
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        self.logic.stopAutoUpdate()
        self.logic.worker.cancel()

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

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if parameterNode:
            self._guiTag = parameterNode.connectGui(self.ui)
            self.ui.modelPathLineEdit.currentPath = parameterNode.modelPath
            self.addObserver(parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None):
        pn = self._parameterNode
        ready = bool(pn and pn.fixedVolume and pn.movingVolume and pn.fixedVolume != pn.movingVolume)
        running = self.logic.worker.busy
        self.ui.registerButton.enabled = ready or running
        self.ui.registerButton.text = _("Cancel") if running else _("Register")
        self.ui.registerButton.toolTip = (_("Register the MR to the TRUS") if ready
                                          else _("Select a TRUS and an MR volume"))

    def onModelPathChanged(self, path):
        if self._parameterNode:
            self._parameterNode.modelPath = path

    def onRegisterButton(self):
        if self.logic.worker.busy:
            self.logic.worker.cancel()
            self.ui.statusLabel.text = _("Cancelled: the scene was not changed.")
            self.updateButtons()
            return
        with slicer.util.tryWithErrorDisplay(_("Registration failed.")):
            dependencies.ensureTorch(askConfirmation=True, testing=slicer.app.testingEnabled())
            self.ui.resultsLabel.text = ""
            self.logic.registerUsingParameterNode(self._parameterNode, waitForCompletion=False,
                                                  onFinished=self.onFinished, onError=self.onError)
        self.updateButtons()

    def onAutoUpdateToggled(self, checked):
        with slicer.util.tryWithErrorDisplay(_("Live update failed to start."), waitCursor=True):
            if checked:
                dependencies.ensureTorch(askConfirmation=True, testing=slicer.app.testingEnabled())
                self.logic.startAutoUpdateUsingParameterNode(self._parameterNode, onFinished=self.onFinished,
                                                             onError=self.onError)
            else:
                self.logic.stopAutoUpdate()

    def onProgress(self, fraction, message, elapsed):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = f"{message} ({elapsed:.1f} s)"

    def onFinished(self, outputs):
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = _("Done.")
        self.ui.resultsLabel.text = outputs.summary
        if outputs.volumeNode is not None:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.fixedVolume, foreground=outputs.volumeNode,
                                             foregroundOpacity=self._parameterNode.volumeOpacity)
        self.updateButtons()

    def onError(self, error):
        self.ui.statusLabel.text = _("Failed.")
        self.updateButtons()
        slicer.util.errorDisplay(_("Registration failed.") + f"\n\n{error}")

    def onOpacityChanged(self, value):
        slicer.util.setSliceViewerLayers(foregroundOpacity=value)


class LabelRegLogic(ScriptedLoadableModuleLogic, VTKObservationMixin):
    """All processing; usable without the GUI::

        outputs = LabelRegLogic().register(trusNode, mrNode, mrSegmentationNode)
        print(outputs.summary)
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        VTKObservationMixin.__init__(self)
        self.worker = LatestJobRunner(timerFactory=qt.QTimer)
        self._engines = None
        self._live = None  # (fixed node, observer callback) while live updates are on
        self.lastOutputs = None

    def getParameterNode(self):
        return LabelRegParameterNode(super().getParameterNode())

    @property
    def engines(self):
        """The loaded models, kept between registrations (LabelRegLib.inference.EngineCache)."""
        if self._engines is None:
            dependencies.requireTorch()
            from LabelRegLib.inference import EngineCache

            self._engines = EngineCache()
        return self._engines

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
        the transform. ``waitForCompletion=False`` runs the network in a thread and calls
        ``onFinished(outputs)`` / ``onError(exception)`` on the main thread. ``cancel()``
        returning True (or ``self.worker.cancel()``) stops the run and leaves the scene unchanged.

        Raises:
            LabelRegError: missing torch (with installation advice), bad inputs, or a missing or
                tampered model file. RegistrationCancelled: ``cancel()`` returned True.
        """
        settings = dict(locals())  # the registration settings: every argument but the run control
        for key in ("self", "progress", "cancel", "waitForCompletion", "onFinished", "onError"):
            settings.pop(key)

        def prepare():
            return self._prepare(**settings)

        if waitForCompletion:
            request = prepare()
            return self._apply(request, self._compute(request, progress, cancel))

        def deliver(request, outcome):
            outputs = self._apply(request, outcome)
            if onFinished:
                onFinished(outputs)

        self.worker.submit(prepare, self._compute, deliver, onError)
        return None

    def registerUsingParameterNode(self, parameterNode, **kwargs) -> LabelRegOutputs | None:
        """:meth:`register` with the settings of a :class:`LabelRegParameterNode`; stores the outputs in it."""
        store = self._storer(parameterNode, kwargs.pop("onFinished", None))
        outputs = self.register(**self._settings(parameterNode), onFinished=store, **kwargs)
        return store(outputs) if outputs is not None else None

    # ------------------------------------------------------------- live TRUS
    def startAutoUpdate(self, fixedVolumeNode, movingVolumeNode, onFinished=None, onError=None, **settings):
        """Re-register whenever the fixed volume's image data changes (e.g. an OpenIGTLink stream),
        with the :meth:`register` settings given as keywords.

        At most one registration runs at a time and the newest frame wins; output nodes are
        created by the first update and reused afterwards. ``outputs.latency`` is the time from
        the image change to the updated outputs.
        """
        self.stopAutoUpdate()
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
            self.worker.submit(prepare, self._compute, deliver, onError)

        self.addObserver(fixedVolumeNode, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, onImageModified)
        self._live = (fixedVolumeNode, onImageModified)
        onImageModified(fixedVolumeNode, None)  # register the current frame now

    def startAutoUpdateUsingParameterNode(self, parameterNode, onFinished=None, onError=None):
        self.startAutoUpdate(onFinished=self._storer(parameterNode, onFinished), onError=onError,
                             **self._settings(parameterNode))

    def stopAutoUpdate(self):
        if self._live is not None:
            self.removeObserver(self._live[0], slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._live[1])
            self._live = None

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

        if mode not in MODES or device not in DEVICES:
            raise LabelRegError(f"mode must be one of {MODES} and device one of {DEVICES}")
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

    def _compute(self, request, progress=None, cancel=None):
        """Any thread: run the network (no scene access)."""
        return self.engines.run(request, progress, cancel)

    def _apply(self, request, outcome) -> LabelRegOutputs:
        """Main thread: create or update the output nodes."""
        from LabelRegLib import nodes

        self.lastOutputs = nodes.writeOutputs(request, outcome)
        logger.info(self.lastOutputs.summary)
        return self.lastOutputs


class LabelRegTest(ScriptedLoadableModuleTest):
    """Registers a small synthetic pair with the bundled model (or an untrained one) and checks
    the outputs, Slicer's own application of the exported transform, and live updates."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_RegisterPhantom()

    def test_RegisterPhantom(self):
        import tempfile
        from pathlib import Path

        from labelreg.metrics import dice
        from labelreg.model import RegistrationModel
        from labelreg.model_io import BUNDLED_MODEL, save_model
        from labelreg.phantom import make_pair
        from LabelRegLib import nodes

        pair = make_pair(1, fixed_size=(24, 28, 22), moving_size=(28, 28, 26), spacing=(2.5, 2.5, 2.5))
        modelPath = "" if BUNDLED_MODEL.exists() else str(save_model(Path(tempfile.mkdtemp()) / "m.pt",
                                                                     RegistrationModel()))
        scene = slicer.mrmlScene
        fixed = nodes.setVolumeArray(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "TRUS"),
                                     pair.fixed.array, pair.fixed.grid)
        moving = nodes.setVolumeArray(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR"),
                                      pair.moving.array, pair.moving.grid)
        names = ["gland"] + [f"landmark {c}" for c in range(1, len(pair.moving_labels.array))]
        movingSeg = nodes.fillSegmentation(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MR seg"),
                                           pair.moving_labels.array, pair.moving.grid, names)
        fixedSeg = nodes.fillSegmentation(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TRUS seg"),
                                          pair.fixed_labels.array, pair.fixed.grid, names)
        logic = LabelRegLogic()
        outputs = logic.register(fixed, moving, movingSeg, fixedSegmentationNode=fixedSeg, modelPath=modelPath,
                                 device="cpu")
        self.delayDisplay(outputs.summary)
        self.assertEqual(outputs.segmentationNode.GetParentTransformNode(), outputs.transformNode)
        self.assertEqual(outputs.transformNode.GetNodeReference(nodes.FIXED_VOLUME_REF), fixed)
        self.assertIn("dice", outputs.outcome.metrics)

        # Slicer resamples the MR gland through the exported transform like the library does
        gland = nodes.setVolumeArray(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "gland"),
                                     pair.moving_labels.array[0], pair.moving.grid)
        gland.SetAndObserveTransformNodeID(outputs.transformNode.GetID())
        resampled = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(gland, fixed)
        self.assertGreater(dice(slicer.util.arrayFromVolume(resampled), outputs.outcome.result.warped_labels[0]), 0.99)

        # live TRUS: a burst of frames costs at most two registrations
        logic.startAutoUpdate(fixed, moving, movingSegmentationNode=movingSeg, modelPath=modelPath, device="cpu")
        for _frame in range(5):
            slicer.util.updateVolumeFromArray(fixed, pair.fixed.array)
        self.assertTrue(logic.worker.wait(60))
        logic.stopAutoUpdate()
        self.assertLessEqual(logic.worker.started, 2)
        self.delayDisplay("LabelReg test passed")

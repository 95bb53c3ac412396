"""The LabelReg Widget's lifecycle under a headless Slicer: ``setup()`` loads the real .ui (Qt
stand-ins of Testing/slicer_bootstrap.py) and ``connectGui`` behaves like Slicer's (it writes
the widgets from the parameter node, which emits their signals); the stand-in QTimers drive the
Logic's polling as Slicer's event loop would.

Covers: module exit during a live burst and during a one-shot Register (results keep arriving,
no dialog), a scene saved with live mode on (loading it starts nothing), Register with missing
inputs, live errors counted on the status line, the opacity slider, Cancel, cleanup.
"""
import types
from pathlib import Path

import numpy as np
import pytest
import slicer_bootstrap

try:
    import slicer as _slicer_core  # noqa: F401  (pip install slicer-core)
except ImportError as exc:
    pytest.skip(f"slicer-core is not available: {exc}", allow_module_level=True)
from labelreg.model import ModelConfig, RegistrationModel
from labelreg.model_io import save_model

pytestmark = pytest.mark.usefixtures("clean_scene")  # slicer, module, nodes: conftest.py


def tiny_model(folder) -> str:
    default = ModelConfig()
    config = ModelConfig(grid_spacing_mm=6.0,
                         global_net=dict(default.global_net, base_channels=2, levels=2, pooled_size=[2, 2, 2]),
                         local_net=dict(default.local_net, base_channels=2, levels=2))
    return str(save_model(Path(folder) / "tiny.pt", RegistrationModel(config)))


@pytest.fixture
def dialogs(slicer, monkeypatch):
    """Modal dialogs the module opens, recorded (testing mode off, so that
    ``tryWithErrorDisplay`` would show them as in the application)."""
    shown = []
    for name in ("errorDisplay", "warningDisplay", "infoDisplay", "messageBox", "confirmOkCancelDisplay"):
        monkeypatch.setattr(slicer.util, name, lambda text, *args, _name=name, **kwargs: shown.append((_name, text)))
    monkeypatch.setattr(slicer.app, "testing", False)
    return shown


@pytest.fixture
def widget(slicer, module):
    """The module panel after ``setup()``, entered."""
    panel = module.LabelRegWidget(types.SimpleNamespace(isEntered=True))
    panel.setup()
    yield panel
    panel.exit()  # disconnect it from the parameter node: Clear(0) keeps singleton nodes for the next test
    panel.removeObservers()
    panel.logic.stopAutoUpdate()
    panel.logic.worker.cancel()  # kills the worker only if a job is still running


def select_inputs(slicer, nodes, phantom, widget, tmp_path, seed=5):
    """What a user does: choose the volumes and segmentation, a model file, the CPU."""
    pair = phantom("iso_axis", seed=seed)
    fixed, moving = nodes.addVolume("TRUS", pair.fixed), nodes.addVolume("MR", pair.moving)
    segmentation = nodes.addLabelSegmentation("MR seg", pair.moving_labels)
    ui = widget.ui
    ui.fixedVolumeSelector.setCurrentNode(fixed)
    ui.movingVolumeSelector.setCurrentNode(moving)
    ui.movingSegmentationSelector.setCurrentNode(segmentation)
    ui.modelPathLineEdit.currentPath = tiny_model(tmp_path)
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.items.index("cpu")
    return pair, fixed, moving


def scene_state(slicer):
    scene = slicer.mrmlScene
    return [(n.GetID(), n.GetName(), n.GetMTime())
            for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))]


def run_until(condition, seconds=60.0):
    assert slicer_bootstrap.runEventLoop(seconds, condition), "timed out"


# ----------------------------------------------------------------------- setup
def test_setup_binds_the_ui_as_slicer_does(slicer, module, nodes, phantom, widget, tmp_path):
    ui, pn = widget.ui, widget._parameterNode
    assert ui.modeComboBox.items == list(module.USER_MODES) and ui.deviceComboBox.items == list(module.DEVICES)
    assert (ui.volumeOpacitySlider.minimum, ui.volumeOpacitySlider.maximum, ui.volumeOpacitySlider.value) == (0, 1, 0.5)
    assert ui.autoUpdateCheckBox.property("SlicerParameterName") is None  # live mode is not saved
    assert not ui.registerButton.enabled and ui.registerButton.text == "Register"
    _, fixed, moving = select_inputs(slicer, nodes, phantom, widget, tmp_path)
    assert (pn.fixedVolume, pn.movingVolume, pn.device) == (fixed, moving, "cpu")
    assert pn.modelPath.endswith("tiny.pt") and ui.registerButton.enabled
    pn.mode = "affine"  # the parameter node drives the widgets too
    assert ui.modeComboBox.currentText == "affine"


def test_the_connectgui_stand_in_refuses_what_slicer_refuses(slicer):
    """Slicer's connectGui raises for a ctkSliderWidget bound to an unbounded float (the module
    once declared ``volumeOpacity: float`` and would not have opened in Slicer)."""
    from typing import Annotated

    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class Unbounded:
        opacity: float = 0.5

    @parameterNodeWrapper
    class Bounded:
        opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5

    slider = slicer_bootstrap.FakeSliderWidget(name="slider")
    slider.setProperty("SlicerParameterName", "opacity")
    gui = types.SimpleNamespace(slider=slider)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    with pytest.raises(RuntimeError, match="unbounded"):
        Unbounded(node).connectGui(gui)
    bounded = Bounded(node)
    bounded.connectGui(gui)
    slider.value = 0.25  # the user moves it
    assert bounded.opacity == 0.25
    with pytest.raises(ValueError, match="within"):
        bounded.opacity = 2.0


# ----------------------------------------------------------------- one-shot
def test_register_with_missing_inputs_says_so_once(slicer, module, widget, dialogs):
    before = scene_state(slicer)
    widget.onRegisterButton()  # e.g. the TRUS was deleted after the button was enabled
    assert [name for name, _ in dialogs] == ["errorDisplay"] and "Select the TRUS" in dialogs[0][1]
    assert widget.ui.statusLabel.text == "Failed: Select the TRUS (fixed) volume."
    assert widget.logic.worker.started == 0 and not widget.logic.worker.busy and scene_state(slicer) == before


def test_register_cancel_and_leaving_the_module_meanwhile(slicer, module, nodes, phantom, widget, dialogs, tmp_path):
    _, fixed, _ = select_inputs(slicer, nodes, phantom, widget, tmp_path)
    view = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    ui, pn = widget.ui, widget._parameterNode

    ui.registerButton.click()
    assert ui.registerButton.text == "Cancel"
    widget.exit()  # the user switches module before the registration finishes
    run_until(lambda: not widget.logic.worker.busy)
    assert dialogs == [] and ui.statusLabel.text == "Done." and ui.resultsLabel.text.startswith("Registered in")
    assert pn.outputVolume is not None and view.GetForegroundVolumeID() == pn.outputVolume.GetID()
    assert view.GetBackgroundVolumeID() == fixed.GetID() and view.GetForegroundOpacity() == 0.5

    widget.enter()
    before = scene_state(slicer)
    ui.registerButton.click()
    assert ui.registerButton.text == "Cancel"
    ui.registerButton.click()  # Cancel
    slicer_bootstrap.runEventLoop(0.3)
    assert ui.statusLabel.text == "Cancelled: the scene was not changed." and scene_state(slicer) == before
    assert ui.registerButton.text == "Register" and dialogs == []


def test_opacity_slider_changes_only_the_views_of_the_resampled_mr(slicer, module, nodes, phantom, widget, tmp_path):
    select_inputs(slicer, nodes, phantom, widget, tmp_path)
    widget.logic.registerUsingParameterNode(widget._parameterNode)
    pn = widget._parameterNode
    showing, other = (slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2))
    showing.SetForegroundVolumeID(pn.outputVolume.GetID())
    other.SetForegroundVolumeID(pn.movingVolume.GetID())
    other.SetForegroundOpacity(1.0)
    widget.ui.volumeOpacitySlider.value = 0.8  # the user moves the slider
    assert (showing.GetForegroundOpacity(), other.GetForegroundOpacity()) == (0.8, 1.0)
    assert pn.volumeOpacity == 0.8

    widget.exit()
    pn.volumeOpacity = 0.3  # e.g. a scene saved with another opacity
    widget.enter()  # connectGui writes 0.3 into the slider: no view changes
    assert widget.ui.volumeOpacitySlider.value == 0.3
    assert (showing.GetForegroundOpacity(), other.GetForegroundOpacity()) == (0.8, 1.0)


# ----------------------------------------------------------------------- live
def test_module_exit_during_a_live_burst(slicer, module, nodes, phantom, widget, dialogs, tmp_path):
    pair, fixed, _ = select_inputs(slicer, nodes, phantom, widget, tmp_path)
    ui, logic = widget.ui, widget.logic
    ui.autoUpdateCheckBox.click()
    assert logic.liveActive and ui.autoUpdateCheckBox.checked
    run_until(lambda: not logic.worker.busy)  # the first frame
    started = logic.worker.started
    for i in range(10):  # a burst; the user leaves the module in the middle of it
        slicer.util.updateVolumeFromArray(fixed, pair.fixed.array + 5.0 * (i + 1))
        slicer.app.processEvents()
        if i == 4:
            widget.exit()
    run_until(lambda: not logic.worker.busy)
    assert dialogs == [] and logic.worker.started - started <= 2
    assert ui.statusLabel.text == "Live TRUS: updated." and "live latency" in ui.resultsLabel.text
    assert logic.getParameterNode().outputVolume is logic.lastOutputs.volumeNode  # stored, outside the module too
    np.testing.assert_allclose(logic.lastOutputs.outcome.result.warped_moving.shape, pair.fixed.array.shape)

    widget.enter()
    assert ui.autoUpdateCheckBox.checked  # still live
    ui.autoUpdateCheckBox.click()
    assert not logic.liveActive and ui.statusLabel.text == "Live TRUS stopped."
    slicer.util.updateVolumeFromArray(fixed, pair.fixed.array)
    assert not logic.worker.busy


def test_live_errors_go_to_the_status_line_with_a_count(slicer, module, nodes, phantom, widget, dialogs, tmp_path):
    pair, fixed, _ = select_inputs(slicer, nodes, phantom, widget, tmp_path)
    widget.ui.modelPathLineEdit.currentPath = str(tmp_path / "absent.pt")
    widget.ui.autoUpdateCheckBox.click()
    for i in range(3):
        run_until(lambda: not widget.logic.worker.busy)
        if i < 2:
            slicer.util.updateVolumeFromArray(fixed, pair.fixed.array + i + 1)
    assert dialogs == [] and widget.logic.liveActive
    assert widget.ui.statusLabel.text.startswith("Live TRUS: 3 frames failed; last: ")
    assert "model file not found" in widget.ui.statusLabel.text


def test_live_without_a_trus_does_not_start(slicer, module, widget, dialogs):
    widget.ui.autoUpdateCheckBox.click()
    assert not widget.ui.autoUpdateCheckBox.checked and not widget.logic.liveActive
    assert widget.ui.statusLabel.text == "Live TRUS not started: Select the TRUS (fixed) and MR (moving) volumes first."
    assert dialogs == [] and widget.logic.worker.started == 0


def test_a_scene_saved_with_live_mode_on_starts_nothing(slicer, module, nodes, phantom, widget, dialogs, tmp_path,
                                                         monkeypatch):
    """A scene from a version that stored ``autoUpdate`` in the parameter node: loading it writes
    the widgets (as Slicer's connectGui does) but never starts live registration nor asks for
    PyTorch."""
    from LabelRegLib import dependencies

    _, fixed, _ = select_inputs(slicer, nodes, phantom, widget, tmp_path)
    pn = widget._parameterNode
    pn.parameterNode.SetParameter("autoUpdate", "True")
    pn.volumeOpacity = 0.3
    view = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    view.SetForegroundVolumeID(fixed.GetID())
    view.SetForegroundOpacity(1.0)
    scene_file = str(tmp_path / "live.mrml")
    slicer.mrmlScene.SetURL(scene_file)
    assert slicer.mrmlScene.Commit()

    asked = []
    monkeypatch.setattr(dependencies, "ensureTorch", lambda *args, **kwargs: asked.append(args))
    widget.ui.volumeOpacitySlider.value = 0.5
    slicer.mrmlScene.Clear(0)  # File > Load Scene: close, then import
    slicer.mrmlScene.SetURL(scene_file)
    assert slicer.mrmlScene.Import()
    slicer_bootstrap.runEventLoop(0.2)
    loaded = widget._parameterNode
    assert loaded.parameterNode.GetParameter("autoUpdate") == "True" and loaded.fixedVolume is not None
    assert widget.ui.volumeOpacitySlider.value == 0.3 and widget.ui.fixedVolumeSelector.currentNode() is not None
    assert not widget.logic.liveActive and not widget.ui.autoUpdateCheckBox.checked
    assert widget.logic.worker.started == 0 and asked == [] and dialogs == []
    views = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")
    assert [v.GetForegroundOpacity() for v in views] == [1.0]


def test_cleanup_stops_live_mode_and_the_worker(slicer, module, nodes, phantom, widget, tmp_path):
    select_inputs(slicer, nodes, phantom, widget, tmp_path)
    widget.ui.autoUpdateCheckBox.click()
    run_until(lambda: not widget.logic.worker.busy)
    worker = widget.logic.worker.process
    pid = worker.pid
    assert worker.running
    widget.cleanup()  # the application closes, or the module is reloaded
    assert not widget.logic.liveActive and not worker.running
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

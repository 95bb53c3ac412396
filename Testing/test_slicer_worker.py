"""The registration worker process under a headless Slicer: Register, Cancel (the process is gone
within a second, the scene unchanged), a killed or crashed worker (one line, then the next
Register works), a live burst of ten TRUS frames (at most two registrations, the newest frame
wins), and the lossless transport of arrays and geometry.

Registrations use tiny untrained models saved to tmp_path, so each takes a fraction of a second;
the worker process is shared by the tests (as by the Logic objects of one Slicer session).
"""
import json
import os
import signal
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import slicer_bootstrap

try:
    import slicer as _slicer_core  # noqa: F401  (pip install slicer-core)
except ImportError as exc:
    pytest.skip(f"slicer-core is not available: {exc}", allow_module_level=True)
from labelreg.errors import LabelRegError
from labelreg.model import ModelConfig, RegistrationModel
from labelreg.model_io import save_model

pytestmark = pytest.mark.usefixtures("clean_scene")  # slicer, module, nodes: conftest.py

def tiny_model(folder) -> str:
    """An untrained model with two-level, two-channel networks on a 6 mm grid (the default
    configuration otherwise): a registration takes a fraction of a second."""
    default = ModelConfig()
    config = ModelConfig(grid_spacing_mm=6.0,
                         global_net=dict(default.global_net, base_channels=2, levels=2, pooled_size=[2, 2, 2]),
                         local_net=dict(default.local_net, base_channels=2, levels=2))
    return str(save_model(Path(folder) / "tiny.pt", RegistrationModel(config)))


def slow_model(folder) -> str:
    """The default architecture, untrained, on a 1.5 mm network grid: seconds per registration,
    a wide window for killing the worker in the middle of one (the tests never wait for it)."""
    return str(save_model(Path(folder) / "slow.pt", RegistrationModel(ModelConfig(grid_spacing_mm=1.5))))


def registering(messages) -> bool:
    """Whether the worker reported a stage of the registration itself (the engine has started)."""
    return any(message != "waiting for the worker" for message in messages)


def add_pair(slicer, nodes, pair):
    return nodes.addVolume("TRUS", pair.fixed), nodes.addVolume("MR", pair.moving), \
        nodes.addLabelSegmentation("MR seg", pair.moving_labels)


def scene_state(slicer):
    scene = slicer.mrmlScene
    return [(n.GetID(), n.GetName(), n.GetMTime())
            for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))]


def alive(pid) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def run_until(condition, seconds=60.0):
    """Slicer's event loop (the stand-in QTimers drive the Logic's polling) until ``condition()``."""
    assert slicer_bootstrap.runEventLoop(seconds, condition), "timed out"


# ------------------------------------------------------------------ transport
def test_arrays_and_geometry_travel_losslessly(tmp_path, phantom):
    from LabelRegLib import transfer
    from LabelRegLib.inference import RegistrationOutcome, RegistrationRequest, WorkerResult

    pair = phantom("aniso_oblique", seed=2)
    request = RegistrationRequest(pair.fixed, pair.moving, movingLabels=pair.moving_labels, mode="affine",
                                  device="cpu", modelPath=str(tmp_path / "m.pt"))
    message = transfer.writeRequest(tmp_path, request)
    back = transfer.readRequest(tmp_path, json.loads(json.dumps(message)))
    for name in ("fixed", "moving", "movingLabels"):
        sent, got = getattr(request, name), getattr(back, name)
        assert got.grid == sent.grid and got.array.dtype == sent.array.dtype and got.name == sent.name
        np.testing.assert_array_equal(got.array, sent.array)
    assert back.fixedLabels is None and (back.mode, back.device, back.modelPath) == ("affine", "cpu", request.modelPath)

    rng = np.random.default_rng(0)
    shape = pair.fixed.grid.shape_zyx
    result = WorkerResult(affine_lps=rng.normal(size=(4, 4)), fixed_grid=pair.fixed.grid, mode="deformable",
                          device="cpu", ddf_lps=rng.normal(size=shape + (3,)).astype(np.float32),
                          warped_moving=rng.normal(size=shape).astype(np.float32), warped_labels=None,
                          timings={"network": 0.1}, initial_lps=np.eye(4), warnings=["far"], confidence=0.42,
                          verdict="check", confidence_features={"gland_agreement": 0.8})
    outcome = RegistrationOutcome(result, 1.5, "cpu", ["note"], {"dice": 0.8, "landmark_mm": [1.25, float("inf")]})
    message = json.loads(json.dumps(transfer.writeOutcome(tmp_path, outcome)))
    got = transfer.readOutcome(tmp_path, message)
    np.testing.assert_array_equal(got.result.affine_lps, result.affine_lps)  # float64 through JSON: exact
    np.testing.assert_array_equal(got.result.ddf_lps, result.ddf_lps)
    np.testing.assert_array_equal(got.result.warped_moving, result.warped_moving)
    assert got.result.warped_labels is None and got.result.fixed_grid == pair.fixed.grid
    assert got.metrics == outcome.metrics and got.notes == ["note"] and got.result.warnings == ["far"]
    assert (got.result.confidence, got.result.verdict, got.result.confidence_features) == (
        0.42, "check", {"gland_agreement": 0.8})
    from LabelRegLib.inference import formatSummary

    assert "Check the overlay (confidence 0.42)" in formatSummary(got)


def test_python_for_the_worker(tmp_path):
    from LabelRegLib import process

    app_bin, home_bin = tmp_path / "app" / "bin", tmp_path / "home" / "bin"
    home_bin.mkdir(parents=True)
    launcher = home_bin / "PythonSlicer"
    launcher.write_text("")
    assert process.findPython([str(app_bin), str(home_bin)]) == (str(launcher), True)
    assert process.findPython([str(app_bin)]) == (sys.executable, False)  # slicer-core: this Python
    application = types.SimpleNamespace(  # Slicer: the real executable in bin/, PythonSlicer beside it
        app=types.SimpleNamespace(applicationFilePath=lambda: str(home_bin / "SlicerApp-real"),
                                  slicerHome=str(tmp_path / "home")),
        util=types.SimpleNamespace(startupEnvironment=lambda: {"PATH": "/usr/bin"}))
    assert process.slicerPython(application) == (str(launcher), {"PATH": "/usr/bin"})
    headless = types.SimpleNamespace(app=types.SimpleNamespace(), util=None)
    assert process.slicerPython(headless) == (sys.executable, None)
    with pytest.raises(process.WorkerStopped, match="PythonSlicer"):
        process.findPython([], fallback=str(tmp_path / "absent"))


# -------------------------------------------------------------- register, cancel
def test_register_runs_in_a_persistent_worker(slicer, module, nodes, phantom, tmp_path):
    from LabelRegLib.inference import EngineCache

    pair = phantom("iso_axis", seed=1)
    fixed, moving, moving_seg = add_pair(slicer, nodes, pair)
    logic, model = module.LabelRegLogic(), tiny_model(tmp_path)
    outputs = logic.register(fixed, moving, moving_seg, modelPath=model, device="cpu")
    worker = logic.worker.process
    assert worker.running and worker.pid != os.getpid()
    starts, pid = worker.starts, worker.pid
    again = module.LabelRegLogic().register(fixed, moving, moving_seg, modelPath=model, device="cpu")
    assert (worker.starts, worker.pid) == (starts, pid)  # one process for every Logic, kept between runs

    # the worker's results are the library's, computed here in-process from the same request
    request = logic._prepare(fixed, moving, moving_seg, modelPath=model, device="cpu")
    local = EngineCache().run(request).result
    for result in (outputs.outcome.result, again.outcome.result):
        np.testing.assert_allclose(result.ddf_lps, local.ddf_lps, atol=1e-4)
        np.testing.assert_allclose(result.warped_labels, local.warped_labels, atol=1e-4)
        np.testing.assert_array_equal(result.affine_lps, again.outcome.result.affine_lps)
    assert worker._jobFolders == set() and list(Path(worker._folder).iterdir()) == [Path(worker._folder) / "worker.log"]


def test_cancel_kills_the_worker_within_a_second_and_leaves_the_scene(slicer, module, nodes, phantom, tmp_path):
    pair = phantom("iso_axis", seed=4)
    fixed, moving, moving_seg = add_pair(slicer, nodes, pair)
    logic, model = module.LabelRegLogic(), slow_model(tmp_path)
    before = scene_state(slicer)
    messages, delivered = [], []
    logic.worker.onProgress = lambda fraction, message, elapsed: messages.append(message)
    logic.register(fixed, moving, moving_seg, modelPath=model, device="cpu", waitForCompletion=False,
                   onFinished=delivered.append, onError=delivered.append)
    run_until(lambda: registering(messages) or delivered)  # mid-registration
    assert delivered == []
    pid = logic.worker.process.pid
    assert alive(pid)
    start = time.perf_counter()
    logic.worker.cancel()
    while alive(pid) and time.perf_counter() - start < 1.0:
        time.sleep(0.01)
    assert not alive(pid), "the worker process was still running 1 s after Cancel"
    assert not logic.worker.busy
    slicer_bootstrap.runEventLoop(0.5)  # nothing arrives later either
    assert delivered == [] and scene_state(slicer) == before

    outputs = logic.register(fixed, moving, moving_seg, modelPath=tiny_model(tmp_path), device="cpu")
    assert outputs.outcome.metrics is None and logic.worker.process.pid != pid  # a fresh worker


def test_blocking_cancel_kills_the_worker(slicer, module, nodes, phantom, tmp_path):
    from labelreg.errors import RegistrationCancelled

    fixed, moving, moving_seg = add_pair(slicer, nodes, phantom("iso_axis", seed=4))
    logic, model = module.LabelRegLogic(), slow_model(tmp_path)
    seen = []
    before = scene_state(slicer)
    with pytest.raises(RegistrationCancelled):
        logic.register(fixed, moving, moving_seg, modelPath=model, device="cpu",
                       progress=lambda fraction, message: seen.append(message),
                       cancel=lambda: registering(seen))
    assert not logic.worker.process.running and scene_state(slicer) == before


# ------------------------------------------------------------- crash, kill
def test_a_worker_killed_mid_registration_fails_in_one_line_then_register_works(slicer, module, nodes, phantom,
                                                                               tmp_path):
    from LabelRegLib.process import WorkerStopped

    fixed, moving, moving_seg = add_pair(slicer, nodes, phantom("iso_axis", seed=3))
    logic, slow, tiny = module.LabelRegLogic(), slow_model(tmp_path), tiny_model(tmp_path)
    before = scene_state(slicer)
    messages, errors, finished = [], [], []
    logic.worker.onProgress = lambda fraction, message, elapsed: messages.append(message)
    logic.register(fixed, moving, moving_seg, modelPath=slow, device="cpu", waitForCompletion=False,
                   onFinished=finished.append, onError=errors.append)
    run_until(lambda: registering(messages) or errors or finished)
    assert errors == [] and finished == []
    os.kill(logic.worker.process.pid, signal.SIGKILL)  # a crash in the middle of a registration
    run_until(lambda: not logic.worker.busy)
    assert finished == [] and len(errors) == 1 and isinstance(errors[0], WorkerStopped)
    assert "stopped unexpectedly (exit code -9)" in str(errors[0]) and "\n" not in str(errors[0])
    assert scene_state(slicer) == before

    outputs = logic.register(fixed, moving, moving_seg, modelPath=tiny, device="cpu")  # a fresh worker
    assert outputs.segmentationNode is not None


def test_a_worker_killed_while_idle_is_replaced_at_the_next_register(slicer, module, nodes, phantom, tmp_path):
    fixed, moving, _ = add_pair(slicer, nodes, phantom("iso_axis", seed=3))
    logic, tiny = module.LabelRegLogic(), tiny_model(tmp_path)
    logic.register(fixed, moving, modelPath=tiny, device="cpu")
    pid = logic.worker.process.pid
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.01)
    assert logic.register(fixed, moving, modelPath=tiny, device="cpu").transformNode is not None
    assert logic.worker.process.pid != pid


def test_a_worker_that_cannot_start_says_why_in_one_line(tmp_path, phantom):
    from LabelRegLib.inference import RegistrationRequest
    from LabelRegLib.process import WorkerProcess, WorkerStopped
    from LabelRegLib.worker import LatestJobRunner

    broken = tmp_path / "broken_worker.py"
    broken.write_text("import sys\nprint('ModuleNotFoundError: No module named torch', file=sys.stderr)\nsys.exit(1)\n")
    worker = WorkerProcess(lambda: (sys.executable, None), script=broken)
    pair = phantom("iso_axis", seed=3)
    with pytest.raises(WorkerStopped) as error:
        LatestJobRunner(lambda: worker).run(RegistrationRequest(pair.fixed, pair.moving))
    assert str(error.value).startswith("The registration worker stopped unexpectedly (exit code 1): "
                                       "ModuleNotFoundError: No module named torch;")
    assert "\n" not in str(error.value) and not worker.running


def test_input_errors_from_the_worker_keep_their_type(slicer, module, nodes, phantom, tmp_path):
    fixed, moving, _ = add_pair(slicer, nodes, phantom("iso_axis", seed=3))
    before = scene_state(slicer)
    with pytest.raises(LabelRegError, match="model file not found"):
        module.LabelRegLogic().register(fixed, moving, modelPath=str(tmp_path / "absent.pt"))
    assert scene_state(slicer) == before


# ----------------------------------------------------------------------- live
def test_a_live_burst_of_ten_frames_costs_at_most_two_registrations(slicer, module, nodes, phantom, tmp_path):
    pair = phantom("iso_axis", seed=5)
    fixed, moving, moving_seg = add_pair(slicer, nodes, pair)
    logic, model = module.LabelRegLogic(), tiny_model(tmp_path)
    logic.register(fixed, moving, moving_seg, modelPath=model, device="cpu")  # worker and model ready
    sent, results = [], []
    prepare = logic._prepare

    def recording_prepare(*args, **kwargs):
        request = prepare(*args, **kwargs)
        sent.append(float(request.fixed.array.mean()))
        return request

    logic._prepare = recording_prepare
    frames = [pair.fixed.array + 10.0 * (i + 1) for i in range(10)]
    logic.startAutoUpdate(fixed, moving, movingSegmentationNode=moving_seg, modelPath=model, device="cpu",
                          onFinished=results.append)
    for frame in frames:  # a stream faster than the registrations, the event loop running between frames
        slicer.util.updateVolumeFromArray(fixed, frame)
        slicer.app.processEvents()
    run_until(lambda: not logic.worker.busy)
    logic.stopAutoUpdate()
    assert 1 <= len(sent) <= 2 and len(results) == len(sent)
    assert sent[-1] == pytest.approx(float(frames[-1].mean()), rel=1e-6)  # the newest frame won
    assert results[-1].latency is not None and results[-1].transformNode is results[0].transformNode
    resampled = slicer.util.arrayFromVolume(results[-1].volumeNode)
    assert resampled.shape == pair.fixed.array.shape

"""The LabelReg Slicer module under a headless Slicer (slicer-core + Testing/slicer_bootstrap.py).

Checks that Slicer's own transform machinery, applied to the exported transform nodes, gives
the library's warping; that inputs, their parent transforms and (on cancel) the scene are left
alone; live-update coalescing; every user-facing error; the batch script; ``runTest``.
"""

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import slicer as _slicer_core  # noqa: F401  (pip install slicer-core)
except ImportError as exc:  # absent, or broken (e.g. a vtk it was not built against)
    pytest.skip(f"slicer-core is not available: {exc}", allow_module_level=True)
import vtk  # installed with slicer-core
from labelreg.errors import LabelRegError, RegistrationCancelled
from labelreg.metrics import centroid_lps, dice
from labelreg.model import RegistrationModel
from labelreg.model_io import save_model
from labelreg.transforms import half_extent_mm, initial_transform, matrix_lps_to_ras, vectors_lps_to_ras
from labelreg.warp import sample

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "mrus"
BATCH_SCRIPT = REPO / "SlicerLabelReg" / "Scripts" / "register_batch.py"


# --------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("clean_scene")  # slicer, module, nodes: conftest.py


def model_with_affine(fixed_grid, moving_grid, affine_lps=None, local_shift=None) -> RegistrationModel:
    """An untrained model whose global head bias makes it predict ``affine_lps`` (fixed -> moving,
    LPS) for this pair of grids, and whose local net adds a smooth non-zero field."""
    torch.manual_seed(0)
    model = RegistrationModel()
    if affine_lps is not None:
        net_grid = model.network_grid(fixed_grid)
        wanted = np.linalg.inv(initial_transform(fixed_grid, moving_grid, model.config.initial_alignment)) @ affine_lps
        rotation, centre = net_grid.direction_matrix, net_grid.center_lps
        linear = rotation.T @ wanted[:3, :3] @ rotation
        shift = rotation.T @ (wanted[:3, 3] - centre + wanted[:3, :3] @ centre) / half_extent_mm(net_grid)
        model.global_net.head.bias.data = torch.as_tensor(
            np.concatenate([(linear - np.eye(3)).ravel(), shift]), dtype=torch.float32
        )
    if local_shift is not None:  # a spatially varying field of a few mm
        output = model.local_net.outputs[-1]
        output.bias.data = torch.as_tensor(local_shift, dtype=torch.float32)
        torch.nn.init.normal_(output.weight, std=0.02)
    return model.eval()


def save(model, folder, name="model") -> str:
    return str(save_model(Path(folder) / f"{name}.pt", model))


def add_pair(slicer, nodes, pair, with_fixed_seg=True):
    """(fixed, moving, moving segmentation, fixed segmentation) nodes of a phantom pair."""
    fixed_seg = nodes.addLabelSegmentation("TRUS seg", pair.fixed_labels) if with_fixed_seg else None
    return (nodes.addVolume("TRUS", pair.fixed), nodes.addVolume("MR", pair.moving),
            nodes.addLabelSegmentation("MR seg", pair.moving_labels), fixed_seg)


def scene_state(slicer):
    scene = slicer.mrmlScene
    return [
        (n.GetID(), n.GetName(), n.GetMTime()) for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    ]


def slicer_resample(slicer, nodes, array, grid, transform_node, reference_node) -> np.ndarray:
    """Slicer's own resampling (vtkSlicerVolumesLogic) of a float volume through a transform node."""
    volume = nodes.setVolumeArray(
        slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "probe"),
        np.asarray(array, dtype=np.float32),
        grid,
    )
    volume.SetAndObserveTransformNodeID(transform_node.GetID())
    resampled = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(volume, reference_node)
    return slicer.util.arrayFromVolume(resampled).copy()


def slicer_hardened_gland(slicer, nodes, segmentation_node):
    """Harden a copy of a segmentation node with Slicer; (gland array, its own Grid)."""
    copy = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hardened copy")
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    copy.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    slicer.vtkSlicerTransformLogic.hardenTransform(copy)
    assert copy.GetParentTransformNode() is None
    image = slicer.vtkOrientedImageData()
    copy.GetBinaryLabelmapRepresentation(copy.GetSegmentation().GetNthSegmentID(0), image)
    array, grid = nodes.arrayAndGridFromImage(image, "hardened gland")
    return array > 0, grid


# ------------------------------------------------------ Slicer applies the outputs
@pytest.mark.parametrize("kind", ["iso_axis", "aniso_oblique"])
def test_exported_transforms_reproduce_library_warp(slicer, module, nodes, phantom, tmp_path, kind):
    pair = phantom(kind, seed=3)
    model = model_with_affine(pair.fixed.grid, pair.moving.grid, pair.true_affine_lps, local_shift=(1.5, -1.0, 0.8))
    fixed, moving, moving_seg, fixed_seg = add_pair(slicer, nodes, pair)
    outputs = module.LabelRegLogic().register(
        fixed, moving, moving_seg, fixedSegmentationNode=fixed_seg, modelPath=save(model, tmp_path), device="cpu"
    )
    result = outputs.outcome.result
    assert np.abs(result.ddf_lps - np.asarray(pair.true_ddf_lps)).max() > 1.0  # the field is not just the affine

    # 1. the grid transform maps fixed voxel centres exactly to the library's moving points
    points = pair.fixed.grid.points_lps(dtype=torch.float64).numpy().reshape(-1, 3)[::53]
    moved = points + result.ddf_lps.reshape(-1, 3)[::53]
    from_world = vtk.vtkGeneralTransform()
    outputs.transformNode.GetTransformFromWorld(from_world)
    got = np.array([from_world.TransformPoint(*p) for p in vectors_lps_to_ras(points)])
    np.testing.assert_allclose(got, vectors_lps_to_ras(moved), atol=1e-3)
    affine = matrix_from_parent(slicer, outputs.affineTransformNode)
    np.testing.assert_allclose(affine, matrix_lps_to_ras(result.affine_lps), atol=1e-9)

    # 2. Slicer's resampling through the exported transform == the library's warping
    gland = slicer_resample(slicer, nodes, pair.moving_labels.array[0], pair.moving.grid, outputs.transformNode, fixed)
    assert dice(gland, result.warped_labels[0]) > 0.99
    assert np.abs(gland - result.warped_labels[0]).max() < 1e-3
    mr = slicer_resample(slicer, nodes, pair.moving.array, pair.moving.grid, outputs.transformNode, fixed)
    inside = inside_moving(result, pair.moving.grid)  # VTK and torch pad differently at the border
    assert inside.mean() > 0.5
    np.testing.assert_allclose(mr[inside], result.warped_moving[inside], atol=0.05)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(outputs.volumeNode), result.warped_moving, atol=1e-4)

    # 3. the output segmentation sits under the transform; Slicer's hardening of a copy (a
    # nearest-neighbour resampling onto a grid of its own) lands on the library's warped gland
    assert outputs.segmentationNode.GetParentTransformNode() is outputs.transformNode
    hardened, hardened_grid = slicer_hardened_gland(slicer, nodes, outputs.segmentationNode)
    library_gland = result.warped_labels[0] >= 0.5
    offset = centroid_lps(hardened, hardened_grid) - centroid_lps(library_gland, pair.fixed.grid)
    assert np.linalg.norm(offset) < 0.4 * min(pair.moving.grid.spacing)
    volume_ratio = (
        hardened.sum() * np.prod(hardened_grid.spacing) / (library_gland.sum() * np.prod(pair.fixed.grid.spacing))
    )
    assert volume_ratio == pytest.approx(1.0, abs=0.03)
    on_fixed = nodes.labelsFromNode(outputs.segmentationNode, pair.fixed.grid)[0].array  # Slicer resamples through it
    assert dice(on_fixed[0], library_gland) > 0.93

    # the registration (with the true affine) overlaps the TRUS gland better than centre alignment
    centre = initial_transform(pair.fixed.grid, pair.moving.grid, "centers")
    initial = dice(
        library_warp(pair.moving_labels.array[:1], pair.moving.grid, pair.fixed.grid, centre)[0],
        pair.fixed_labels.array[0],
    )
    assert dice(on_fixed[0], pair.fixed_labels.array[0]) > initial + 0.03
    assert outputs.outcome.metrics["dice"] > initial + 0.05

    # outputs are tagged with their inputs; inputs untouched
    for node in (outputs.transformNode, outputs.affineTransformNode, outputs.segmentationNode, outputs.volumeNode):
        assert node.GetNodeReference(nodes.FIXED_VOLUME_REF) is fixed
        assert node.GetNodeReference(nodes.MOVING_VOLUME_REF) is moving
    assert moving_seg.GetParentTransformNode() is None and moving.GetParentTransformNode() is None
    np.testing.assert_array_equal(nodes.labelsFromNode(moving_seg, pair.moving.grid)[0].array, pair.moving_labels.array)


def matrix_from_parent(slicer, transform_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromParent(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def inside_moving(result, moving_grid, margin=1.0) -> np.ndarray:
    """Fixed voxels whose moving point lies at least ``margin`` voxels inside the moving volume."""
    points = result.fixed_grid.points_lps(dtype=torch.float64).numpy() + result.ddf_lps
    index = points @ moving_grid.lps_to_index[:3, :3].T + moving_grid.lps_to_index[:3, 3]
    return np.all((index >= margin) & (index <= np.asarray(moving_grid.size) - 1 - margin), axis=-1)


def library_warp(channels, moving_grid, fixed_grid, affine_lps) -> np.ndarray:
    points = fixed_grid.points_lps(dtype=torch.float64)
    moved = points @ torch.as_tensor(affine_lps[:3, :3]).T + torch.as_tensor(affine_lps[:3, 3])
    return sample(torch.as_tensor(channels, dtype=torch.float64)[None], moving_grid, moved[None])[0].numpy()


def test_identity_model_in_affine_mode_gives_centre_alignment(slicer, module, nodes, phantom, tmp_path):
    pair = phantom("aniso_oblique", seed=1)
    fixed, moving, moving_seg, _ = add_pair(slicer, nodes, pair, with_fixed_seg=False)
    before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLGridTransformNode")
    outputs = module.LabelRegLogic().register(
        fixed, moving, moving_seg, mode="affine", modelPath=save(RegistrationModel(), tmp_path), device="cpu"
    )
    assert outputs.transformNode is outputs.affineTransformNode
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLGridTransformNode") == before
    expected = matrix_lps_to_ras(initial_transform(pair.fixed.grid, pair.moving.grid, "centers"))
    got = matrix_from_parent(slicer, outputs.transformNode)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert outputs.outcome.metrics is None and "Registered in" in outputs.summary


def test_parent_transforms_of_inputs_are_respected(slicer, module, nodes, phantom, tmp_path):
    """Moving a volume with a parent transform is the same as moving its voxels: the registration
    follows, the inputs keep their transforms, and the results live in world coordinates."""
    pair = phantom("iso_axis", seed=2)
    model_path = save(model_with_affine(pair.fixed.grid, pair.moving.grid, pair.true_affine_lps), tmp_path)
    fixed, moving, moving_seg, _ = add_pair(slicer, nodes, pair, with_fixed_seg=False)
    logic = module.LabelRegLogic()
    plain = logic.register(fixed, moving, moving_seg, mode="affine", modelPath=model_path, device="cpu")
    plain_affine_ras = matrix_lps_to_ras(plain.outcome.result.affine_lps)

    shift_ras = np.eye(4)
    shift_ras[:3, 3] = [12.0, -7.0, 5.0]
    parent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial MR pose")
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift_ras))
    moving.SetAndObserveTransformNodeID(parent.GetID())
    moving_seg.SetAndObserveTransformNodeID(parent.GetID())
    moved = logic.register(fixed, moving, moving_seg, mode="affine", modelPath=model_path, device="cpu")
    # the centre alignment follows the moved MR (same model bias): A' = shift @ A in RAS
    np.testing.assert_allclose(
        matrix_lps_to_ras(moved.outcome.result.affine_lps), shift_ras @ plain_affine_ras, atol=1e-3
    )
    assert moving.GetParentTransformNode() is parent and moving_seg.GetParentTransformNode() is parent
    np.testing.assert_allclose(moved.outcome.result.warped_labels, plain.outcome.result.warped_labels, atol=1e-3)

    # a non-linear parent transform is resampled on a copy, the input is left as it was
    grid_parent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    nodes.setDisplacementTransform(
        grid_parent, np.full(pair.moving.grid.shape_zyx + (3,), 2.0, np.float32), pair.moving.grid
    )
    moving.SetAndObserveTransformNodeID(grid_parent.GetID())
    state = slicer.util.arrayFromVolume(moving).copy()
    warped = logic.register(fixed, moving, None, mode="affine", modelPath=model_path, device="cpu")
    assert warped.outcome.result.warped_moving.std() > 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), state)
    assert moving.GetParentTransformNode() is grid_parent


# ----------------------------------------------------------------- cancel, live
def test_cancel_leaves_the_scene_unchanged(slicer, module, nodes, phantom, tmp_path):
    pair = phantom("iso_axis", seed=4)
    fixed, moving, moving_seg, fixed_seg = add_pair(slicer, nodes, pair)
    logic = module.LabelRegLogic()
    model_path = save(RegistrationModel(), tmp_path)
    before = scene_state(slicer)
    calls = []
    with pytest.raises(RegistrationCancelled):
        logic.register(
            fixed,
            moving,
            moving_seg,
            fixedSegmentationNode=fixed_seg,
            modelPath=model_path,
            cancel=lambda: calls.append(1) or len(calls) > 1,
        )
    assert scene_state(slicer) == before

    finished = []
    logic.register(
        fixed,
        moving,
        moving_seg,
        modelPath=model_path,
        waitForCompletion=False,
        onFinished=finished.append,
        onError=finished.append,
    )
    logic.worker.cancel()
    assert logic.worker.wait(60)
    assert finished == [] and scene_state(slicer) == before


def test_live_updates_coalesce_a_burst_into_two_registrations(slicer, module, nodes, phantom, tmp_path):
    pair = phantom("iso_axis", seed=5)
    fixed, moving, moving_seg, _ = add_pair(slicer, nodes, pair, with_fixed_seg=False)
    logic = module.LabelRegLogic()
    seen, results = [], []
    prepare = logic._prepare

    def recording_prepare(*args, **kwargs):  # what each registration sent to the worker
        request = prepare(*args, **kwargs)
        seen.append(float(request.fixed.array.mean()))
        return request

    logic._prepare = recording_prepare
    logic.startAutoUpdate(
        fixed,
        moving,
        movingSegmentationNode=moving_seg,
        modelPath=save(RegistrationModel(), tmp_path),
        device="cpu",
        onFinished=results.append,
    )
    frames = [pair.fixed.array + 10.0 * (i + 1) for i in range(10)]
    for frame in frames:  # ten frames arrive while the first registration runs
        slicer.util.updateVolumeFromArray(fixed, frame)
    assert logic.worker.wait(120)
    assert logic.worker.started <= 2 and len(results) == len(seen) <= 2
    assert seen[-1] == pytest.approx(float(frames[-1].mean()), rel=1e-5)  # the newest frame won
    first, last = results[0], results[-1]
    assert last.transformNode is first.transformNode and last.segmentationNode is first.segmentationNode
    assert last.latency is not None and last.latency > 0 and "live latency" in last.summary

    logic.stopAutoUpdate()
    slicer.util.updateVolumeFromArray(fixed, frames[0])
    assert not logic.worker.busy and logic.worker.started == len(seen)


def test_live_mode_of_an_unreferenced_logic_survives_garbage_collection():
    """``LabelRegLogic().startAutoUpdate(...)`` in a script keeps no reference to the Logic: its
    TRUS observer must stay callable after a garbage collection (with VTK 9.6 a collected
    node -> observer -> Logic -> node cycle made the next frame crash the process)."""
    script = "\n".join([
        "import gc, sys",
        f"sys.path.insert(0, {str(REPO / 'Testing')!r})",
        "import slicer_bootstrap",
        "slicer = slicer_bootstrap.bootstrap()",
        "import numpy as np, LabelReg",
        "scene = slicer.mrmlScene",
        "fixed = slicer.util.addVolumeFromArray(np.random.rand(8, 9, 10).astype(np.float32))",
        "empty = scene.AddNewNodeByClass('vtkMRMLScalarVolumeNode')  # every frame fails in prepare: no worker",
        "LabelReg.LabelRegLogic().startAutoUpdate(fixed, empty, onError=lambda e: print('frame failed'))",
        "fixedID = fixed.GetID()",
        "del fixed",
        "gc.collect()",
        "slicer.util.updateVolumeFromArray(scene.GetNodeByID(fixedID), np.zeros((8, 9, 10), np.float32))",
        "print('still running')",
    ])
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], check=False, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["frame", "failed", "frame", "failed", "still", "running"]


# ------------------------------------------------------------------------ errors
def test_missing_torch_is_reported_with_installation_advice(slicer, module, nodes, phantom, monkeypatch):
    from LabelRegLib import dependencies

    pair = phantom("iso_axis", seed=6)
    fixed, moving, _, _ = add_pair(slicer, nodes, pair, with_fixed_seg=False)
    before = scene_state(slicer)
    monkeypatch.setattr(dependencies, "torchAvailable", lambda: False)
    with pytest.raises(dependencies.MissingDependencyError, match="PyTorch.*Extensions Manager"):
        module.LabelRegLogic().register(fixed, moving)
    assert scene_state(slicer) == before
    with pytest.raises(dependencies.MissingDependencyError):
        dependencies.ensureTorch(testing=True)  # testing mode never installs

    asked = []

    class FakePyTorchUtilsLogic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            asked.append((askConfirmation, torchVersionRequirement))
            # the user declined

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = FakePyTorchUtilsLogic
    with pytest.raises(dependencies.MissingDependencyError, match="not installed"):
        dependencies.ensureTorch(askConfirmation=True)
    assert asked == [(True, f">={dependencies.MINIMUM_TORCH}")]


def test_too_old_torch_is_refused_and_offered_for_update(slicer, module, nodes, phantom, monkeypatch):
    """A torch older than MINIMUM_TORCH counts as missing: the Logic refuses before any work and
    Register offers the update through the PyTorch extension (read from metadata, no import)."""
    from LabelRegLib import dependencies

    assert dependencies.versionTuple("2.13.0+cpu") == (2, 13, 0) and dependencies.versionTuple("1.13.1") < (2, 1)
    assert dependencies.torchProblem() is None  # this environment's torch
    fixed, moving, _, _ = add_pair(slicer, nodes, phantom("iso_axis", seed=6), with_fixed_seg=False)
    installed = {"version": "1.13.1"}
    monkeypatch.setattr(dependencies, "torchVersion", lambda: installed["version"])
    before = scene_state(slicer)
    with pytest.raises(dependencies.MissingDependencyError, match=r"PyTorch 1\.13\.1 is installed.*2\.1 or newer"):
        module.LabelRegLogic().register(fixed, moving)
    with pytest.raises(dependencies.MissingDependencyError):
        module.LabelRegLogic().startAutoUpdate(fixed, moving)
    assert scene_state(slicer) == before

    asked = []

    class FakePyTorchUtilsLogic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            asked.append(torchVersionRequirement)
            installed["version"] = "2.5.1"
            return object()  # the torch module

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = FakePyTorchUtilsLogic
    dependencies.ensureTorch(askConfirmation=True)
    assert asked == [f">={dependencies.MINIMUM_TORCH}"] and dependencies.torchProblem() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_no_gpu_falls_back_to_cpu_and_says_so(slicer, module, nodes, phantom, tmp_path):
    from LabelRegLib.inference import NO_GPU_NOTE

    fixed, moving, _, _ = add_pair(slicer, nodes, phantom("iso_axis", seed=6), with_fixed_seg=False)
    outputs = module.LabelRegLogic().register(
        fixed, moving, device="cuda", modelPath=save(RegistrationModel(), tmp_path)
    )
    assert outputs.outcome.device == "cpu" and NO_GPU_NOTE in outputs.summary


def test_gpu_out_of_memory_retries_on_cpu(phantom, tmp_path, monkeypatch):
    """The worker's EngineCache (LabelRegLib/inference.py, run here in-process)."""
    from LabelRegLib.inference import OOM_NOTE, EngineCache, RegistrationRequest

    pair = phantom("iso_axis", seed=6)
    model_path = save(RegistrationModel(), tmp_path)

    class FullGpuEngine:
        device = torch.device("cuda")

        def register(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    engines = EngineCache()
    engines.put(model_path, "cuda", FullGpuEngine())
    outcome = engines.run(RegistrationRequest(pair.fixed, pair.moving, device="cuda", modelPath=model_path))
    assert outcome.device == "cpu" and OOM_NOTE in outcome.notes


def test_missing_or_tampered_weights(slicer, module, nodes, phantom, tmp_path):
    fixed, moving, _, _ = add_pair(slicer, nodes, phantom("iso_axis", seed=6), with_fixed_seg=False)
    before = scene_state(slicer)
    logic = module.LabelRegLogic()
    with pytest.raises(LabelRegError, match="model file not found"):
        logic.register(fixed, moving, modelPath=str(tmp_path / "absent.pt"))
    good = Path(save(RegistrationModel(), tmp_path, "good"))
    tampered = tmp_path / "tampered.pt"
    shutil.copy(good, tampered)
    shutil.copy(good.with_suffix(".json"), tampered.with_suffix(".json"))
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(LabelRegError, match="sha256"):
        logic.register(fixed, moving, modelPath=str(tampered))
    errors = []
    logic.register(fixed, moving, modelPath=str(tampered), waitForCompletion=False, onError=errors.append)
    assert logic.worker.wait(60) and isinstance(errors[0], LabelRegError)
    assert scene_state(slicer) == before


def test_empty_and_non_3d_inputs(slicer, module, nodes, phantom, tmp_path):
    pair = phantom("iso_axis", seed=6)
    fixed, moving, _, _ = add_pair(slicer, nodes, pair, with_fixed_seg=False)
    scene, logic = slicer.mrmlScene, module.LabelRegLogic()
    model_path = save(RegistrationModel(), tmp_path)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    one_slice = nodes.setVolumeArray(
        scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "slice"),
        pair.fixed.array[:1],
        pair.fixed.grid.__class__(
            (pair.fixed.grid.size[0], pair.fixed.grid.size[1], 1), pair.fixed.grid.spacing, pair.fixed.grid.origin
        ),
    )
    constant = nodes.setVolumeArray(
        scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "constant"), np.zeros_like(pair.fixed.array), pair.fixed.grid
    )
    no_segments = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no segments")
    vector = slicer.util.addVolumeFromArray(np.zeros(pair.fixed.array.shape + (3,), np.float32),
                                            nodeClassName="vtkMRMLVectorVolumeNode")
    surface_only = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface only")
    surface_only.GetSegmentation().SetSourceRepresentationName("Closed surface")
    surface_only.GetSegmentation().AddEmptySegment("gland")
    before = scene_state(slicer)
    cases = [
        ((empty, moving), "no image data"),
        ((one_slice, moving), "3-D volume"),
        ((fixed, constant), "constant"),
        ((None, moving), "Select the TRUS"),
        ((fixed, fixed), "must be different"),
        ((fixed, moving, no_segments), "is empty"),
        ((vector, moving), "scalar"),
        ((fixed, moving, surface_only), "binary labelmap representation"),
    ]
    for arguments, message in cases:
        with pytest.raises(LabelRegError, match=message):
            logic.register(*arguments, modelPath=model_path)
    errors = []  # the background path reports the same errors through onError
    logic.register(empty, moving, modelPath=model_path, waitForCompletion=False, onError=errors.append)
    assert logic.worker.wait(10) and "no image data" in str(errors[0])
    assert scene_state(slicer) == before


# --------------------------------------------------------- parameter node, runTest
def test_parameter_node_drives_the_logic(slicer, module, nodes, phantom, tmp_path):
    fixed, moving, moving_seg, fixed_seg = add_pair(slicer, nodes, phantom("iso_axis", seed=7))
    logic = module.LabelRegLogic()
    pn = logic.getParameterNode()
    assert pn.mode == "deformable" and pn.device == "auto" and pn.createResampledVolume
    pn.fixedVolume, pn.movingVolume, pn.movingSegmentation, pn.fixedSegmentation = fixed, moving, moving_seg, fixed_seg
    pn.modelPath, pn.device, pn.hardenSegmentation = save(RegistrationModel(), tmp_path), "cpu", True
    outputs = logic.registerUsingParameterNode(pn)
    assert pn.outputTransform is outputs.transformNode and pn.outputSegmentation is outputs.segmentationNode
    assert outputs.segmentationNode.GetParentTransformNode() is None  # hardened: on the TRUS grid
    again = logic.registerUsingParameterNode(pn)
    assert again.transformNode is outputs.transformNode and again.volumeNode is outputs.volumeNode


def test_module_self_test_passes(slicer, module):
    module.LabelRegTest().runTest()


def test_module_self_test_without_torch_skips_the_registration_with_a_message():
    """The Extensions Index factory builds and tests every extension without PyTorch: LabelRegTest
    must pass there, import no torch, and say that it skipped its registration part."""
    script = "\n".join([
        "import logging, sys",
        "sys.modules['torch'] = None  # no PyTorch: importing it fails, find_spec finds nothing",
        f"sys.path.insert(0, {str(REPO / 'Testing')!r})",
        "logging.basicConfig(level=logging.INFO, format='%(message)s')",
        "import slicer_bootstrap",
        "slicer = slicer_bootstrap.bootstrap()",
        "import LabelReg",
        "LabelReg.LabelRegTest().runTest()  # Reload and Test",
        "import unittest  # the factory's ctest: slicer.testing.runUnitTest loads the module's test methods",
        "result = unittest.TextTestRunner(verbosity=2).run(unittest.TestLoader().loadTestsFromName('LabelReg'))",
        "print('ctest:', result.testsRun, 'run', len(result.skipped), 'skipped', result.wasSuccessful())",
        "print('torch imported:', any(n.split('.')[0] == 'torch' and m is not None for n, m in sys.modules.items()))",
    ])
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LabelReg test without PyTorch passed" in done.stderr
    skipped = "the registration part is skipped because PyTorch is not usable here (PyTorch is not installed."
    assert skipped in done.stderr
    assert "ctest: 2 run 1 skipped True" in done.stdout and "torch imported: False" in done.stdout


# --------------------------------------------------------------------- real data
@pytest.mark.data
@pytest.mark.skipif(not (DATA / "fixed_images" / "obs000.nii.gz").exists(), reason="../shared/data/mrus is absent")
def test_real_pair_obs000(slicer, module, nodes, tmp_path):
    from labelreg import resources
    from labelreg.io import read_labels

    fixed = slicer.util.loadVolume(str(DATA / "fixed_images" / "obs000.nii.gz"))
    moving = slicer.util.loadVolume(str(DATA / "moving_images" / "obs000.nii.gz"))
    grids = {role: nodes.volumeFromNode(node).grid for role, node in (("fixed", fixed), ("moving", moving))}
    moving_labels = read_labels(DATA / "moving_labels" / "obs000.nii.gz", grids["moving"])
    fixed_labels = read_labels(DATA / "fixed_labels" / "obs000.nii.gz", grids["fixed"])
    names = [f"label {c}" for c in range(len(moving_labels.array))]
    scene = slicer.mrmlScene
    moving_seg = nodes.fillSegmentation(
        scene.AddNewNodeByClass("vtkMRMLSegmentationNode"), moving_labels.array, grids["moving"], names
    )
    fixed_seg = nodes.fillSegmentation(
        scene.AddNewNodeByClass("vtkMRMLSegmentationNode"), fixed_labels.array, grids["fixed"], names
    )
    trained = resources.BUNDLED_MODEL_FILE.exists()
    model = (
        ""
        if trained
        else save(model_with_affine(grids["fixed"], grids["moving"], local_shift=(2.0, -1.5, 1.0)), tmp_path)
    )
    outputs = module.LabelRegLogic().register(
        fixed, moving, moving_seg, fixedSegmentationNode=fixed_seg, modelPath=model, device="cpu"
    )
    result = outputs.outcome.result
    gland = slicer_resample(slicer, nodes, moving_labels.array[0], grids["moving"], outputs.transformNode, fixed)
    assert dice(gland, result.warped_labels[0]) > 0.99
    centre = initial_transform(grids["fixed"], grids["moving"], "centers")
    initial = dice(
        library_warp(moving_labels.array[:1], grids["moving"], grids["fixed"], centre)[0], fixed_labels.array[0]
    )
    if trained:  # the bundled model must beat the centre alignment on the real pair
        assert outputs.outcome.metrics["dice"] > initial


# ------------------------------------------------------------------------- batch
def run_batch(slicer, argv):
    saved = sys.argv
    sys.argv = [str(BATCH_SCRIPT)] + [str(a) for a in argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(BATCH_SCRIPT), run_name="__main__")
    finally:
        sys.argv = saved
    return exit_info.value.code


def test_batch_script(slicer, phantom, tmp_path, capsys):
    import SimpleITK as sitk
    from labelreg.phantom import write_pair

    pair = phantom("aniso_oblique", seed=8)
    files = write_pair(pair, tmp_path / "data")
    model = model_with_affine(pair.fixed.grid, pair.moving.grid, pair.true_affine_lps, local_shift=(1.0, 0.5, -1.0))
    out = tmp_path / "out"
    status = run_batch(
        slicer,
        [
            "--fixed",
            files["fixed_images"],
            "--moving",
            files["moving_images"],
            "--moving-seg",
            files["moving_labels"],
            "--fixed-seg",
            files["fixed_labels"],
            "--output-dir",
            out,
            "--device",
            "cpu",
            "--model",
            save(model, tmp_path),
        ],
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "finished in" in printed and "gland Dice" in printed
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "case000-affine.h5",
        "case000-deformable.h5",
        "case000-registered.seg.nrrd",
        "case000-resampled.nrrd",
    ]

    # the saved deformable transform, applied by SimpleITK, reproduces the saved segmentation
    field = sitk.ReadTransform(str(out / "case000-deformable.h5"))
    moving_gland = sitk.GetImageFromArray(pair.moving_labels.array[0].astype(np.float32))
    pair.moving.grid.apply_to_sitk(moving_gland)
    reference = sitk.GetImageFromArray(pair.fixed.array)
    pair.fixed.grid.apply_to_sitk(reference)
    warped = sitk.GetArrayFromImage(sitk.Resample(moving_gland, reference, field, sitk.sitkLinear, 0.0))
    segmentation = slicer.util.loadSegmentation(str(out / "case000-registered.seg.nrrd"))
    from LabelRegLib import nodes

    saved = nodes.labelsFromNode(segmentation, pair.fixed.grid)[0].array
    assert dice(warped, saved[0]) > 0.99

    status = run_batch(
        slicer, ["--fixed", tmp_path / "absent.nii.gz", "--moving", files["moving_images"], "--output-dir", out]
    )
    assert status == 1 and "absent.nii.gz: file not found" in capsys.readouterr().err
    assert run_batch(slicer, ["--moving", files["moving_images"]]) == 2

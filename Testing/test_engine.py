"""Inference engine on phantoms, cross-checked against SimpleITK resampling of the written
transforms."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from labelreg.engine import RegistrationEngine
from labelreg.errors import LabelRegError, RegistrationCancelled
from labelreg.io import write_affine, write_displacement
from labelreg.model import RegistrationModel
from labelreg.transforms import initial_transform
from labelreg.volume import Volume

#: global head bias: ~3-6 % linear change and a few mm of translation, in the grid frame
HEAD_BIAS = torch.tensor([0.04, -0.05, 0.02, 0.05, -0.03, 0.01, -0.02, 0.03, 0.05, 0.06, -0.08, 0.07])
LOCAL_BIAS = torch.tensor([1.2, -0.8, 1.5])  # mm along the network grid axes


def make_model(global_bias=False, global_weights=False, local_bias=False, seed=0):
    torch.manual_seed(seed)
    model = RegistrationModel()
    with torch.no_grad():
        if global_bias:
            model.global_net.head.bias.copy_(HEAD_BIAS)
        if global_weights:  # make the affine depend on the images
            model.global_net.head.weight.normal_(0, 0.02)
        if local_bias:
            model.local_net.outputs[0].bias.copy_(LOCAL_BIAS)
    return model.eval()


@pytest.fixture(scope="module")
def untrained():
    return RegistrationEngine(make_model(), device="cpu")


@pytest.fixture(scope="module")
def nontrivial():
    return RegistrationEngine(make_model(global_bias=True, local_bias=True), device="cpu")


@pytest.mark.parametrize("kind", ["iso_axis", "aniso_oblique"])
def test_untrained_affine_mode_is_the_centre_alignment(untrained, phantom, kind):
    pair = phantom(kind)
    result = untrained.register(pair.fixed, pair.moving, pair.moving_labels, mode="affine")
    initial = initial_transform(pair.fixed.grid, pair.moving.grid, "centers")
    if kind == "iso_axis":  # exactly; an oblique grid frame adds float32 rounding of R R^T
        np.testing.assert_array_equal(result.affine_lps, initial.astype(np.float32))
    np.testing.assert_allclose(result.affine_lps[:3, :3], initial[:3, :3], atol=1e-6)
    np.testing.assert_allclose(result.affine_lps[:, 3], initial[:, 3], atol=1e-4)
    points = pair.fixed.grid.points_lps(dtype=torch.float64).numpy()
    np.testing.assert_allclose(result.ddf_lps, np.broadcast_to(initial[:3, 3], points.shape), atol=1e-4)
    assert result.fixed_grid == pair.fixed.grid and result.mode == "affine" and result.device == "cpu"
    assert set(result.timings) == {"preprocess", "alignment", "network", "warp"}
    headers = untrained.register(pair.fixed, pair.moving, mode="affine", initial_alignment="headers")
    np.testing.assert_allclose(headers.affine_lps, np.eye(4), atol=1e-5)
    assert headers.warped_labels is None


@pytest.mark.parametrize("kind", ["iso_axis", "aniso_oblique"])
def test_an_initial_matrix_is_where_the_networks_start(nontrivial, untrained, phantom, kind):
    """A given fixed -> moving LPS matrix replaces the centre alignment: an untrained model
    returns it, and a trained one composes its affine after it exactly as after the centres."""
    from labelreg.phantom import rotation_matrix
    pair = phantom(kind)
    start = initial_transform(pair.fixed.grid, pair.moving.grid, "centers")
    start[:3, :3] = rotation_matrix((0.2, 0.9, -0.3), 0.1) * 1.04
    start[:3, 3] += [3.0, -2.0, 4.0]
    result = untrained.register(pair.fixed, pair.moving, mode="affine", initial_alignment=start)
    np.testing.assert_allclose(result.affine_lps, start, atol=1e-4)
    centred = nontrivial.register(pair.fixed, pair.moving, mode="affine")
    same = nontrivial.register(pair.fixed, pair.moving, mode="affine", initial_alignment=initial_transform(
        pair.fixed.grid, pair.moving.grid, "centers"))
    np.testing.assert_allclose(same.affine_lps, centred.affine_lps, atol=1e-5)
    with pytest.raises(LabelRegError, match="initial_alignment"):
        untrained.register(pair.fixed, pair.moving, initial_alignment=np.eye(3))
    with pytest.raises(LabelRegError, match="initial_alignment"):
        untrained.register(pair.fixed, pair.moving, initial_alignment=np.full((4, 4), np.nan))


def test_identity_pair_is_left_unchanged(untrained, phantom):
    pair = phantom("aniso_oblique")
    image, labels = pair.moving, pair.moving_labels
    # an extra 20-voxel landmark channel, which must survive the warp
    tiny = np.zeros((1,) + image.grid.shape_zyx, dtype=np.float32)
    tiny[0, 20:22, 40:42, 30:35] = 1.0
    labels = Volume(np.concatenate([labels.array, tiny]), labels.grid, "labels")
    before = image.array.copy(), labels.array.copy()
    result = untrained.register(image, image, labels, mode="deformable")
    np.testing.assert_array_equal(image.array, before[0])  # inputs untouched
    np.testing.assert_array_equal(labels.array, before[1])
    assert np.abs(result.ddf_lps).max() < 1e-2  # untrained local net: ~zero displacement (mm)
    np.testing.assert_allclose(result.warped_moving, image.array, atol=0.05 * 255 / 100)
    assert result.warped_labels.shape == labels.array.shape
    np.testing.assert_allclose(result.warped_labels, labels.array, atol=2e-3)
    assert result.warped_labels[-1].sum() == pytest.approx(20, abs=0.05)


def test_every_label_channel_is_warped(untrained, phantom, dice_score):
    pair = phantom("iso_axis", seed=2)
    result = untrained.register(pair.fixed, pair.moving, pair.moving_labels, mode="deformable")
    labels = result.warped_labels
    assert labels.shape == pair.fixed_labels.array.shape and labels.dtype == np.float32
    assert labels.min() >= 0 and labels.max() <= 1
    assert all(labels[c].sum() > 0.5 for c in range(labels.shape[0]))
    # the centre alignment overlaps the truth but is several mm off
    assert 0.6 < dice_score(labels[0], pair.fixed_labels.array[0]) < 0.95


def test_batch_equals_single_registrations(phantom):
    engine = RegistrationEngine(make_model(global_bias=True, global_weights=True, local_bias=True), device="cpu")
    pairs = [phantom("iso_axis", seed=s) for s in (0, 1, 2)]
    batch = engine.register_batch([(p.fixed, p.moving, p.moving_labels) for p in pairs], mode="deformable")
    assert len(batch) == 3
    assert not np.allclose(batch[0].affine_lps, batch[1].affine_lps, atol=1e-3)  # image-dependent
    for pair, together in zip(pairs, batch):
        alone = engine.register(pair.fixed, pair.moving, pair.moving_labels, mode="deformable")
        np.testing.assert_allclose(together.affine_lps, alone.affine_lps, atol=1e-3)  # float32 batched vs single convolutions
        np.testing.assert_allclose(together.ddf_lps, alone.ddf_lps, atol=1e-2)  # mm; far below a voxel
        np.testing.assert_allclose(together.warped_moving, alone.warped_moving, atol=0.05)
        np.testing.assert_allclose(together.warped_labels, alone.warped_labels, atol=1e-3)


def test_mixed_geometries_run_one_by_one(nontrivial, phantom):
    a, b = phantom("iso_axis"), phantom("aniso_oblique")
    results = nontrivial.register_batch([(a.fixed, a.moving), (b.fixed, b.moving, b.moving_labels)], mode="affine")
    assert results[0].fixed_grid == a.fixed.grid and results[1].fixed_grid == b.fixed.grid
    assert results[0].warped_labels is None and results[1].warped_labels.shape[0] == 4
    alone = nontrivial.register(b.fixed, b.moving, b.moving_labels, mode="affine")
    np.testing.assert_allclose(results[1].affine_lps, alone.affine_lps, atol=1e-6)


def test_progress_and_cancel(untrained, phantom):
    pair = phantom("iso_axis")
    calls = []
    untrained.register(pair.fixed, pair.moving, mode="affine", progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and len(fractions) >= 4
    assert all(b > a for a, b in zip(fractions, fractions[1:]))
    assert all(isinstance(m, str) and m for _, m in calls)
    with pytest.raises(RegistrationCancelled):
        untrained.register(pair.fixed, pair.moving, cancel=lambda: True)
    polls, seen = [], []
    with pytest.raises(RegistrationCancelled):  # cancelled between stages: no later progress
        untrained.register(pair.fixed, pair.moving, progress=lambda f, m: seen.append(f),
                           cancel=lambda: polls.append(1) or len(polls) >= 3)
    assert seen == fractions[:2]


def test_bad_inputs(untrained, phantom):
    pair = phantom("iso_axis")
    with pytest.raises(LabelRegError, match="mode"):
        untrained.register(pair.fixed, pair.moving, mode="rigid")
    with pytest.raises(LabelRegError, match="not on the moving image's grid"):
        untrained.register(pair.fixed, pair.moving, pair.fixed_labels)
    with pytest.raises(LabelRegError, match="must be 3-D"):
        untrained.register(pair.fixed_labels, pair.moving)
    with pytest.raises(LabelRegError, match="device"):
        RegistrationEngine(make_model(), device="tpu")


def resample_with_sitk(to_sitk, pair, transform):
    """Channel 0 of the moving labels resampled (linear) onto the fixed grid by SimpleITK."""
    moving_label = to_sitk(pair.moving_labels.array[0], pair.moving.grid)
    reference = to_sitk(np.zeros(pair.fixed.grid.shape_zyx), pair.fixed.grid)
    return sitk.GetArrayFromImage(sitk.Resample(moving_label, reference, transform, sitk.sitkLinear, 0.0))


def test_written_displacement_reproduces_the_warp(nontrivial, untrained, phantom, to_sitk, dice_score, tmp_path):
    pair = phantom("aniso_oblique", seed=3)
    result = nontrivial.register(pair.fixed, pair.moving, pair.moving_labels, mode="deformable")
    start = untrained.register(pair.fixed, pair.moving, mode="affine")
    assert np.abs(result.ddf_lps - start.ddf_lps).max() > 2.0  # really not the centre alignment
    path = write_displacement(tmp_path / "ddf.nii.gz", result.ddf_lps, result.fixed_grid)
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    expected = resample_with_sitk(to_sitk, pair, transform)
    assert dice_score(result.warped_labels[0], expected) > 0.99
    assert np.abs(result.warped_labels[0] - expected).mean() < 1e-4


def test_written_affine_reproduces_the_warp(nontrivial, untrained, phantom, to_sitk, dice_score, tmp_path):
    pair = phantom("aniso_oblique", seed=4)
    result = nontrivial.register(pair.fixed, pair.moving, pair.moving_labels, mode="affine")
    start = untrained.register(pair.fixed, pair.moving, mode="affine")
    assert np.abs(result.affine_lps - start.affine_lps).max() > 0.02
    path = write_affine(tmp_path / "affine.tfm", result.affine_lps)
    expected = resample_with_sitk(to_sitk, pair, sitk.ReadTransform(str(path)))
    assert dice_score(result.warped_labels[0], expected) > 0.99
    assert np.abs(result.warped_labels[0] - expected).mean() < 1e-4


def test_slab_by_slab_warping_gives_the_whole_grid_result(phantom, monkeypatch):
    """Composing and warping a few slices at a time (bounded memory) changes nothing."""
    from labelreg import engine as engine_module

    pair = phantom("aniso_oblique", seed=2)
    engine = RegistrationEngine(RegistrationModel().eval(), device="cpu")
    whole = engine.register(pair.fixed, pair.moving, pair.moving_labels)
    monkeypatch.setattr(engine_module, "SLAB_VOXELS", 3 * pair.fixed.grid.size[0] * pair.fixed.grid.size[1] + 5)
    slabs = engine.register(pair.fixed, pair.moving, pair.moving_labels)
    for name in ("ddf_lps", "warped_moving", "warped_labels"):
        np.testing.assert_allclose(getattr(slabs, name), getattr(whole, name), atol=1e-5)


def test_a_registration_that_cannot_fit_in_memory_is_refused_before_it_starts(phantom, monkeypatch):
    from labelreg import engine as engine_module

    pair = phantom("iso_axis", seed=2)
    needed = engine_module.registration_bytes(pair.fixed, pair.moving, pair.moving_labels)
    monkeypatch.setattr(engine_module, "available_bytes", lambda: needed - 1)
    fixed = Volume(pair.fixed.array, pair.fixed.grid, "big_trus.nii.gz")
    with pytest.raises(LabelRegError, match=r"^big_trus.nii.gz: registering this \(40, 48, 36\) image needs about"):
        RegistrationEngine(RegistrationModel().eval(), device="cpu").register(fixed, pair.moving, pair.moving_labels)
    monkeypatch.setattr(engine_module, "available_bytes", lambda: needed)
    RegistrationEngine(RegistrationModel().eval(), device="cpu").register(fixed, pair.moving, pair.moving_labels)

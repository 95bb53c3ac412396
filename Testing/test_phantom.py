"""The synthetic MR/TRUS phantom: sizes, appearance, geometry of the truth, determinism, files."""
import numpy as np
import pytest
import torch
from labelreg.io import read_image, read_labels
from labelreg.phantom import make_pair, rotation_matrix, write_pair
from labelreg.transforms import initial_transform


def test_deterministic_given_seed():
    a, b, c = make_pair(5), make_pair(5), make_pair(6)
    for name in ("fixed", "moving", "fixed_labels", "moving_labels"):
        np.testing.assert_array_equal(getattr(a, name).array, getattr(b, name).array)
        assert getattr(a, name).grid == getattr(b, name).grid
    np.testing.assert_array_equal(a.true_ddf_lps, b.true_ddf_lps)
    assert not np.array_equal(a.true_ddf_lps, c.true_ddf_lps)
    assert not np.array_equal(a.moving_labels.array, c.moving_labels.array)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_sizes_and_types(seed):
    pair = make_pair(seed)
    for labels, image in ((pair.fixed_labels, pair.fixed), (pair.moving_labels, pair.moving)):
        assert labels.array.shape == (4,) + image.grid.shape_zyx and labels.array.dtype == np.float32
        assert labels.grid == image.grid
        assert set(np.unique(labels.array)) == {0.0, 1.0}
        counts = labels.array.sum(axis=(1, 2, 3))
        assert 13_000 <= counts[0] <= 20_000, counts
        assert np.all((counts[1:] >= 20) & (counts[1:] <= 100)), counts
        # landmarks lie inside the gland
        assert np.all((labels.array[1:] * labels.array[0]).sum(axis=(1, 2, 3)) >= 0.8 * counts[1:])
    assert pair.fixed.array.dtype == np.float32 and 0 <= pair.fixed.array.min() and pair.fixed.array.max() <= 255
    assert make_pair(seed, n_landmarks=1).fixed_labels.array.shape[0] == 2


def test_appearance():
    pair = make_pair(0, noise=False)
    mr, us = pair.moving.array, pair.fixed.array
    gland_m, gland_f = pair.moving_labels.array[0] > 0, pair.fixed_labels.array[0] > 0
    assert mr[gland_m].mean() > mr[~gland_m].mean() + 30  # MR: bright gland
    assert us[gland_f].mean() < us[~gland_f].mean() - 20  # US: hypoechoic gland
    # US attenuation with depth along the probe (j) axis, outside the gland
    outside = np.where(gland_f, np.nan, us)
    assert np.nanmean(outside[:, :8]) > np.nanmean(outside[:, -8:]) * 1.2
    noisy = make_pair(0)
    # multiplicative speckle: the noise grows with the echo level
    residual = noisy.fixed.array - us
    assert residual[~gland_f].std() > residual[gland_f].std() * 1.3
    assert np.abs(noisy.moving.array - mr).mean() > 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_centre_alignment_starts_several_mm_off(seed):
    pair = make_pair(seed)
    fixed, moving = pair.fixed.grid, pair.moving.grid
    assert np.linalg.norm(moving.center_lps - fixed.center_lps) > 30  # headers alone are far off
    initial = initial_transform(fixed, moving, "centers")
    points = fixed.points_lps(dtype=torch.float64).numpy()
    error = np.linalg.norm(points + pair.true_ddf_lps - (points + initial[:3, 3]), axis=-1)
    gland_error = error[pair.fixed_labels.array[0] > 0].mean()
    assert 3.0 < gland_error < 12.0, gland_error


def test_given_affine_is_the_truth():
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix((1, 1, 0), 0.1)
    affine[:3, 3] = [30.0, -15.0, 25.0]
    pair = make_pair(1, affine_lps=affine, displacement=False)
    points = pair.fixed.grid.points_lps(dtype=torch.float64).numpy()
    np.testing.assert_allclose(pair.true_ddf_lps, points @ affine[:3, :3].T + affine[:3, 3] - points, atol=1e-4)
    np.testing.assert_array_equal(pair.local_ddf_lps, 0)
    bumped = make_pair(1, affine_lps=affine)
    assert 2.0 < np.linalg.norm(bumped.local_ddf_lps, axis=-1).max() < 4.0  # a smooth ~3 mm bump


def test_oblique_anisotropic_geometry():
    direction = rotation_matrix((0.3, -0.5, 0.8), 0.6)
    pair = make_pair(0, fixed_size=(30, 24, 12), moving_size=(40, 30, 20), spacing=(2.0, 3.0, 4.5),
                     moving_spacing=(1.8, 2.4, 3.3), direction=direction)
    np.testing.assert_allclose(pair.fixed.grid.direction_matrix, direction)
    np.testing.assert_allclose(pair.moving.grid.direction_matrix, direction)
    assert pair.moving.grid.spacing == (1.8, 2.4, 3.3) and pair.fixed.grid.size == (30, 24, 12)
    assert pair.true_ddf_lps.shape == (12, 24, 30, 3)


def test_write_pair_round_trip(tmp_path):
    pair = make_pair(2, fixed_size=(20, 24, 18), moving_size=(24, 24, 22), spacing=(3.0, 3.0, 3.0),
                     direction=rotation_matrix((1, 2, 3), 0.4))
    paths = write_pair(pair, tmp_path, "case007")
    assert sorted(paths) == ["fixed_images", "fixed_labels", "moving_images", "moving_labels"]
    for folder, path in paths.items():
        assert path == tmp_path / folder / "case007.nii.gz" and path.exists()
    fixed, moving = read_image(paths["fixed_images"]), read_image(paths["moving_images"])
    assert fixed.grid.same_as(pair.fixed.grid) and moving.grid.same_as(pair.moving.grid)
    np.testing.assert_array_equal(fixed.array, pair.fixed.array)
    np.testing.assert_array_equal(moving.array, pair.moving.array)
    for role, image in (("fixed_labels", fixed), ("moving_labels", moving)):
        labels = read_labels(paths[role], image.grid)
        np.testing.assert_array_equal(labels.array, getattr(pair, role).array)

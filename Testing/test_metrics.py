"""labelreg.metrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch
from labelreg.grid import Grid
from labelreg.metrics import dice, evaluate_pair, folding_fraction, format_metrics, hd95_mm, landmark_tre_mm, summarize
from labelreg.phantom import rotation_matrix

SPACING = (0.8, 1.2, 2.5)
OBLIQUE = tuple(rotation_matrix((1.0, 2.0, -0.5), 0.6).ravel())


def cube(shape_zyx, corner_zyx, size_zyx):
    out = np.zeros(shape_zyx, np.float32)
    (k, j, i), (dk, dj, di) = corner_zyx, size_zyx
    out[k:k + dk, j:j + dj, i:i + di] = 1
    return out


def test_dice_of_known_cubes():
    a = cube((10, 10, 10), (0, 0, 0), (4, 4, 4))  # 64 voxels
    b = cube((10, 10, 10), (2, 0, 0), (4, 4, 4))  # overlap 2*4*4 = 32
    assert dice(a, b) == pytest.approx(2 * 32 / 128)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a * 0.4, a) == 0.0  # threshold 0.5


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_tre_of_shifted_cubes_is_the_shift_in_mm(direction):
    grid = Grid((20, 18, 16), SPACING, (3.0, -7.0, 11.0), direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))
    shape = grid.shape_zyx
    gland = cube(shape, (2, 2, 2), (10, 10, 10))
    fixed = np.stack([gland, cube(shape, (4, 5, 6), (3, 3, 3)), cube(shape, (8, 8, 8), (2, 2, 2))])
    shift_kji = np.array([2, -1, 3])  # voxels along (k, j, i)
    moved = np.stack([gland, cube(shape, (6, 4, 9), (3, 3, 3)), fixed[2]])
    tre = landmark_tre_mm(moved, fixed, grid)
    expected = np.linalg.norm(grid.direction_matrix @ (shift_kji[::-1] * np.array(SPACING)))
    assert tre[0] == pytest.approx(expected, rel=1e-9)
    assert tre[1] == pytest.approx(0.0, abs=1e-9)
    assert expected != pytest.approx(np.linalg.norm(shift_kji) * 1.5)  # anisotropy matters


def test_tre_soft_weights_and_out_of_view():
    grid = Grid((10, 10, 10), (1, 1, 1), (0, 0, 0))
    fixed = np.zeros((3, 10, 10, 10), np.float32)
    fixed[0, 2:8, 2:8, 2:8] = 1
    fixed[1, 5, 5, 5] = 1
    fixed[2, 3, 3, 3] = 1
    moved = np.zeros_like(fixed)
    moved[0] = fixed[0]
    moved[1, 5, 5, 4] = 0.3  # soft, below 0.5 per voxel but summing to 0.6
    moved[1, 5, 5, 6] = 0.3
    moved[2, 3, 3, 3] = 0.4  # sum < 0.5: warped out of view
    tre = landmark_tre_mm(moved, fixed, grid)
    assert tre[0] == pytest.approx(0.0, abs=1e-9)
    assert math.isinf(tre[1])
    moved[1, 5, 5, 6] = 1.7  # clipped to 1
    # centroid i = (0.3 * 4 + 1.0 * 6) / 1.3
    assert landmark_tre_mm(moved, fixed, grid)[0] == pytest.approx((0.3 * 4 + 6) / 1.3 - 5, abs=1e-6)


def sphere(shape_zyx, centre_zyx, radius):
    k, j, i = np.indices(shape_zyx)
    return (((k - centre_zyx[0]) ** 2 + (j - centre_zyx[1]) ** 2 + (i - centre_zyx[2]) ** 2) <= radius**2).astype(
        np.float32)


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_hd95_of_shifted_sphere_is_the_shift(direction):
    grid = Grid((40, 40, 40), (1.0, 1.0, 2.0), (0, 0, 0), direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = sphere(grid.shape_zyx, (20, 20, 20), 10)
    b = sphere(grid.shape_zyx, (20, 20, 24), 10)  # 4 voxels along i = 4 mm
    c = sphere(grid.shape_zyx, (22, 20, 20), 10)  # 2 voxels along k = 4 mm
    assert hd95_mm(a, b, grid) == pytest.approx(4.0, abs=0.6)
    assert hd95_mm(a, c, grid) == pytest.approx(4.0, abs=0.6)
    assert hd95_mm(a, a, grid) == 0.0
    assert math.isinf(hd95_mm(a, np.zeros_like(a), grid))


def test_folding_fraction():
    grid = Grid((12, 10, 8), (1.0, 1.5, 2.0), (0, 0, 0), OBLIQUE)
    zero = np.zeros(grid.shape_zyx + (3,))
    assert folding_fraction(zero, grid) == 0.0
    points = grid.points_lps(dtype=torch.float64).numpy()
    assert folding_fraction(points * 0.5, grid) == 0.0  # x -> 1.5 x: no folding
    assert folding_fraction(-2.0 * points, grid) == 1.0  # x -> -x: every voxel folded
    folded = zero.copy()
    folded[:, :, 3:6, :] = -3.0 * (points[:, :, 3:6, :] - points[:, :, 4:5, :])  # a local reflection
    assert 0 < folding_fraction(folded, grid) < 1


def test_evaluate_pair_and_summary():
    grid = Grid((10, 10, 10), (1, 1, 1), (0, 0, 0))
    fixed = np.zeros((2, 10, 10, 10), np.float32)
    fixed[0, 2:8, 2:8, 2:8] = 1
    fixed[1, 4, 4, 4] = 1
    moved = fixed.copy()
    moved[1] = 0
    moved[1, 4, 4, 7] = 1
    row = evaluate_pair(moved, fixed, grid, np.zeros((10, 10, 10, 3)))
    assert row["dice"] == 1.0 and row["tre_mm"] == [pytest.approx(3.0)] and row["folding_fraction"] == 0.0
    rows = [row, {**row, "tre_mm": [1.0, 2.0], "dice": 0.5}, {**row, "tre_mm": [math.inf], "dice": 0.0}]
    s = summarize(rows)
    assert s["tre_median_mm"] == pytest.approx(2.5) and math.isinf(s["tre_p90_mm"])
    assert s["dice_median"] == 0.5 and s["dice_p10"] == pytest.approx(0.1)
    assert s["landmarks_out_of_view"] == 1 and "TRE median 2.50 mm" in format_metrics(s)
    with pytest.raises(ValueError, match="channels"):
        evaluate_pair(moved[:1], fixed, grid)

"""Transforms in physical space: network parameters -> LPS, composition, Jacobians, LPS/RAS,
and recovery of a phantom's known transform through the geometry functions."""
import numpy as np
import pytest
import torch
from labelreg.grid import Grid
from labelreg.phantom import centred_grid
from labelreg.transforms import (
    affine_from_params,
    compose_ddf,
    ddf_grid_to_lps,
    half_extent_mm,
    initial_transform,
    jacobian_determinant,
    matrix_lps_to_ras,
    matrix_ras_to_lps,
    transform_points,
    vectors_lps_to_ras,
)
from labelreg.warp import sample


def make_grid(geometry, size=(24, 20, 16), centre=(10.0, -20.0, 35.0)):
    spacing, direction = geometry
    return centred_grid(size, spacing, direction, centre)


def test_zero_params_give_identity(geometry):
    grid = make_grid(geometry)
    out = affine_from_params(torch.zeros(3, 12, dtype=torch.float64), grid)
    assert out.shape == (3, 4, 4)
    torch.testing.assert_close(out, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"\(2, 9\)"):
        affine_from_params(torch.zeros(2, 9), grid)


def test_params_act_in_the_grid_frame(geometry):
    grid = make_grid(geometry)
    rng = np.random.default_rng(0)
    params = rng.normal(0, 0.05, size=(2, 12))
    out = affine_from_params(torch.as_tensor(params), grid).numpy()
    # by hand: y = R^T (x - c) in the grid frame, y' = (I + P) y + t h, x' = R y' + c
    r, c, h = grid.direction_matrix, grid.center_lps, half_extent_mm(grid)
    to_frame = np.eye(4)
    to_frame[:3, :3], to_frame[:3, 3] = r.T, -r.T @ c
    for b in range(2):
        in_frame = np.eye(4)
        in_frame[:3, :3] = np.eye(3) + params[b, :9].reshape(3, 3)
        in_frame[:3, 3] = params[b, 9:] * h
        np.testing.assert_allclose(out[b], np.linalg.inv(to_frame) @ in_frame @ to_frame, atol=1e-10)
    # semantics: P[0, 0] = 0.1 stretches along the grid's i axis about the grid centre
    stretch = np.zeros((1, 12))
    stretch[0, 0] = 0.1
    stretch[0, 10] = 0.2  # and a translation along the j axis, in half extents
    a = affine_from_params(torch.as_tensor(stretch), grid)[0].numpy()
    for s in (-7.0, 3.0):
        moved = a @ np.r_[c + s * r[:, 0], 1]
        np.testing.assert_allclose(moved[:3], c + 1.1 * s * r[:, 0] + 0.2 * h * r[:, 1], atol=1e-10)
    assert half_extent_mm(grid) == pytest.approx(np.mean(np.asarray(grid.size) * grid.spacing) / 2)


def test_ddf_grid_to_lps_rotates_components(geometry):
    grid = make_grid(geometry, size=(4, 3, 2))
    ddf = torch.zeros(1, 3, 2, 3, 4, dtype=torch.float64)
    ddf[0, 1] = 2.0  # 2 mm along the grid's j axis everywhere
    out = ddf_grid_to_lps(ddf, grid)
    assert out.shape == (1, 2, 3, 4, 3)
    np.testing.assert_allclose(out[0, 1, 2, 3].numpy(), 2.0 * grid.direction_matrix[:, 1], atol=1e-12)


def test_initial_transform():
    fixed = centred_grid((10, 10, 10), (1, 1, 1), None, (0, 0, 0))
    moving = centred_grid((20, 12, 8), (0.5, 2, 3), None, (30, -10, 5))
    centers = initial_transform(fixed, moving, "centers")
    np.testing.assert_allclose(centers @ np.r_[fixed.center_lps, 1], np.r_[moving.center_lps, 1])
    np.testing.assert_allclose(centers[:3, :3], np.eye(3))
    np.testing.assert_array_equal(initial_transform(fixed, moving, "headers"), np.eye(4))
    with pytest.raises(ValueError, match="initial alignment"):
        initial_transform(fixed, moving, "moments")


def _affine(angle_deg=7.0, shift=(3.0, -2.0, 1.5), centre=(0.0, 0.0, 0.0)):
    """Rotation about x and scaling about ``centre``, then ``shift``."""
    a = np.deg2rad(angle_deg)
    out = np.eye(4)
    out[:3, :3] = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) @ np.diag([1.04, 0.97, 1.0])
    out[:3, 3] = np.asarray(shift) + centre - out[:3, :3] @ centre
    return out


def test_composition_equals_two_step_warp(geometry):
    """Warping by compose_ddf(A, u) == warp moving by A onto the fixed grid, then by u."""
    fixed = make_grid(geometry, size=(28, 24, 20))
    moving = centred_grid((36, 34, 30), (1.2, 1.2, 1.2), None, fixed.center_lps + np.array([2.0, 1.0, -1.0]))
    smooth = lambda p: 100 + 40 * torch.sin(p[..., 0] / 7) * torch.cos(p[..., 1] / 9) + 0.5 * p[..., 2]
    image = smooth(moving.points_lps(dtype=torch.float64))[None, None]
    points = fixed.points_lps(dtype=torch.float64)
    affine = torch.as_tensor(_affine(40.0, centre=fixed.center_lps))[None]
    bump = torch.exp(-((points - torch.as_tensor(fixed.center_lps)) ** 2).sum(-1, keepdim=True) / (2 * 8.0**2))
    local = (bump * torch.tensor([0.5, -0.5, 3.0], dtype=torch.float64))[None]

    step1 = sample(image, moving, transform_points(affine, points))  # moving -> fixed grid by A
    two_steps = sample(step1, fixed, points + local)  # then by the local field
    ddf = compose_ddf(affine, points, local)
    one_step = sample(image, moving, points + ddf)
    torch.testing.assert_close(transform_points(affine, points, local), points + ddf)

    exact = smooth(transform_points(affine, points, local))[:, None]
    inside = torch.zeros_like(exact, dtype=torch.bool)
    inside[..., 3:-3, 3:-3, 3:-3] = True
    inside &= sample(torch.ones_like(image), moving, points + ddf) > 0.999
    valid1 = sample(torch.ones_like(image), moving, transform_points(affine, points))
    inside &= sample(valid1, fixed, points + local) > 0.999
    assert inside.float().mean() > 0.3
    assert (one_step - exact)[inside].abs().max() < 0.5  # trilinear error on a smooth image
    assert (two_steps - one_step)[inside].abs().max() < 1.0  # interpolating twice
    # the other order (affine first, local field in moving space) is clearly different
    wrong = sample(image, moving, transform_points(affine, points) + local)
    assert (wrong - exact)[inside].abs().max() > 4 * (two_steps - one_step)[inside].abs().max()


def test_jacobian_of_affine_and_identity(geometry):
    grid = make_grid(geometry, size=(9, 8, 7))
    points = grid.points_lps(dtype=torch.float64)[None]
    affine = torch.as_tensor(_affine(20.0))[None] @ torch.as_tensor(np.diag([1.3, 0.8, 1.1, 1.0]))[None]
    det = jacobian_determinant(compose_ddf(affine, points), grid)
    assert det.shape == (1, 5, 6, 7)
    torch.testing.assert_close(det, torch.full_like(det, float(np.linalg.det(affine[0, :3, :3].numpy()))))
    ones = jacobian_determinant(torch.zeros_like(points), grid)
    torch.testing.assert_close(ones, torch.ones_like(ones))
    with pytest.raises(ValueError, match="at least 3"):
        jacobian_determinant(torch.zeros(1, 2, 5, 5, 3), grid)


def test_jacobian_detects_folding(geometry):
    grid = make_grid(geometry, size=(30, 24, 20))
    points = grid.points_lps(dtype=torch.float64)
    e = torch.as_tensor(grid.direction_matrix[:, 0] + grid.direction_matrix[:, 2]) / np.sqrt(2)
    offset = ((points - torch.as_tensor(grid.center_lps)) ** 2).sum(-1, keepdim=True)
    field = 15.0 * torch.exp(-offset / (2 * 4.0**2)) * e  # slope 15 / 4 * e^-0.5 > 1: folds
    det = jacobian_determinant(field[None], grid)
    assert det.min() < -0.5
    far = offset[1:-1, 1:-1, 1:-1, 0] > 18.0**2
    assert far.any() and (det[0][far] - 1).abs().max() < 0.01  # far from the bump: no deformation


@pytest.mark.parametrize("kind", ["scaling", "sine"])
def test_jacobian_is_physical(geometry, kind):
    """The same physical field gives the same determinant on any grid (analytic reference)."""
    grid = make_grid(geometry, size=(36, 30, 24))
    points = grid.points_lps(dtype=torch.float64)
    if kind == "scaling":
        scale = torch.tensor([1.1, 0.9, 1.2], dtype=torch.float64)
        field = (points - torch.as_tensor(grid.center_lps)) * (scale - 1)
        expected = torch.full(points.shape[:3], float(scale.prod()), dtype=torch.float64)
    else:  # d(x) = a sin(k.x) w  ->  det = 1 + a cos(k.x) (k.w)
        k = torch.tensor([0.05, -0.08, 0.06], dtype=torch.float64)
        w = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
        field = 4.0 * torch.sin(points @ k)[..., None] * w
        expected = 1 + 4.0 * torch.cos(points @ k) * (k @ w)
    det = jacobian_determinant(field[None], grid)[0]
    torch.testing.assert_close(det, expected[1:-1, 1:-1, 1:-1], atol=2e-3, rtol=0)


def test_lps_ras_helpers():
    rng = np.random.default_rng(3)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rng.normal(size=(3, 3)), rng.normal(size=3)
    ras = matrix_lps_to_ras(m)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    p_lps = np.r_[rng.normal(size=3), 1]
    np.testing.assert_allclose(ras @ (flip @ p_lps), flip @ (m @ p_lps))  # same point map in RAS
    np.testing.assert_allclose(matrix_ras_to_lps(ras), m)
    vectors = rng.normal(size=(2, 4, 3)).astype(np.float32)
    original = vectors.copy()
    out = vectors_lps_to_ras(vectors)
    assert out.dtype == np.float32 and out.shape == vectors.shape
    np.testing.assert_array_equal(out[..., :2], -original[..., :2])
    np.testing.assert_array_equal(out[..., 2], original[..., 2])
    np.testing.assert_array_equal(vectors, original)  # input untouched


@pytest.mark.parametrize("kind", ["iso_axis", "aniso_oblique"])
def test_phantom_truth_is_recovered_by_the_geometry(phantom, dice_score, kind):
    """Warping the moving labels with the true transform reproduces the (analytic) fixed labels."""
    pair = phantom(kind, seed=1)
    grid = pair.fixed.grid
    points = grid.points_lps(dtype=torch.float64)
    through_parts = transform_points(torch.as_tensor(pair.true_affine_lps)[None], points,
                                     torch.as_tensor(pair.local_ddf_lps, dtype=torch.float64)[None])
    torch.testing.assert_close(through_parts[0] - points, torch.as_tensor(pair.true_ddf_lps, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    labels = torch.as_tensor(pair.moving_labels.array, dtype=torch.float64)[None]
    warped = sample(labels, pair.moving.grid, points + torch.as_tensor(pair.true_ddf_lps, dtype=torch.float64))[0]
    warped, fixed = warped.numpy(), pair.fixed_labels.array
    assert dice_score(warped[0], fixed[0]) > 0.95
    # each landmark's centroid, in fixed voxel units along the fixed grid axes
    to_voxels = np.linalg.inv(grid.direction_matrix @ np.diag(grid.spacing))
    flat = points.reshape(-1, 3).numpy()
    for c in range(1, fixed.shape[0]):
        assert fixed[c].sum() >= 10
        ours = (warped[c].reshape(-1, 1) * flat).sum(0) / warped[c].sum()
        truth = (fixed[c].reshape(-1, 1) * flat).sum(0) / fixed[c].sum()
        assert np.abs(to_voxels @ (ours - truth)).max() < 0.5, c
    # the initial "centers" alignment is clearly off: this is what registration has to fix
    centre_only = sample(labels, pair.moving.grid, transform_points(
        torch.as_tensor(initial_transform(grid, pair.moving.grid))[None], points))[0].numpy()
    assert dice_score(centre_only[0], fixed[0]) < 0.9


def test_linear_params_do_not_depend_on_the_grid_sampling():
    """The linear part acts about the grid centre whatever the voxel size; the translation is in
    units of the half extent."""
    a = Grid((20, 20, 20), (1.5, 1.5, 1.5), (0, 0, 0))
    b = centred_grid((30, 30, 30), (1.0, 1.0, 1.0), None, a.center_lps)
    params = torch.zeros(1, 12, dtype=torch.float64)
    params[0, 3] = 0.05
    np.testing.assert_allclose(affine_from_params(params, a), affine_from_params(params, b), atol=1e-12)
    params[0, 9] = 0.1
    moved_a = affine_from_params(params, a)[0].numpy() @ np.r_[a.center_lps, 1]
    np.testing.assert_allclose(moved_a[:3] - a.center_lps, [0.1 * 15.0, 0, 0], atol=1e-12)

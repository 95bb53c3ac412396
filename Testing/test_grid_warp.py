"""Grid geometry and physical sampling, checked against SimpleITK and analytic values."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from labelreg.grid import Grid
from labelreg.phantom import centred_grid
from labelreg.transforms import transform_points
from labelreg.warp import lps_to_normalized, sample, sample_field


def make_grid(geometry, size=(11, 9, 7), origin=(-31.5, 12.25, 80.0)):
    spacing, direction = geometry
    return Grid(size, spacing, origin, np.asarray(direction).ravel())


def index_points(grid, ijk):
    """LPS positions of continuous indices (N, 3), float64 numpy."""
    m = grid.index_to_lps
    return np.asarray(ijk, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]


def smooth_image(points):
    """A smooth non-linear function of LPS position (mm)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return 100 + 0.8 * x - 0.5 * y + 0.3 * z + 20 * np.sin(x / 9.0) * np.cos(y / 11.0 + z / 13.0)


def test_points_lps_match_simpleitk(geometry, to_sitk):
    grid = make_grid(geometry)
    image = to_sitk(np.zeros(grid.shape_zyx), grid)
    points = grid.points_lps(dtype=torch.float64).numpy()
    assert points.shape == grid.shape_zyx + (3,)
    rng = np.random.default_rng(0)
    for _ in range(25):
        k, j, i = (int(rng.integers(n)) for n in grid.shape_zyx)
        expected = image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
        np.testing.assert_allclose(points[k, j, i], expected, atol=1e-9)
    # continuous (non-integer) indices through index_to_lps as well
    for ijk in rng.uniform(-1, 10, size=(10, 3)):
        expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in ijk))
        np.testing.assert_allclose(index_points(grid, ijk[None])[0], expected, atol=1e-9)
    # and back
    assert Grid.from_sitk(image).same_as(grid, tol=1e-9)
    np.testing.assert_allclose(grid.center_lps, points.reshape(-1, 3).mean(0), atol=1e-9)


def test_sample_at_own_points_is_identity(geometry):
    grid = make_grid(geometry)
    volume = torch.rand(2, 3, *grid.shape_zyx, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = sample(volume, grid, grid.points_lps(dtype=torch.float64))
    assert out.shape == volume.shape
    torch.testing.assert_close(out, volume, atol=1e-9, rtol=0)
    out32 = sample(volume.float(), grid, grid.points_lps())
    torch.testing.assert_close(out32, volume.float(), atol=1e-4, rtol=0)
    nearest = sample(volume, grid, grid.points_lps(dtype=torch.float64), mode="nearest")
    assert torch.equal(nearest, volume)


def test_sampling_a_linear_ramp_is_exact(geometry):
    grid = make_grid(geometry)
    a, b = np.array([0.7, -1.3, 2.2]), 5.0
    values = grid.points_lps(dtype=torch.float64).numpy() @ a + b
    volume = torch.as_tensor(values)[None, None]
    rng = np.random.default_rng(2)
    ijk = rng.uniform(0, np.asarray(grid.size) - 1, size=(4, 5, 6, 3))  # anywhere inside the lattice
    points = index_points(grid, ijk.reshape(-1, 3)).reshape(ijk.shape)
    out = sample(volume, grid, torch.as_tensor(points))[0, 0].numpy()
    np.testing.assert_allclose(out, points @ a + b, atol=1e-9)
    # points well outside the grid read the padding value
    far = torch.as_tensor(index_points(grid, [[-3.0, 4, 4], [4, 4, grid.size[2] + 2.0]]).reshape(1, 1, 2, 3))
    assert torch.all(sample(volume, grid, far) == 0)
    border = sample(volume, grid, far, padding_mode="border")[0, 0, 0, 0].numpy()
    np.testing.assert_allclose(border, index_points(grid, [[0, 4, 4], [4, 4, grid.size[2] - 1]]) @ a + b, atol=1e-9)


def test_sample_field_interpolates_an_affine_field_exactly_and_holds_its_border(geometry):
    """A displacement field on a (coarse) grid reaches other points: an affine field is exact
    inside the lattice; outside, the nearest border value (what the network grid's field
    gives just beyond the fixed image's extent)."""
    grid = make_grid(geometry)
    a = np.array([[0.1, -0.2, 0.05], [0.3, 0.0, -0.1], [-0.05, 0.15, 0.2]])
    shift = np.array([1.0, -2.0, 0.5])
    field = torch.as_tensor(grid.points_lps(dtype=torch.float64).numpy() @ a.T + shift)[None].repeat(2, 1, 1, 1, 1)
    rng = np.random.default_rng(3)
    ijk = rng.uniform(0, np.asarray(grid.size) - 1, size=(3, 4, 5, 3))
    points = index_points(grid, ijk.reshape(-1, 3)).reshape(ijk.shape)
    out = sample_field(field, grid, torch.as_tensor(points))
    assert out.shape == (2, 3, 4, 5, 3)
    np.testing.assert_allclose(out[1].numpy(), points @ a.T + shift, atol=1e-9)
    far = index_points(grid, [[-2.0, 3, 2], [3, 3, grid.size[2] + 4.0]]).reshape(1, 1, 2, 3)
    edge = index_points(grid, [[0, 3, 2], [3, 3, grid.size[2] - 1]])
    np.testing.assert_allclose(sample_field(field, grid, torch.as_tensor(far))[0, 0, 0].numpy(),
                               edge @ a.T + shift, atol=1e-9)
    with pytest.raises(ValueError, match="field_lps"):
        sample_field(field[..., :2], grid, torch.as_tensor(points))


def test_lps_to_normalized_corners(geometry):
    grid = make_grid(geometry)
    corners = np.array([[0, 0, 0], np.asarray(grid.size) - 1.0])
    coords = lps_to_normalized(torch.as_tensor(index_points(grid, corners)), grid).numpy()
    np.testing.assert_allclose(coords, [[-1, -1, -1], [1, 1, 1]], atol=1e-9)
    flat = Grid((5, 4, 1), geometry[0], (0, 0, 0), np.asarray(geometry[1]).ravel())
    coords = lps_to_normalized(torch.as_tensor(index_points(flat, [[4.0, 3.0, 0.0]])), flat).numpy()
    np.testing.assert_allclose(coords, [[1, 1, 0]], atol=1e-9)


@pytest.mark.parametrize("multiple", [1, 8])
def test_resampled_keeps_centre_direction_and_covers_extent(geometry, multiple):
    grid = make_grid(geometry, size=(37, 23, 19))
    net = grid.resampled(3.0, multiple)
    np.testing.assert_allclose(net.center_lps, grid.center_lps, atol=1e-9)
    np.testing.assert_allclose(net.direction, grid.direction)
    assert net.spacing == (3.0, 3.0, 3.0)
    assert all(n % multiple == 0 for n in net.size)
    assert np.all(net.extent_mm >= grid.extent_mm - 1e-9)
    assert np.all(net.extent_mm < grid.extent_mm + 3.0 * multiple + 1e-9)  # not needlessly large
    # the outer faces of the source voxels lie inside the outer faces of the new voxels
    lo, hi = np.full(3, -0.5), np.asarray(grid.size) - 0.5
    corners = np.array([[(lo, hi)[c >> a & 1][a] for a in range(3)] for c in range(8)])
    in_net = np.c_[index_points(grid, corners), np.ones(8)] @ net.lps_to_index.T
    assert np.all(in_net[:, :3] >= -0.5 - 1e-9) and np.all(in_net[:, :3] <= np.asarray(net.size) - 0.5 + 1e-9)
    with pytest.raises(ValueError):
        grid.resampled(0.0)


def test_sample_matches_simpleitk_resample(geometry, to_sitk):
    fixed = make_grid(geometry, size=(30, 26, 22), origin=(-20.0, -15.0, 10.0))
    # a larger moving grid around nearly the same centre, with a different (still oblique) direction
    moving = centred_grid((34, 40, 27), (1.1, 0.9, 1.3), np.asarray(geometry[1]).T, fixed.center_lps + [3, -2, 1])
    moving_array = smooth_image(moving.points_lps(dtype=torch.float64).numpy())
    angle = np.deg2rad(8.0)
    linear = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = linear @ np.diag([1.05, 0.95, 1.02])
    affine[:3, 3] = [2.0, -3.0, 4.5]

    transform = sitk.AffineTransform(3)
    transform.SetMatrix(affine[:3, :3].ravel().tolist())
    transform.SetTranslation(affine[:3, 3].tolist())
    expected = sitk.GetArrayFromImage(sitk.Resample(
        to_sitk(moving_array, moving), to_sitk(np.zeros(fixed.shape_zyx), fixed), transform,
        sitk.sitkLinear, 0.0, sitk.sitkFloat64))

    points = transform_points(torch.as_tensor(affine)[None], fixed.points_lps(dtype=torch.float64))
    ours = sample(torch.as_tensor(moving_array)[None, None], moving, points)[0, 0].numpy()
    # compare where the mapped point is at least one voxel inside the moving lattice
    index = np.c_[points[0].reshape(-1, 3).numpy(), np.ones(np.prod(fixed.shape_zyx))] @ moving.lps_to_index.T
    inside = np.all((index[:, :3] >= 1) & (index[:, :3] <= np.asarray(moving.size) - 2), axis=1)
    inside = inside.reshape(fixed.shape_zyx)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-6)
    # and the trilinear result is close to the analytic image (the warp is the right one)
    exact = smooth_image(points[0].numpy())
    assert np.abs(ours[inside] - exact[inside]).max() < 1.0


def test_sample_rejects_bad_shapes():
    grid = Grid((4, 5, 6), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match=r"\(6, 5, 4\)"):
        sample(torch.zeros(1, 1, 4, 5, 6), grid, grid.points_lps())
    with pytest.raises(ValueError, match="B, C"):
        sample(torch.zeros(6, 5, 4), grid, grid.points_lps())
    with pytest.raises(ValueError, match="points_lps"):
        sample(torch.zeros(1, 1, 6, 5, 4), grid, torch.zeros(6, 5, 4, 2))


def test_grid_validation():
    with pytest.raises(ValueError, match="orthonormal"):
        Grid((4, 4, 4), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 2, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="spacing"):
        Grid((4, 4, 4), (1, 0, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="size"):
        Grid((4, 0, 4), (1, 1, 1), (0, 0, 0))

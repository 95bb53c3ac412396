"""Shared fixtures: the two test geometries, cached phantoms and a numpy -> SimpleITK helper."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from labelreg.phantom import make_pair, rotation_matrix

torch.set_num_threads(1)

#: a rotation about a non-axis vector (every direction-matrix entry is non-zero)
OBLIQUE = rotation_matrix((0.3, -0.5, 0.8), np.deg2rad(35.0))
MOVING_OBLIQUE = rotation_matrix((-0.6, 0.2, 0.7), np.deg2rad(-20.0))
GEOMETRIES = {
    # name: (fixed spacing, fixed direction, moving spacing, moving direction)
    "iso_axis": ((1.5, 1.5, 1.5), np.eye(3), (1.5, 1.5, 1.5), np.eye(3)),
    "aniso_oblique": ((0.8, 1.3, 2.1), OBLIQUE, (1.1, 0.9, 1.7), MOVING_OBLIQUE),
}
FIXED_EXTENT_MM = np.array([60.0, 72.0, 54.0])
MOVING_EXTENT_MM = np.array([72.0, 72.0, 66.0])


@pytest.fixture(params=list(GEOMETRIES))
def geometry(request):
    """(spacing, direction) of the fixed grid, once isotropic axis-aligned, once anisotropic oblique."""
    spacing, direction, _, _ = GEOMETRIES[request.param]
    return spacing, direction


@pytest.fixture(scope="session")
def phantom():
    """``phantom(kind, seed, **kwargs)`` -> cached PhantomPair with the same physical extent for
    every geometry kind (do not modify the arrays)."""
    cache = {}

    def make(kind="iso_axis", seed=0, **kwargs):
        key = (kind, seed, tuple(sorted(kwargs.items())))
        if key not in cache:
            spacing, direction, moving_spacing, moving_direction = GEOMETRIES[kind]
            cache[key] = make_pair(
                seed,
                fixed_size=tuple(np.round(FIXED_EXTENT_MM / spacing).astype(int)),
                moving_size=tuple(np.round(MOVING_EXTENT_MM / moving_spacing).astype(int)),
                spacing=spacing, direction=direction,
                moving_spacing=moving_spacing, moving_direction=moving_direction, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def to_sitk():
    """``to_sitk(array (z, y, x), grid)`` -> a float64 SimpleITK image with that geometry."""
    def convert(array, grid):
        image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float64), isVector=False)
        grid.apply_to_sitk(image)
        return image

    return convert


def dice(a, b, threshold=0.5):
    a, b = np.asarray(a) > threshold, np.asarray(b) > threshold
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="session")
def dice_score():
    return dice


# ------------------------------------------------- headless Slicer (slicer-core)
@pytest.fixture(scope="module")
def slicer():
    """The ``slicer`` module of a headless application (Testing/slicer_bootstrap.py); skips the
    test where slicer-core is absent or broken."""
    try:
        import slicer_bootstrap

        return slicer_bootstrap.bootstrap()
    except ImportError as exc:
        pytest.skip(f"slicer-core is not available: {exc}")


@pytest.fixture(scope="module")
def module(slicer):
    """The LabelReg scripted module file (Module, Widget, Logic, Test)."""
    import LabelReg

    return LabelReg


@pytest.fixture(scope="module")
def nodes(slicer):
    """LabelRegLib.nodes: the scene <-> array adapters."""
    from LabelRegLib import nodes

    return nodes


@pytest.fixture
def clean_scene(slicer):
    """An empty scene before and after the test (color nodes kept)."""
    slicer.mrmlScene.Clear(0)
    yield
    slicer.mrmlScene.Clear(0)

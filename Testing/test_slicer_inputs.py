"""Bad volume nodes are refused by the LabelReg Logic with one line naming the node (headless
Slicer: slicer-core + Testing/slicer_bootstrap.py): no image data, fewer voxel values than the
extent, NaN voxels, and volumes Slicer loaded (zero-filled or NaN read as 0) from a bad NIfTI file.
"""

import numpy as np
import pytest
import SimpleITK as sitk

try:
    import slicer as _slicer_core  # noqa: F401  (pip install slicer-core)
except ImportError as exc:  # absent, or broken (e.g. a vtk it was not built against)
    pytest.skip(f"slicer-core is not available: {exc}", allow_module_level=True)
import vtk  # installed with slicer-core
from labelreg.errors import LabelRegError
from labelreg.io import write_image
from labelreg.model import RegistrationModel
from labelreg.model_io import save_model
from vtk.util import numpy_support

pytestmark = pytest.mark.usefixtures("clean_scene")  # slicer, module, nodes: conftest.py


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(save_model(tmp_path_factory.mktemp("model") / "model.pt", RegistrationModel()))


@pytest.fixture
def pair(phantom):
    return phantom("iso_axis", seed=6)


def add_volume(slicer, nodes, name, array, grid):
    return nodes.setVolumeArray(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name), array, grid)


def add_image(slicer, name, image):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    return node


def refused(module, fixed, moving, model_path, *needles):
    """The Logic's registration refuses the pair with one line holding every needle."""
    with pytest.raises(LabelRegError) as error:
        module.LabelRegLogic().register(fixed, moving, mode="affine", device="cpu", modelPath=model_path)
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, (needle, message)
    return message


def test_volume_without_image_data(slicer, module, nodes, pair, model_path):
    moving = add_volume(slicer, nodes, "MR", pair.moving.array, pair.moving.grid)
    no_image = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "TRUS without image")
    refused(module, no_image, moving, model_path, "TRUS without image", "no image data")
    no_scalars = vtk.vtkImageData()  # an extent but no voxel values
    no_scalars.SetDimensions(20, 20, 20)
    refused(module, add_image(slicer, "TRUS without scalars", no_scalars), moving, model_path,
            "TRUS without scalars", "no image data")


def test_extent_larger_than_its_voxel_values(slicer, module, nodes, pair, model_path):
    image = vtk.vtkImageData()
    image.SetExtent(0, 19, 0, 19, 0, 19)
    values = np.random.default_rng(0).random(1000).astype(np.float32)  # a 10x10x10 block's worth
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values, deep=True))
    fixed = add_volume(slicer, nodes, "TRUS", pair.fixed.array, pair.fixed.grid)
    refused(module, fixed, add_image(slicer, "short MR", image), model_path,
            "short MR", "1000 voxel values", "20x20x20", "8000 voxels")


def test_nan_voxels_in_the_scene(slicer, module, nodes, pair, model_path):
    array = pair.fixed.array.copy()
    array[3, 4, 5] = np.nan
    fixed = add_volume(slicer, nodes, "TRUS with NaN", array, pair.fixed.grid)
    moving = add_volume(slicer, nodes, "MR", pair.moving.array, pair.moving.grid)
    refused(module, fixed, moving, model_path, "TRUS with NaN", "NaN")


def test_volumes_loaded_from_bad_nifti_files(slicer, module, nodes, pair, model_path, tmp_path):
    """Slicer's reader zero-fills a truncated .nii.gz and reads NaN as 0; the file is checked."""
    moving = add_volume(slicer, nodes, "MR", pair.moving.array, pair.moving.grid)
    truncated = write_image(tmp_path / "truncated.nii.gz", pair.fixed.array, pair.fixed.grid)
    truncated.write_bytes(truncated.read_bytes()[:-2000])
    loaded = slicer.util.loadVolume(str(truncated), {"name": "cut TRUS"})
    assert (slicer.util.arrayFromVolume(loaded) == 0).any()  # Slicer alone would register it
    refused(module, loaded, moving, model_path, "cut TRUS", truncated, "truncated")

    array = pair.fixed.array.copy()
    array[3, 4, 5] = np.nan
    with_nan = write_image(tmp_path / "nan.nii.gz", array, pair.fixed.grid)
    loaded = slicer.util.loadVolume(str(with_nan), {"name": "NaN TRUS"})
    assert slicer.util.arrayFromVolume(loaded)[3, 4, 5] == 0
    refused(module, loaded, moving, model_path, "NaN TRUS", with_nan, "NaN")
    slicer.util.updateVolumeFromArray(loaded, pair.fixed.array)  # fixed in the scene: the file no longer counts
    assert np.isfinite(nodes.volumeFromNode(loaded).array).all()


def test_normal_volumes_still_register(slicer, module, nodes, pair, model_path, tmp_path):
    clean = write_image(tmp_path / "trus.nii.gz", pair.fixed.array, pair.fixed.grid)
    assert sitk.ReadImage(str(clean)).GetPixelID() == sitk.sitkFloat32  # a float file: its voxels are checked
    fixed = slicer.util.loadVolume(str(clean), {"name": "TRUS"})
    moving = add_volume(slicer, nodes, "MR", pair.moving.array, pair.moving.grid)
    outputs = module.LabelRegLogic().register(fixed, moving, mode="affine", device="cpu", modelPath=model_path)
    assert outputs.transformNode is not None
    np.testing.assert_allclose(outputs.outcome.result.fixed_grid.spacing, pair.fixed.grid.spacing, rtol=1e-6)

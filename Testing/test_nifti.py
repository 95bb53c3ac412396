"""NIfTI outputs written a slab at a time: the files SimpleITK reads are the images SimpleITK
itself would write (same voxels, pixel type and geometry, in every storage), slabs in any
order and size give the same file, a failed write leaves nothing behind, and the command
line's outputs equal the in-memory registration's while never holding them whole."""
import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from labelreg import io as lio
from labelreg import nifti
from labelreg.engine import RegistrationEngine
from labelreg.errors import LabelRegError
from labelreg.grid import Grid
from labelreg.model import RegistrationModel


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


DIRECTIONS = {
    "identity": np.eye(3),
    "dataset": np.diag([-1.0, -1.0, 1.0]),
    "permuted_flipped": np.eye(3)[:, [2, 0, 1]] * [1, -1, 1],
    "oblique": rotation([0.3, -0.2, 0.9], 25),
    "oblique_left_handed": rotation([1, 1, 0], 140) @ np.diag([1, 1, -1.0]),
    "half_turn": rotation([0, 0, 1], 180),
}
RNG = np.random.default_rng(0)
ARRAYS = {
    "float32": RNG.normal(size=(4, 5, 7)).astype(np.float32),
    "uint8": RNG.integers(0, 256, (4, 5, 7)).astype(np.uint8),
    "int16": RNG.integers(-900, 900, (4, 5, 7)).astype(np.int16),
}


def sitk_image(array, grid, kind):
    if kind == "channels":
        image = sitk.GetImageFromArray(array, isVector=False)
        direction = np.eye(4)
        direction[:3, :3] = grid.direction_matrix
        image.SetSpacing(grid.spacing + (1.0,))
        image.SetOrigin(grid.origin + (0.0,))
        image.SetDirection(direction.ravel().tolist())
        return image
    image = sitk.GetImageFromArray(array, isVector=kind == "vector")
    grid.apply_to_sitk(image)
    return image


def assert_same_image(path, reference):
    ours, theirs = sitk.ReadImage(str(path)), sitk.ReadImage(str(reference))
    assert ours.GetPixelIDTypeAsString() == theirs.GetPixelIDTypeAsString()
    assert ours.GetSize() == theirs.GetSize()
    for name in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(ours, name)(), getattr(theirs, name)(), atol=1e-6, err_msg=name)
    with gzip.open(path) as a, gzip.open(reference) as b:  # the voxels, byte for byte
        assert a.read()[nifti.VOX_OFFSET:] == b.read()[nifti.VOX_OFFSET:]


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_files_are_what_simpleitk_writes(tmp_path, direction):
    grid = Grid((7, 5, 4), (0.7, 1.1, 2.0), (10.5, -20.25, 3.0), DIRECTIONS[direction].ravel())
    cases = [(name, array, "scalar", lio.write_image) for name, array in ARRAYS.items()]
    cases += [("labels_3", RNG.random((3, 4, 5, 7)).astype(np.float32), "channels", lio.write_labels),
              ("labels_1", RNG.random((1, 4, 5, 7)).astype(np.float32), "channels", lio.write_labels),
              ("ddf", RNG.normal(size=(4, 5, 7, 3)), "vector", lio.write_displacement)]
    for name, array, kind, write in cases:
        ours = write(tmp_path / f"{name}.nii.gz", array, grid)
        reference = tmp_path / f"{name}_sitk.nii.gz"
        sitk.WriteImage(sitk_image(array, grid, kind), str(reference), useCompression=True)
        assert_same_image(ours, reference)
    with gzip.open(tmp_path / "labels_1.nii.gz") as f:  # one channel is kept 4-D, as SimpleITK writes it
        assert np.frombuffer(f.read(nifti.VOX_OFFSET), nifti.HEADER, count=1)["dim"][0][:5].tolist() == [4, 7, 5, 4, 1]


def test_slabs_in_any_order_make_the_same_file(tmp_path):
    grid = Grid((6, 5, 9), (1.0, 1.0, 1.5), (0, 0, 0), DIRECTIONS["oblique"].ravel())
    ddf = RNG.normal(size=(9, 5, 6, 3))
    whole = lio.write_displacement(tmp_path / "whole.nii.gz", ddf, grid)
    with lio.displacement_writer(tmp_path / "slabs.nii", grid) as out:  # uncompressed too
        for k0, k1 in ((4, 9), (0, 1), (1, 4)):
            out.write(k0, ddf[k0:k1])
    with gzip.open(whole) as f:
        assert f.read() == (tmp_path / "slabs.nii").read_bytes()


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    grid = Grid((6, 5, 9), (1.0, 1.0, 1.5), (0, 0, 0))
    with pytest.raises(ValueError, match="does not fit"), lio.labels_writer(tmp_path / "l.nii.gz", grid, 2) as out:
        out.write(0, np.zeros((2, 3, 5, 6), np.float32))
        out.write(7, np.zeros((2, 3, 5, 6), np.float32))  # past the last slice
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LabelRegError, match=r"d\.nrrd: labels and displacement fields are written as NIfTI"):
        lio.displacement_writer(tmp_path / "d.nrrd", grid)


def test_command_line_outputs_are_streamed_and_equal_the_in_memory_result(phantom, tmp_path, monkeypatch):
    """``register_to_folder`` writes the outputs slab by slab (never holding them) and they are
    exactly the engine's in-memory outputs; the QC picture of a finer image is drawn on 1 mm."""
    from labelreg import batch
    from labelreg import engine as engine_module

    pair = phantom("aniso_oblique", seed=3)
    engine = RegistrationEngine(RegistrationModel().eval(), device="cpu")
    held = engine.register(pair.fixed, pair.moving, pair.moving_labels)
    nx, ny, _ = pair.fixed.grid.size
    monkeypatch.setattr(engine_module, "SLAB_VOXELS", 2 * nx * ny)
    outcome = batch.register_to_folder(engine, pair.fixed, pair.moving, pair.moving_labels, tmp_path, "deformable")
    assert outcome["result"].ddf_lps is None and outcome["result"].warped_labels is None  # nothing held
    paths = outcome["paths"]
    read = {key: sitk.GetArrayFromImage(sitk.ReadImage(str(paths[key])))
            for key in ("warped_moving", "warped_labels", "displacement")}
    np.testing.assert_array_equal(read["warped_moving"], held.warped_moving)
    np.testing.assert_array_equal(read["warped_labels"], held.warped_labels)
    np.testing.assert_array_equal(read["displacement"], held.ddf_lps.astype(np.float64))
    qc = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["qc"])))
    assert qc.ndim == 3 and qc.shape[2] == 3


def test_qc_of_a_fine_image_is_drawn_on_a_coarser_grid(phantom, tmp_path):
    from labelreg import batch
    from labelreg.storage import resampled_on, respaced_grid

    pair = phantom("iso_axis", seed=4)
    fine_grid = respaced_grid(pair.fixed.grid, (0.5, 0.5, 0.5))
    fixed = resampled_on(pair.fixed, fine_grid)
    engine = RegistrationEngine(RegistrationModel().eval(), device="cpu")
    coarse = batch.register_to_folder(engine, pair.fixed, pair.moving, pair.moving_labels, tmp_path / "a", "affine")
    fine = batch.register_to_folder(engine, fixed, pair.moving, pair.moving_labels, tmp_path / "b", "affine")
    shape = {name: sitk.ReadImage(str(o["paths"]["qc"])).GetSize() for name, o in (("coarse", coarse), ("fine", fine))}
    assert shape["fine"][0] < 1.5 * shape["coarse"][0], shape  # not 3x wider, as a 0.5 mm picture would be

"""Every bad input to the command line ends as one clear line naming the file, and a non-zero
exit code, never a traceback."""
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from labelreg import cli, io
from labelreg.model import ModelConfig, RegistrationModel
from labelreg.model_io import save_model, sidecar_path
from labelreg.phantom import make_pair, write_pair


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("io_errors")
    paths = write_pair(make_pair(seed=2, fixed_size=(24, 28, 20), moving_size=(28, 28, 24)), root / "data", "c0")
    return {"root": root, "model": save_model(root / "m.pt", RegistrationModel()), **paths}


def write(path, array, spacing=None, origin=None):
    image = sitk.GetImageFromArray(array)
    if spacing:
        image.SetSpacing(spacing)
    if origin:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def register(good, tmp_path, capsys, **overrides):
    options = {"fixed": good["fixed_images"], "moving": good["moving_images"],
               "moving-labels": good["moving_labels"], "model": good["model"], "output-dir": tmp_path / "out"}
    options.update(overrides)
    argv = ["register", "--device", "cpu"]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    code = cli.main(argv)
    _, err = capsys.readouterr()
    return code, err


def assert_one_line(code, err, *needles):
    assert code != 0
    assert err.startswith("labelreg: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in err, (needle, err)


def test_good_inputs_pass(good, tmp_path, capsys):
    code, err = register(good, tmp_path, capsys)
    assert code == 0, err


def test_missing_file(good, tmp_path, capsys):
    missing = tmp_path / "nope.nii.gz"
    assert_one_line(*register(good, tmp_path, capsys, fixed=missing), missing, "not found")


def test_garbage_bytes(good, tmp_path, capsys):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    assert_one_line(*register(good, tmp_path, capsys, moving=junk), junk, "cannot be read")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_truncated_file(good, tmp_path, capsys, suffix):
    # ITK's NIfTI reader silently zero-fills a short file: labelreg.io must notice
    cut = tmp_path / f"cut{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(good["fixed_images"])), str(cut))
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert_one_line(*register(good, tmp_path, capsys, fixed=cut), cut)


def test_2d_image(good, tmp_path, capsys):
    flat = write(tmp_path / "flat.nii.gz", np.random.default_rng(0).random((30, 40)).astype(np.float32))
    assert_one_line(*register(good, tmp_path, capsys, fixed=flat), flat, "3-D")


def test_4d_image_as_fixed(good, tmp_path, capsys):
    assert_one_line(*register(good, tmp_path, capsys, fixed=good["fixed_labels"]), good["fixed_labels"], "3-D")


def test_labels_on_another_grid(good, tmp_path, capsys):
    code, err = register(good, tmp_path, capsys, **{"moving-labels": good["fixed_labels"]})
    assert_one_line(code, err, good["fixed_labels"], "does not match")


def test_empty_label_channel(good, tmp_path, capsys):
    labels = sitk.ReadImage(str(good["moving_labels"]))
    array = sitk.GetArrayFromImage(labels)
    array[2] = 0
    empty = tmp_path / "empty.nii.gz"
    image = sitk.GetImageFromArray(array, isVector=False)
    image.CopyInformation(labels)
    sitk.WriteImage(image, str(empty))
    assert_one_line(*register(good, tmp_path, capsys, **{"moving-labels": empty}), empty, "[2] are empty")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])  # NaN survives ITK here; NIfTI: see below
def test_nan_image(good, tmp_path, capsys, suffix):
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(good["moving_images"]))).astype(np.float32)
    array[3, 4, 5] = np.nan
    bad = write(tmp_path / f"nan{suffix}", array)
    assert_one_line(*register(good, tmp_path, capsys, moving=bad, **{"moving-labels": None}), bad, "NaN")


def test_constant_image(good, tmp_path, capsys):
    bad = write(tmp_path / "constant.nii.gz", np.full((20, 20, 20), 7, np.uint8))
    assert_one_line(*register(good, tmp_path, capsys, fixed=bad), bad, "constant")


def test_absurd_size_header_refused_before_reading(good, tmp_path, capsys):
    header = tmp_path / "huge.mha"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 5000 5000 5000\nElementSpacing = 1 1 1\n"
                      "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    assert_one_line(*register(good, tmp_path, capsys, fixed=header), header, "too large")
    nrrd = tmp_path / "huge.nrrd"  # attached header, no data at all
    nrrd.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 5000 5000 5000\nendian: little\nencoding: raw\n\n")
    assert_one_line(*register(good, tmp_path, capsys, moving=nrrd), nrrd, "too large")


def test_absurd_physical_extent(good, tmp_path, capsys):
    array = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    bad = write(tmp_path / "metres.nii.gz", array, spacing=(800.0, 800.0, 800.0))
    assert_one_line(*register(good, tmp_path, capsys, fixed=bad), bad, "network grid")


def _copy_model(good, tmp_path):
    pt = tmp_path / "copy.pt"
    pt.write_bytes(good["model"].read_bytes())
    sidecar_path(pt).write_text(sidecar_path(good["model"]).read_text())
    return pt


def test_tampered_weights(good, tmp_path, capsys):
    pt = _copy_model(good, tmp_path)
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    assert_one_line(*register(good, tmp_path, capsys, model=pt), pt, "sha256")


def test_missing_sidecar(good, tmp_path, capsys):
    pt = _copy_model(good, tmp_path)
    sidecar_path(pt).unlink()
    assert_one_line(*register(good, tmp_path, capsys, model=pt), sidecar_path(pt), "sidecar")


def test_weights_of_another_architecture(good, tmp_path, capsys):
    model = RegistrationModel(ModelConfig(local_net={"base_channels": 8, "levels": 3}))
    model.config = ModelConfig()  # claims the default architecture, holds other weights
    pt = save_model(tmp_path / "other.pt", model)
    assert_one_line(*register(good, tmp_path, capsys, model=pt), pt, "do not match the architecture")


def test_not_a_model_file(good, tmp_path, capsys):
    pt = tmp_path / "fake.pt"
    pt.write_bytes(b"definitely not a checkpoint")
    meta = json.loads(sidecar_path(good["model"]).read_text())
    from labelreg.model_io import sha256_of
    meta["sha256"] = sha256_of(pt)
    sidecar_path(pt).write_text(json.dumps(meta))
    assert_one_line(*register(good, tmp_path, capsys, model=pt), pt, "not a readable")


def test_bad_options(good, tmp_path, capsys):
    assert_one_line(*register(good, tmp_path, capsys, threads=0), "--threads")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_one_line(*register(good, tmp_path, capsys, **{"output-dir": blocker / "sub"}), blocker)


def test_label_channel_count_mismatch(good, tmp_path, capsys):
    labels = sitk.ReadImage(str(good["fixed_labels"]))
    fewer = tmp_path / "fewer.nii.gz"
    sitk.WriteImage(labels[:, :, :, :2], str(fewer))
    code, err = register(good, tmp_path, capsys, **{"fixed-labels": fewer})
    assert_one_line(code, err, fewer, "channels")


def test_evaluate_grid_mismatch(good, tmp_path, capsys):
    code = cli.main(["evaluate", "--warped-labels", str(good["moving_labels"]), "--fixed-labels",
                     str(good["fixed_labels"])])
    assert_one_line(code, capsys.readouterr()[1], good["moving_labels"], "grid")


# ITK's NIfTI reader turns NaN and inf into 0 (an all-NaN file looked "constant 0.0"):
# labelreg.io reads the raw voxels of floating-point .nii/.nii.gz files itself
def moving_array(good, dtype=np.float32):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(good["moving_images"]))).astype(dtype)


def nifti1_bytes(array: np.ndarray, endian: str) -> bytes:
    """A minimal single-file NIfTI-1 (float32, 1.5 mm voxels, identity qform) in either byte order."""
    head = bytearray(352)  # 348-byte header + 4-byte extension flag; the voxels start at 352
    struct.pack_into(endian + "i", head, 0, 348)
    struct.pack_into(endian + "8h", head, 40, 3, *array.shape[::-1], 1, 1, 1, 1)
    struct.pack_into(endian + "2h", head, 70, 16, 32)  # datatype FLOAT32, bitpix
    struct.pack_into(endian + "8f", head, 76, 1, 1.5, 1.5, 1.5, 1, 1, 1, 1)  # pixdim
    struct.pack_into(endian + "2f", head, 108, 352, 1)  # vox_offset, scl_slope
    struct.pack_into(endian + "h", head, 252, 1)  # qform_code
    head[344:348] = b"n+1\0"
    return bytes(head) + array.astype(endian + "f4").tobytes()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_voxels_in_nifti(good, tmp_path, capsys, suffix):
    array = moving_array(good)
    array[3, 4, 5:9] = np.nan
    bad = write(tmp_path / f"nan{suffix}", array)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(bad)))[3, 4, 5] == 0  # what ITK alone would register
    assert_one_line(*register(good, tmp_path, capsys, moving=bad, **{"moving-labels": None}), bad, "NaN", "4 of")


def test_all_nan_nifti_is_not_called_constant(good, tmp_path, capsys):
    bad = write(tmp_path / "all_nan.nii.gz", np.full((20, 20, 20), np.nan, np.float32))
    code, err = register(good, tmp_path, capsys, fixed=bad)
    assert_one_line(code, err, bad, "NaN", "8000 of 8000")
    assert "constant" not in err


def test_infinite_voxel_in_float64_nifti(good, tmp_path, capsys):
    array = moving_array(good, np.float64)
    array[-1, -1, -1] = -np.inf
    bad = write(tmp_path / "inf.nii.gz", array)
    assert_one_line(*register(good, tmp_path, capsys, moving=bad, **{"moving-labels": None}), bad, "NaN or infinite")


def test_nan_in_4d_labels(good, tmp_path, capsys):
    labels = sitk.ReadImage(str(good["moving_labels"]))
    array = sitk.GetArrayFromImage(labels).astype(np.float64)  # (C, z, y, x)
    array[1, 2, 3, 4] = np.nan
    image = sitk.GetImageFromArray(array, isVector=False)
    image.CopyInformation(labels)
    bad = tmp_path / "nan_labels.nii.gz"
    sitk.WriteImage(image, str(bad))
    assert_one_line(*register(good, tmp_path, capsys, **{"moving-labels": bad}), bad, "NaN")


def test_big_endian_nifti(good, tmp_path, capsys):
    array = np.random.default_rng(1).random((12, 14, 10)).astype(np.float32)
    clean = tmp_path / "big_endian.nii"
    clean.write_bytes(nifti1_bytes(array, ">"))
    volume = io.read_image(clean)  # the crafted header is a real NIfTI file: same voxels, same spacing
    np.testing.assert_array_equal(volume.array, array)
    assert volume.grid.spacing == (1.5, 1.5, 1.5)
    array[5, 6, 7] = np.nan
    bad = tmp_path / "big_endian_nan.nii.gz"
    bad.write_bytes(gzip.compress(nifti1_bytes(array, ">")))
    assert_one_line(*register(good, tmp_path, capsys, fixed=bad), bad, "NaN", "1 of")


def test_integer_nifti_passes_without_reading_the_voxels_twice(good, tmp_path, capsys, monkeypatch):
    array = moving_array(good)
    as_uint8 = np.round(255 * (array - array.min()) / (array.max() - array.min())).astype(np.uint8)
    image = sitk.GetImageFromArray(as_uint8)
    image.CopyInformation(sitk.ReadImage(str(good["moving_images"])))
    moving = tmp_path / "uint8.nii.gz"
    sitk.WriteImage(image, str(moving))

    scanned = []
    real_scan = io._check_nifti_finite
    monkeypatch.setattr(io, "_check_nifti_finite", lambda path, *a: scanned.append(path) or real_scan(path, *a))
    code, err = register(good, tmp_path, capsys, moving=moving)
    assert code == 0, err
    assert sorted(scanned) == sorted(Path(good[key]) for key in ("fixed_images", "moving_labels"))  # float32 files

"""Every bad input to the command line ends as one clear line naming the file, and a non-zero
exit code, never a traceback."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from labelreg import cli
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


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])  # ITK's NIfTI writer turns NaN into 0
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

"""The public data-folder layout, read in one place: pairs by name in any image format, a
pair's missing file named with its folder, and complete data sets for training."""
import numpy as np
import pytest
from labelreg.errors import LabelRegError
from labelreg.layout import FOLDERS, complete_pairs, data_pairs, stem
from labelreg.phantom import make_pair, write_pair


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for index in range(2):
        write_pair(make_pair(seed=index), root, f"case{index}")
    return root


def test_pairs_are_read_by_name_with_all_their_files(folder):
    pairs = data_pairs(folder)
    assert [p.name for p in pairs] == ["case0", "case1"] and all(not p.missing for p in pairs)
    fixed, moving, moving_labels, fixed_labels = pairs[1].read()
    assert fixed.grid.same_as(fixed_labels.grid) and moving.grid.same_as(moving_labels.grid)
    assert moving_labels.channels.shape[0] == fixed_labels.channels.shape[0]
    assert complete_pairs(folder) == pairs


def test_other_image_formats_and_optional_label_folders(tmp_path):
    import SimpleITK as sitk

    pair = make_pair(seed=3, fixed_size=(20, 24, 18), moving_size=(24, 24, 22))
    for sub, volume in (("fixed_images", pair.fixed), ("moving_images", pair.moving)):
        (tmp_path / sub).mkdir()
        image = sitk.GetImageFromArray(volume.array)
        volume.grid.apply_to_sitk(image)
        sitk.WriteImage(image, str(tmp_path / sub / "p.nrrd"))
    (tmp_path / "fixed_images" / "notes.txt").write_text("not an image")
    [files] = data_pairs(tmp_path)
    assert files.name == "p" and set(files.paths) == {"fixed_images", "moving_images"}
    fixed, _, moving_labels, fixed_labels = files.read()
    assert moving_labels is None and fixed_labels is None
    np.testing.assert_array_equal(fixed.array, pair.fixed.array.astype(np.float32))
    with pytest.raises(LabelRegError, match="no fixed_labels/, moving_labels/ folder; expected the public layout"):
        complete_pairs(tmp_path)
    assert stem("a/b/c.nii.gz") == "c" and stem("c.mha") == "c"


def test_a_missing_file_is_named_with_its_folder(folder, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    (data / "moving_labels" / "case1.nii.gz").unlink()
    first, second = data_pairs(data)
    assert first.read()[2] is not None  # the other pair still reads (a batch goes on)
    with pytest.raises(LabelRegError, match=r"moving_labels: no file for pair case1$"):
        second.read()
    with pytest.raises(LabelRegError, match=r"moving_labels: no file for pair case1$"):
        complete_pairs(data)
    shutil.rmtree(data / "moving_images")
    with pytest.raises(LabelRegError, match=r"no moving_images/ folder"):
        data_pairs(data)
    assert FOLDERS[0] == "fixed_images"

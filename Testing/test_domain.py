"""Inputs far from the bundled model's training domain register with a one-line warning (command
line, batch CSV, Slicer summary); inputs for which a result would be meaningless are refused."""
from dataclasses import replace

import numpy as np
import pytest
from labelreg import cli, resources, storage
from labelreg.domain import check_input
from labelreg.engine import RegistrationEngine
from labelreg.errors import LabelRegError
from labelreg.grid import Grid
from labelreg.io import read_image, read_labels, write_image
from labelreg.model_io import read_metadata
from labelreg.volume import Volume


@pytest.fixture(scope="module")
def engine():
    return RegistrationEngine(resources.BUNDLED_MODEL_FILE, "cpu")


@pytest.fixture(scope="module")
def pair():
    fixed = read_image(resources.sample_pair_file("fixed_images"))
    moving = read_image(resources.sample_pair_file("moving_images"))
    return fixed, moving, read_labels(resources.sample_pair_file("moving_labels"), moving.grid)


def test_the_bundled_model_records_its_training_domain_and_frame():
    metadata = read_metadata(resources.BUNDLED_MODEL_FILE)
    domain = metadata["training_domain"]
    assert domain["frame_direction_lps"] == metadata["config"]["frame_direction_lps"]
    assert domain["fixed"]["field_mm"] == metadata["config"]["fixed_field_mm"] == [70.5, 94.5, 66.0]
    assert domain["moving"]["spacing_mm"] == [1.5, 1.5]


@pytest.mark.parametrize("variant", [None] + list(storage.PAIR_VARIANTS))
def test_no_warning_for_the_sample_pair_however_it_is_stored(engine, pair, variant):
    inputs = pair if variant is None else storage.PAIR_VARIANTS[variant](*pair)
    assert engine.register(*inputs, mode="affine").warnings == []


def test_a_small_field_of_view_is_registered_with_a_warning(engine, pair):
    fixed = pair[0]
    cropped = Volume(fixed.array[:, :, 14:34], Grid((20,) + fixed.grid.size[1:], fixed.grid.spacing,
                                                    fixed.grid.index_to_lps[:3, :3] @ [14, 0, 0] + fixed.grid.origin,
                                                    fixed.grid.direction), "cropped.nii.gz")
    warnings = engine.register(cropped, *pair[1:], mode="affine").warnings
    assert len(warnings) == 1 and warnings[0].startswith("cropped.nii.gz: the TRUS fills only")


def test_a_large_field_and_fine_spacing_are_registered_with_warnings(engine, pair):
    fixed = storage.padded(pair[0], 80.0)
    moving = replace(pair[1], grid=replace(pair[1].grid, spacing=(0.3, 0.3, 0.3)), name="fine.nii.gz")
    labels = replace(pair[2], grid=moving.grid)
    warnings = engine.register(fixed, moving, labels, mode="affine").warnings
    assert any("the networks see its central" in w for w in warnings)
    assert any(w.startswith("fine.nii.gz: voxel spacing [0.3, 0.3, 0.3] mm is far from") for w in warnings)


def test_saturated_intensities_are_registered_with_a_warning(engine, pair):
    fixed = replace(pair[0], array=np.minimum(pair[0].array, np.percentile(pair[0].array, 30)) + 0.0,
                    name="saturated.nii.gz")
    warnings = engine.register(fixed, *pair[1:], mode="affine").warnings
    assert any(w.startswith("saturated.nii.gz: its intensities are unlike the training TRUS") for w in warnings)


def test_a_field_of_view_in_the_wrong_units_is_refused(engine, pair):
    fixed = pair[0]
    metres = replace(fixed, grid=replace(fixed.grid, spacing=tuple(s / 1000 for s in fixed.grid.spacing)),
                     name="metres.nii.gz")
    with pytest.raises(LabelRegError, match=r"^metres.nii.gz: the TRUS covers .* check the spacing units"):
        engine.register(metres, *pair[1:], mode="affine")


def test_models_without_a_domain_give_no_warnings():
    grid = Grid((10, 10, 10), (0.01, 0.01, 0.01), (0, 0, 0))
    assert check_input(None, "fixed", "x", grid, grid, np.full((10, 10, 10), 5.0)) == []


def test_command_line_and_batch_show_the_warnings(pair, tmp_path, capsys):
    fixed, moving, labels = pair
    data = tmp_path / "data"
    padded = storage.padded(fixed, 80.0)
    write_image(data / "fixed_images" / "big.nii.gz", padded.array, padded.grid)
    write_image(data / "moving_images" / "big.nii.gz", moving.array, moving.grid)
    code = cli.main(["register", "--fixed", str(data / "fixed_images" / "big.nii.gz"), "--moving",
                     str(data / "moving_images" / "big.nii.gz"), "--mode", "affine", "--device", "cpu",
                     "--output-dir", str(tmp_path / "one")])
    err = capsys.readouterr().err
    assert code == 0 and err.count("labelreg: warning:") == 1 and "big.nii.gz: the TRUS covers" in err
    from labelreg.io import write_labels

    write_labels(data / "moving_labels" / "big.nii.gz", labels.channels, labels.grid)
    fixed_labels = read_labels(resources.sample_pair_file("fixed_labels"), fixed.grid)
    write_labels(data / "fixed_labels" / "big.nii.gz", storage.padded(fixed_labels, 80.0).channels, padded.grid)
    assert cli.main(["batch", str(data), str(tmp_path / "batch"), "--mode", "affine", "--device", "cpu"]) == 0
    table = (tmp_path / "batch" / "registrations.csv").read_text().splitlines()
    assert table[0].endswith(",warnings") and "the networks see its central" in table[1]

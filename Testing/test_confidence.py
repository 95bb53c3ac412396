"""The confidence of a registration: label-free features that react to what they should, a
calibration that scores and judges, its fitting on cross-validation rows, and the score where a
user sees a result (engine, command line, batch table)."""
import csv

import numpy as np
import pytest
import torch
from labelreg import cli, confidence
from labelreg.confidence import Calibration
from labelreg.engine import FixedToMoving, RegistrationEngine
from labelreg.grid import Grid
from labelreg.model import ModelConfig, RegistrationModel
from labelreg.model_io import save_model

GRID = Grid((20, 20, 20), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))


def blob(centre_mm, radius_mm=10.0, grid=GRID):
    points = grid.points_lps()
    inside = ((points - torch.tensor(centre_mm, dtype=torch.float32)).norm(dim=-1) < radius_mm).float()
    return inside[None, None]


def shift(mm):
    affine = torch.eye(4)
    affine[:3, 3] = torch.tensor(mm, dtype=torch.float32)
    return FixedToMoving(affine, None, GRID)


def test_features_react_to_misalignment_and_to_a_cut_gland():
    fixed_map = blob([19.0, 19.0, 19.0])
    aligned = confidence.features(shift([0, 0, 0]), fixed_map, GRID, fixed_map, GRID, GRID)
    assert aligned["gland_agreement"] == pytest.approx(1.0)
    assert aligned["gland_at_border"] == 0.0 and aligned["local_max_mm"] == 0.0
    assert aligned["fixed_gland_ml"] == pytest.approx(aligned["moving_gland_ml"]) and aligned["fixed_gland_ml"] > 3.0
    assert aligned["fixed_certainty"] == pytest.approx(1.0)  # a 0/1 map is certain
    off = confidence.features(shift([8, 0, 0]), fixed_map, GRID, fixed_map, GRID, GRID)
    assert off["gland_agreement"] < 0.7
    cut = confidence.features(shift([0, 0, 0]), blob([2.0, 19.0, 19.0]), GRID, fixed_map, GRID, GRID)
    assert cut["gland_at_border"] > 0.15  # half the ball lies outside the image


def test_calibration_scores_and_judges():
    calibration = Calibration({"gland_agreement": 2.0}, {"gland_agreement": 0.8}, {"gland_agreement": 0.05}, 1.0,
                              good_above=0.8, doubtful_below=0.4)
    scores = [calibration.score({"gland_agreement": a}) for a in (0.6, 0.8, 0.9)]
    assert scores == sorted(scores) and all(0 < s < 1 for s in scores)
    assert [calibration.verdict(s) for s in (0.9, 0.5, 0.1)] == ["good", "check", "doubtful"]
    assert Calibration.from_dict({**calibration.to_dict(), "report": ["..."]}) == calibration


def test_calibration_is_fitted_and_judged_out_of_fold():
    from labelreg_training import calibrate

    rng = np.random.default_rng(0)
    rows = []
    for i in range(80):
        good = i % 5 != 0
        rows.append({"case": f"c{i}", "fold": str(i % 4), "tre_mean_mm": 5.0 if good else 11.0, "dice": 0.8,
                     **{k: rng.normal() for k in calibrate.FEATURES},
                     "gland_agreement": (0.85 if good else 0.6) + 0.03 * rng.normal()})
    fitted, text = calibrate.calibrate(rows)
    assert fitted.weights["gland_agreement"] > 0 and fitted.doubtful_below <= fitted.good_above
    assert "AUC (score separates pairs <= 8 mm from the others) 1.00" in text
    verdicts = np.array([fitted.verdict(fitted.score(r)) for r in rows])
    failed = np.array([r["tre_mean_mm"] > 8 for r in rows])
    assert failed[verdicts == "doubtful"].all() and (verdicts == "doubtful").sum() >= 12  # of 16 failures
    assert failed[verdicts == "good"].mean() <= 0.05


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory):
    """An untrained gland model whose metadata holds a calibration on the gland agreement."""
    torch.manual_seed(0)
    config = ModelConfig(initial_alignment="gland", gland_translation="overlap",
                         localiser={"base_channels": 2, "levels": 2})
    calibration = Calibration({"gland_agreement": 1.0}, {"gland_agreement": 0.0}, {"gland_agreement": 1.0}, 0.0,
                              good_above=0.9, doubtful_below=0.1)
    return save_model(tmp_path_factory.mktemp("m") / "m.pt", RegistrationModel(config),
                      {"confidence": calibration.to_dict()})


def test_every_result_carries_its_confidence(calibrated_model, phantom, tmp_path, capsys):
    pair = phantom("iso_axis", seed=1)
    result = RegistrationEngine(calibrated_model, "cpu").register(pair.fixed, pair.moving, pair.moving_labels)
    assert 0.0 <= result.confidence <= 1.0 and result.verdict in confidence.VERDICTS
    assert result.confidence == pytest.approx(1 / (1 + np.exp(-result.confidence_features["gland_agreement"])))
    plain = RegistrationEngine(RegistrationModel(ModelConfig()), "cpu").register(pair.fixed, pair.moving)
    assert plain.confidence is None and plain.verdict is None  # no localisers: nothing to judge by

    from labelreg.phantom import write_pair

    data = tmp_path / "data"
    write_pair(pair, data, "p0")
    assert cli.main(["batch", str(data), str(tmp_path / "out"), "--model", str(calibrated_model), "--device",
                     "cpu"]) == 0
    [row] = csv.DictReader((tmp_path / "out" / "registrations.csv").read_text().splitlines())
    assert float(row["confidence"]) == pytest.approx(result.confidence, abs=1e-5) and row["verdict"] == result.verdict
    files = {k: str(data / k / "p0.nii.gz") for k in ("fixed_images", "moving_images", "moving_labels")}
    assert cli.main(["register", "--fixed", files["fixed_images"], "--moving", files["moving_images"],
                     "--moving-labels", files["moving_labels"], "--output-dir", str(tmp_path / "one"),
                     "--model", str(calibrated_model), "--device", "cpu"]) == 0
    assert f"confidence: {result.confidence:.2f} (" in capsys.readouterr().out


def test_features_do_not_depend_on_the_slab_size(monkeypatch):
    from labelreg import engine as engine_module

    fixed_map, moving_map = blob([19.0, 19.0, 19.0]), blob([23.0, 17.0, 19.0])
    whole = confidence.features(shift([2, 0, 0]), fixed_map, GRID, moving_map, GRID, GRID)
    monkeypatch.setattr(engine_module, "SLAB_VOXELS", 3 * 20 * 20)
    assert confidence.features(shift([2, 0, 0]), fixed_map, GRID, moving_map, GRID, GRID) == pytest.approx(whole)

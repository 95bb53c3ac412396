"""Checks on the real MR-TRUS pairs (skipped when ../shared/data/mrus or $LABELREG_DATA is absent)."""
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from labelreg import resources
from labelreg.cli import main
from labelreg.metrics import dice, evaluate_pair

DATA = Path(os.environ.get("LABELREG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus"))
pytestmark = pytest.mark.skipif(not (DATA / "fixed_images" / "obs000.nii.gz").exists(), reason="no real data set")


def _files(name="obs000"):
    return {k: DATA / k / f"{name}.nii.gz" for k in ("fixed_images", "moving_images", "moving_labels", "fixed_labels")}


@pytest.mark.skipif(not resources.BUNDLED_MODEL_FILE.exists(), reason="no bundled model")
def test_bundled_model_registers_a_real_pair_better_than_the_initial_alignment(tmp_path):
    f = _files("obs000")
    fixed_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(f["fixed_labels"])))
    from labelreg.grid import Grid
    grid = Grid.from_sitk(sitk.ReadImage(str(f["fixed_images"])))
    scores = {}
    for mode in ("affine", "deformable"):
        out = tmp_path / mode
        code = main(["register", "--fixed", str(f["fixed_images"]), "--moving", str(f["moving_images"]),
                     "--moving-labels", str(f["moving_labels"]), "--mode", mode, "--device", "cpu",
                     "--output-dir", str(out)])
        assert code == 0
        warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_labels.nii.gz")))
        assert warped.shape == fixed_labels.shape  # (C, z, y, x): same channels, fixed grid
        scores[mode] = evaluate_pair(warped, fixed_labels, grid)
        # the written field, applied by SimpleITK, reproduces the warped gland
        field = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64))
        gland = sitk.Extract(sitk.ReadImage(str(f["moving_labels"])), [69, 69, 64, 0], [0, 0, 0, 0])
        resampled = sitk.GetArrayFromImage(sitk.Resample(gland, sitk.ReadImage(str(f["fixed_images"])), field,
                                                         sitk.sitkLinear, 0.0))
        assert dice(resampled, warped[0]) > 0.99
    # both modes must clearly beat the initial (centre) alignment, which gives Dice ~0.5 here
    from labelreg.batch import warp_initial
    from labelreg.io import read_image, read_labels
    moving = read_image(f["moving_images"])
    initial = evaluate_pair(warp_initial(grid, read_labels(f["moving_labels"], moving.grid), "centers"),
                            fixed_labels, grid)
    for mode in ("affine", "deformable"):
        assert scores[mode]["dice"] > max(0.75, initial["dice"] + 0.1), (mode, scores[mode], initial)
        assert scores[mode]["tre_median_mm"] < initial["tre_median_mm"], (mode, scores[mode], initial)


def test_smoke_training_on_two_real_pairs_decreases_the_loss(tmp_path):
    import shutil

    import torch
    from labelreg.model import ModelConfig, RegistrationModel
    from labelreg_training.data import load_dataset
    from labelreg_training.train import LossModule, TrainConfig, draw_batch, set_trainable, train

    for folder in ("fixed_images", "moving_images", "fixed_labels", "moving_labels"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for name in ("obs000", "obs001"):
            shutil.copy(DATA / folder / f"{name}.nii.gz", tmp_path / "data" / folder)
    data = load_dataset(tmp_path / "data", tmp_path / "cache", log=lambda *_: None)
    small = ModelConfig(grid_spacing_mm=4.0, local_net={"base_channels": 4, "levels": 3, "norm": "instance"},
                        global_net={"base_channels": 4, "levels": 3, "pooled_size": [2, 2, 2], "norm": "instance"})
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), stage="local_only", steps=40, batch_size=2, lr=3e-3,
                      lr_final=3e-3, folds=1, threads=1, model=small.to_dict(), device="cpu",
                      augment={"rotation_deg": 0, "scale": 0, "translation_mm": 0, "deformation_mm": 0,
                               "deformation_points": 4, "gamma": 0, "noise": 0})

    def fixed_loss(model):
        set_trainable(model, cfg.stage)
        module, cases = LossModule(model, cfg, data), list(data.cases.values())
        with torch.no_grad():
            return np.mean([module(*draw_batch(cases, cfg, g, "cpu"), g)[0].item()
                            for g in (torch.Generator().manual_seed(s) for s in range(4))])

    torch.manual_seed(cfg.seed)
    before = fixed_loss(RegistrationModel(small))
    train(cfg, data, log=lambda *_: None, stop_after=20)
    train(cfg, data, resume=True, log=lambda *_: None)  # resumes where the first run stopped
    trained = RegistrationModel(small)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 40
    trained.load_state_dict(state["model"])
    assert fixed_loss(trained) < 0.97 * before

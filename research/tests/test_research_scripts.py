"""Checks of the research scripts and configs (not the product: pytest's testpaths is Testing/,
so run these by path from the repository root, with the product installed:

    .venv/bin/python -m pytest research/tests -q
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from labelreg.model import ModelConfig, RegistrationModel
from labelreg.phantom import make_pair, write_pair
from labelreg_training.data import load_dataset
from labelreg_training.train import TrainConfig, train

RESEARCH = Path(__file__).resolve().parents[1]
SMALL_MODEL = {"grid_spacing_mm": 4.0, "initial_alignment": "centers", "intensity_percentiles": [1.0, 99.0],
               "global_net": {"base_channels": 4, "levels": 3, "pooled_size": [2, 2, 2]},
               "local_net": {"base_channels": 4, "levels": 3}}
NO_AUGMENT = {"rotation_deg": 0.0, "scale": 0.0, "translation_mm": 0.0, "deformation_mm": 0.0,
              "deformation_points": 4, "gamma": 0.0, "noise": 0.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    for seed in range(4):
        write_pair(make_pair(seed, fixed_size=(24, 28, 22), moving_size=(28, 28, 26), spacing=(2.5, 2.5, 2.5),
                             n_landmarks=2), folder, f"case{seed:03d}")
    (folder / "subjects.csv").write_text("case,subject\ncase000,a\ncase001,a\ncase002,b\ncase003,c\n")
    return load_dataset(folder, tmp_path_factory.mktemp("cache"), log=lambda *_: None)


def test_device_pack_round_trip(dataset, tmp_path):
    """Checkpoints packed on a GPU machine (float16, trained nets only) come back loadable and
    within float16 precision of the originals, the frozen net restored from ``init_from``."""
    spec = importlib.util.spec_from_file_location("device_pack", RESEARCH / "scripts" / "device_pack.py")
    device_pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_pack)

    def tune(model, cases):
        return {"tune_tre_median_mm": 1.0, "tune_tre_p90_mm": 1.0, "tune_dice_median": 0.5, "tune_dice_p10": 0.5}

    runs = tmp_path / "runs"
    for stage, init in (("global", ""), ("local", str(runs / "fold0" / "global" / "best.pt"))):
        cfg = TrainConfig(out_dir=str(runs / "fold0" / stage), stage=stage, steps=4, batch_size=2, lr=3e-3, folds=1,
                          threads=1, checkpoint_minutes=0.0, log_every=2, model=SMALL_MODEL, augment=NO_AUGMENT,
                          device="cpu", val_every=2, tune_fraction=0.3, init_from=init)
        train(cfg, dataset, log=lambda *_: None, evaluate_fn=tune)
    device_pack.pack(runs, tmp_path / "out")
    device_pack.unpack(tmp_path / "out", tmp_path / "back")
    for stage in ("global", "local"):
        original = torch.load(runs / "fold0" / stage / "best.pt", weights_only=True)["model"]
        restored = torch.load(tmp_path / "back" / "fold0" / stage / "best.pt", weights_only=True)["model"]
        assert original.keys() == restored.keys()
        for key, value in original.items():
            scale = value.abs().max().clamp(min=1e-30) if value.is_floating_point() else 1
            assert torch.allclose(value.float(), restored[key].float(), atol=1e-3 * float(scale)), (stage, key)


#: research configs whose experiment used an option the product no longer has (rejected, then
#: removed): they are history, kept as the experiment log ran them; this LabelReg refuses them by name
#: (labelreg <= 0.1 runs them)
REMOVED = {
    "gland_alignment_fovcut": "augment.fov_cut",
    "gland_local_2mm": "localiser_spacing_mm",
    "gland_local_inputs": "local_gland_inputs",
    "gland_local_inputs_strongaug": "local_gland_inputs",
    "gland_local_mirror": "augment.mirror",
    "gland_overlap_1p5mm": "localiser_spacing_mm",
    "keypoint_global": "head_lr_scale",  # and global_net.head = "keypoints"
    "residual_large": "augment.residual_",
    "residual_moderate": "augment.residual_",
    "translation_global": "global_net.dof",
}
CONFIGS = sorted((RESEARCH / "configs").glob("*.json"))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem not in REMOVED], ids=lambda p: p.stem)
def test_every_research_config_builds_its_model(path):
    """The configs the experiment log's commands use are valid training configs, and their model
    builds (those of removed options excepted: :data:`REMOVED`)."""
    cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    assert RegistrationModel(ModelConfig.from_dict(cfg.model)) is not None


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem in REMOVED], ids=lambda p: p.stem)
def test_research_configs_of_removed_options_are_refused_by_name(path):
    """Historical: the experiment used an option this LabelReg removed; it says which."""
    with pytest.raises(ValueError, match=f"option {REMOVED[path.stem]}.* was removed"):
        TrainConfig.from_dict(json.loads(path.read_text()))

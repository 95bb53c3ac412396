"""Export a training checkpoint as a model file + metadata sidecar (by default over the model
bundled with the ``labelreg`` package, ``labelreg.resources.BUNDLED_MODEL_FILE``), recording
provenance and measured metrics."""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
from labelreg import resources
from labelreg.domain import describe_domain
from labelreg.io import read_image
from labelreg.model_io import save_model

from .data import case_names, resolve_data_dir
from .train import load_checkpoint


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


TRAINING_KEYS = ("stage", "steps", "batch_size", "lr", "folds", "fold", "seed", "bending_weight", "init_from",
                 "augment")


def stage_chain(checkpoint, state: dict | None = None) -> list:
    """The training stages that led to ``checkpoint``, first to last, following each run's
    ``init_from``: for each, the checkpoint, the step it was taken at and its run settings.
    ``state``: ``checkpoint``'s contents, when already loaded."""
    chain, path = [], Path(checkpoint)
    while path is not None and path.exists() and all(Path(c["checkpoint"]) != path for c in chain):
        config_path = path.parent / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        loaded = state if state is not None and not chain else torch.load(path, map_location="cpu", weights_only=True)
        step = loaded.get("step", 0)
        chain.append({"checkpoint": str(path), "checkpoint_step": int(step)} | {k: config.get(k) for k in TRAINING_KEYS})
        path = Path(config["init_from"]) if config.get("init_from") else None
    return chain[::-1]


def _summary(metrics_file) -> dict:
    """An evaluation JSON's summary with its registration mode."""
    result = json.loads(Path(metrics_file).read_text())
    return result.get("summary") | {"mode": result.get("mode")}


def training_domain(model, data_dir, cases) -> dict:
    """Record in ``model`` the fields of view of the training images ``cases`` (where its
    configuration leaves them unset) and return their :func:`~labelreg.domain.describe_domain`."""
    data_dir = resolve_data_dir(data_dir)
    images = {role: [(volume.array, volume.grid) for volume in
                     (read_image(data_dir / f"{role}_images" / f"{n}.nii.gz", f"{role} image") for n in cases)]
              for role in ("fixed", "moving")}
    model.config = model.config.with_fields_of(images["fixed"][0][1], images["moving"][0][1])
    return describe_domain(model.config, images["fixed"], images["moving"])


def export_model(checkpoint, out=None, metrics_files=(), data_dir=None, argv=(), **options) -> Path:
    """``options``: inference options of the model configuration (``train.INFERENCE_OPTIONS``,
    e.g. ``gland_translation="overlap"``) to set in the exported model."""
    model, state = load_checkpoint(checkpoint, **options)
    run_dir = Path(checkpoint).parent
    train_config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    metadata = {
        "name": "LabelReg MR-TRUS prostate",
        "method": "Hu et al. 2018, label-driven weakly-supervised registration (arXiv 1711.01666)",
        "inputs": {"fixed": "3-D transrectal ultrasound (TRUS)", "moving": "3-D T2-weighted MR"},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "checkpoint_step": int(state.get("step", 0)),
        "stage": state.get("stage"),
        "stages": stage_chain(checkpoint, state),
        "split": {k: train_config.get(k) for k in ("train_cases", "tune_cases", "val_cases")},
        "metrics": [_summary(m) for m in metrics_files],
        "model_options": options,
        "command_line": " ".join(argv),
    }
    if data_dir:
        path = resolve_data_dir(data_dir)
        metadata["data"] = {
            "source": "YipengHu/example-data branch mrus, commit fffae7ba72e730eaf8f9ad8ee4a1b3f690226c0d",
            "cases": len(case_names(path)),
        }
        metadata["training_domain"] = training_domain(model, path, metadata["split"]["train_cases"] or case_names(path))
    return save_model(Path(out) if out else resources.BUNDLED_MODEL_FILE, model, metadata)

"""Evaluation of a model on held-out cases, at full resolution, through the same inference
engine the command line and the Slicer module use."""
from __future__ import annotations

import time
from pathlib import Path

from labelreg.engine import RegistrationEngine
from labelreg.io import read_image, read_labels
from labelreg.metrics import evaluate_pair, summarize


def load_pairs(data_dir, names) -> list:
    """[(name, fixed, moving, moving_labels, fixed_labels)] read from the original files."""
    data_dir = Path(data_dir)
    pairs = []
    for n in names:
        fixed = read_image(data_dir / "fixed_images" / f"{n}.nii.gz", "fixed image")
        moving = read_image(data_dir / "moving_images" / f"{n}.nii.gz", "moving image")
        pairs.append((n, fixed, moving,
                      read_labels(data_dir / "moving_labels" / f"{n}.nii.gz", moving.grid, "moving labels"),
                      read_labels(data_dir / "fixed_labels" / f"{n}.nii.gz", fixed.grid, "fixed labels")))
    return pairs


def evaluate_model(model, pairs, mode: str = "deformable", device: str = "cpu", batch: int = 8):
    """Register every pair; returns (rows, summary). Rows carry the case name and seconds."""
    was_training = model.training
    engine = RegistrationEngine(model, device=device)
    rows, start = [], time.perf_counter()
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        t0 = time.perf_counter()
        results = engine.register_batch([(p[1], p[2], p[3]) for p in chunk], mode=mode)
        per_pair = (time.perf_counter() - t0) / len(chunk)
        for (name, fixed, _, _, fixed_labels), result in zip(chunk, results):
            row = evaluate_pair(result.warped_labels, fixed_labels.channels, fixed.grid, result.ddf_lps)
            rows.append({"case": name, "seconds": per_pair, **row})
    summary = summarize(rows)
    summary["seconds_per_pair"] = (time.perf_counter() - start) / max(1, len(pairs))
    model.train(was_training)
    return rows, summary


def validation_callback(data_dir, mode: str):
    """An ``evaluate_fn(model, cases)`` for :func:`labelreg_training.train.train` (run on the
    tuning cases) that keeps the files in memory and returns tune_* log columns."""
    cache = {}

    def evaluate_fn(model, cases):
        missing = [n for n in cases if n not in cache]
        for pair in load_pairs(data_dir, missing):
            cache[pair[0]] = pair
        device = next(model.parameters()).device.type  # evaluate where the model trains: never move it
        _, summary = evaluate_model(model, [cache[n] for n in cases], mode, device)
        return {"tune_tre_median_mm": summary["tre_median_mm"], "tune_tre_p90_mm": summary["tre_p90_mm"],
                "tune_dice_median": summary["dice_median"], "tune_dice_p10": summary["dice_p10"]}

    return evaluate_fn

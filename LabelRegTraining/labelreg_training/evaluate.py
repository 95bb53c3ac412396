"""Evaluation of a model on held-out cases, at full resolution, through the same inference
engine the command line and the Slicer module use."""
from __future__ import annotations

import time

import torch
from labelreg.engine import RegistrationEngine
from labelreg.layout import complete_pairs
from labelreg.metrics import evaluate_pair, summarize
from labelreg.volume import Volume


def load_pairs(data_dir, names) -> list:
    """[(name, fixed, moving, moving_labels, fixed_labels)] read from the original files."""
    files = {pair.name: pair for pair in complete_pairs(data_dir)}
    return [(n, *files[n].read()) for n in names]


def predicted_gland_maps(model, fixed: Volume, moving: Volume) -> tuple:
    """A gland model's two gland maps of one pair (probes): ((TRUS probability (1, 1, ...), its
    grid), (MR probability, its grid)), from the images normalised as the engine does."""
    image = [torch.from_numpy(model.config.normalize(v.array, v.grid, role))[None, None]
             for v, role in ((fixed, "fixed"), (moving, "moving"))]
    return model.gland_maps(image[0], fixed.grid, image[1], moving.grid)


def gland_cut_by_field_of_view(labels: Volume) -> bool:
    """Whether a label volume's gland (channel 0) touches a face of its volume (probes: the TRUS
    field of view cuts 16 of the 81 pairs' glands)."""
    gland = labels.channels[0] > 0.5
    return any(gland.take(i, axis=axis).any() for axis in range(3) for i in (0, -1))


def evaluate_model(model, pairs, mode: str = "deformable", device: str = "cpu", batch: int = 8, hd95: bool = True):
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
            row = evaluate_pair(result.warped_labels, fixed_labels.channels, fixed.grid, result.ddf_lps, hd95)
            rows.append({"case": name, "seconds": per_pair, **row})
    summary = summarize(rows)
    summary["seconds_per_pair"] = (time.perf_counter() - start) / max(1, len(pairs))
    model.train(was_training)
    return rows, summary


def cached_pairs(data, names) -> list:
    """The pairs of :func:`load_pairs` built from a loaded training data set (its cached tensors:
    images already normalised, labels binary), so that no file is read and no SimpleITK is needed. The engine normalises the
    images again, which leaves normalised images unchanged up to float16 rounding."""
    pairs = []
    for n in names:
        c = data.cases[n]
        pairs.append((n, Volume(c.fixed[0].float().numpy(), data.fixed_grid, f"{n} fixed"),
                      Volume(c.moving[0].float().numpy(), data.moving_grid, f"{n} moving"),
                      Volume(c.moving_labels.float().numpy(), data.moving_grid, f"{n} moving labels"),
                      Volume(c.fixed_labels.float().numpy(), data.fixed_grid, f"{n} fixed labels")))
    return pairs


def validation_callback(data, mode: str):
    """An ``evaluate_fn(model, cases)`` for :func:`labelreg_training.train.train`, run on the
    tuning cases from the data set in memory; returns the tune_* log columns (HD95 is skipped:
    selection uses TRE and Dice only)."""

    def evaluate_fn(model, cases):
        device = next(model.parameters()).device.type  # evaluate where the model trains: never move it
        _, summary = evaluate_model(model, cached_pairs(data, cases), mode, device, hd95=False)
        return {"tune_tre_median_mm": summary["tre_median_mm"], "tune_tre_p90_mm": summary["tre_p90_mm"],
                "tune_dice_median": summary["dice_median"], "tune_dice_p10": summary["dice_p10"]}

    return evaluate_fn

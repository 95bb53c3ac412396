"""Probe: how much of a model's remaining landmark error is one translation shared by the pair?

For each validation pair of a fold, the error vector of every landmark (warped MR centroid minus
TRUS centroid, LPS mm, as the TRE metric measures it) after the model's registration. Printed per
landmark: the TRE, and the TRE left after subtracting the mean error vector of the pair's *other*
landmarks (leave one out; pairs with one landmark keep their TRE). If the second is much smaller,
the error is mostly a translation the pair's landmarks share (a global misalignment); if not, it is
landmark by landmark (deformation inside the gland, or label noise). Also the gland's centroid
error vector and the landmark errors after subtracting it.

    python research/scripts/residual_probe.py DATA FOLDS CHECKPOINT [--mode local] [--json OUT]

FOLDS is a comma-separated list (0,1,2,3,4); CHECKPOINT may hold ``{fold}``
(runs/ovl/fold{fold}/local_one/best.pt). Prints every landmark, then the medians per fold and pooled.
"""
import argparse
import json

import numpy as np
import torch
from labelreg.engine import RegistrationEngine
from labelreg.metrics import centroid_lps
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import load_pairs
from labelreg_training.train import load_checkpoint


def error_vectors(warped: np.ndarray, fixed: np.ndarray, grid) -> np.ndarray:
    """(C, 3) warped-minus-fixed centroid vectors of every channel (nan where a warped label left the view)."""
    out = np.full((len(fixed), 3), np.nan)
    for c in range(len(fixed)):
        w, f = centroid_lps(warped[c], grid, min_mass=0.5), centroid_lps(fixed[c], grid)
        if w is not None and f is not None:
            out[c] = w - f
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("folds")
    p.add_argument("checkpoint")
    p.add_argument("--mode", default="local")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the per-landmark figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for fold in (int(f) for f in args.folds.split(",")):
        fold_rows = probe_fold(args.data, fold, args.checkpoint.format(fold=fold), args.mode)
        for r in fold_rows:
            print(f"{r['case']} landmark {r['landmark']}: TRE {r['tre_mm']:5.1f} mm, minus the others' mean "
                  f"{r['minus_others_mean_mm']:5.1f}, minus the gland's {r['minus_gland_mm']:5.1f}")
        summarise(f"fold {fold}", fold_rows)
        rows += fold_rows
    summarise("pooled", rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def probe_fold(data, fold: int, checkpoint: str, mode: str) -> list:
    engine = RegistrationEngine(load_checkpoint(checkpoint)[0].eval())
    data_dir, names = validation_cases(data, 5, fold)
    rows = []
    for name, fixed, moving, moving_labels, fixed_labels in load_pairs(data_dir, names):
        result = engine.register_batch([(fixed, moving, moving_labels)], mode=mode)[0]
        errors = error_vectors(result.warped_labels, fixed_labels.channels, fixed.grid)
        gland, landmarks = errors[0], errors[1:]
        for i, e in enumerate(landmarks):
            others = np.delete(landmarks, i, axis=0)
            shared = np.nanmean(others, axis=0) if np.isfinite(others).all(axis=1).any() else np.zeros(3)
            rows.append({"case": name, "fold": fold, "landmark": i + 1, "tre_mm": float(np.linalg.norm(e)),
                         "minus_others_mean_mm": float(np.linalg.norm(e - shared)),
                         "minus_gland_mm": float(np.linalg.norm(e - gland)), "landmarks": len(landmarks)})
    return rows


def summarise(title: str, rows: list):
    def median(key, subset=rows):
        return np.nanmedian([r[key] for r in subset])
    many = [r for r in rows if r["landmarks"] > 1]
    print(f"{title}: {len(rows)} landmarks, median TRE {median('tre_mm'):.2f} mm "
          f"(p90 {np.nanpercentile([r['tre_mm'] for r in rows], 90):.2f}); {len(many)} in pairs with 2+ landmarks: "
          f"TRE {median('tre_mm', many):.2f}, minus the others' mean {median('minus_others_mean_mm', many):.2f}; "
          f"all: minus the gland's centroid error {median('minus_gland_mm'):.2f} mm (medians)")


if __name__ == "__main__":
    main()

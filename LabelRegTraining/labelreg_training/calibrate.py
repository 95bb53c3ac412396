"""Calibrating the confidence of registrations on cross-validation (``labelreg-train calibrate``).

Every validation pair of every fold is registered by that fold's model, which never saw its
subject; its label-free confidence features (:func:`labelreg.confidence.features`) are recorded
with its true mean landmark error. A logistic model of P(mean error <= 8 mm) on the standardised
features (L2-regularised: about three pairs per fold fail) is then fitted. The verdict
thresholds: "good" above the lowest score above which at most 5 % of the pairs fail, "doubtful"
below the highest score below which at least half of them fail, "check" between. The report
also gives the out-of-fold AUC (each fold scored by the model fitted on the other folds).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from labelreg.confidence import GOOD_TRE_MM, Calibration
from labelreg.engine import RegistrationEngine
from labelreg.layout import complete_pairs
from labelreg.metrics import evaluate_pair
from labelreg.model_io import read_metadata

#: the features the calibration uses: whether the MR gland, carried by the transform, lands on the
#: TRUS gland. All seven of labelreg.confidence.features together did worse out of fold (AUC 0.59
#: against 0.65 on the 81 pairs; see the model card, "Confidence")
FEATURES = ("gland_agreement",)
L2 = 1.0
GOOD_PRECISION = 0.95
DOUBTFUL_FAILURES = 0.5


def collect(data_dir, fold_models: dict, log=print) -> list:
    """Rows {case, fold, tre_mean_mm, dice, <features>} of every fold's validation pairs."""
    files = {pair.name: pair for pair in complete_pairs(data_dir)}
    rows = []
    for fold, path in sorted(fold_models.items()):
        engine = RegistrationEngine(path, "cpu")
        for case in read_metadata(path)["split"]["val_cases"]:
            fixed, moving, labels, fixed_labels = files[case].read()
            result = engine.register(fixed, moving, labels)
            metrics = evaluate_pair(result.warped_labels, fixed_labels.channels, fixed.grid, hd95=False)
            tre = [t for t in metrics["tre_mm"] if not math.isnan(t)]
            rows.append({"case": case, "fold": fold, "tre_mean_mm": float(np.mean(tre)) if tre else math.inf,
                         "dice": metrics["dice"], **result.confidence_features})
            log(f"fold {fold} {case}: mean TRE {rows[-1]['tre_mean_mm']:.2f} mm, gland agreement "
                f"{rows[-1]['gland_agreement']:.3f}")
    return rows


def fit(rows: list, features=FEATURES) -> Calibration:
    """The logistic model (Newton's method) on standardised ``features``, thresholds unset."""
    x = np.array([[r[k] for k in features] for r in rows], dtype=np.float64)
    y = np.array([r["tre_mean_mm"] <= GOOD_TRE_MM for r in rows], dtype=np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
    w = np.zeros(z.shape[1])
    penalty = np.diag([0.0] + [L2] * len(features))
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ w))
        gradient = z.T @ (p - y) + penalty @ w
        hessian = z.T @ (z * (p * (1 - p))[:, None]) + penalty
        w -= np.linalg.solve(hessian, gradient)
    return Calibration(dict(zip(features, map(float, w[1:]))), dict(zip(features, map(float, mean))),
                       dict(zip(features, map(float, std))), float(w[0]), 1.0, 0.0)


def out_of_fold_scores(rows: list, features=FEATURES) -> np.ndarray:
    """Each row scored by the calibration fitted on the other folds."""
    folds = sorted({r["fold"] for r in rows})
    scores = np.zeros(len(rows))
    for fold in folds:
        model = fit([r for r in rows if r["fold"] != fold], features)
        for i, r in enumerate(rows):
            if r["fold"] == fold:
                scores[i] = model.score(r)
    return scores


def thresholds(scores: np.ndarray, good: np.ndarray) -> tuple:
    """(good_above, doubtful_below) from out-of-fold scores (see the module docstring)."""
    candidates = np.unique(scores)
    good_above = 1.0
    for t in candidates:  # the lowest score above which at most 5 % fail
        if good[scores >= t].mean() >= GOOD_PRECISION:
            good_above = float(t)
            break
    doubtful_below = float(candidates[0])  # nothing is doubtful unless ...
    for t in candidates[::-1]:  # ... below some score at least half the pairs fail: the highest such
        below = scores < t
        if below.any() and (~good[below]).mean() >= DOUBTFUL_FAILURES and t <= good_above:
            doubtful_below = float(t)
            break
    return good_above, doubtful_below


def _rank(values) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(np.float64)


def report(rows: list, scores: np.ndarray, calibration: Calibration) -> str:
    """The calibration table: rank correlations, AUC, and each verdict's pairs and failures."""
    tre = np.array([r["tre_mean_mm"] for r in rows])
    dice = np.array([r["dice"] for r in rows])
    good = tre <= GOOD_TRE_MM
    auc = _auc(scores, good)
    lines = [f"{len(rows)} pairs, {int((~good).sum())} with mean landmark error > {GOOD_TRE_MM:g} mm",
             (f"Spearman(score, mean TRE) {np.corrcoef(_rank(scores), _rank(tre))[0, 1]:+.2f}; "
              f"Spearman(score, gland Dice) {np.corrcoef(_rank(scores), _rank(dice))[0, 1]:+.2f}; "
              f"AUC (score separates pairs <= {GOOD_TRE_MM:g} mm from the others) {auc:.2f}"),
             "| verdict | score | pairs | mean TRE > 8 mm | median mean TRE (mm) |", "|---|---|---|---|---|"]
    for verdict in ("good", "check", "doubtful"):
        chosen = np.array([calibration.verdict(s) == verdict for s in scores])
        bounds = {"good": f">= {calibration.good_above:.2f}", "doubtful": f"< {calibration.doubtful_below:.2f}",
                  "check": f"{calibration.doubtful_below:.2f}-{calibration.good_above:.2f}"}[verdict]
        median = f"{np.median(tre[chosen]):.2f}" if chosen.any() else "-"
        lines.append(f"| {verdict} | {bounds} | {int(chosen.sum())} | {int((~good[chosen]).sum())} | {median} |")
    flagged = np.array([calibration.verdict(s) == "doubtful" for s in scores])
    if (~good).any() and good.any():
        lines.append(f"'doubtful' flags the pairs > {GOOD_TRE_MM:g} mm with sensitivity "
                     f"{flagged[~good].mean():.2f} and specificity {(~flagged[good]).mean():.2f}")
    return "\n".join(lines)


def write_rows(path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path) -> list:
    with open(path, newline="") as f:
        return [{k: (v if k in ("case", "fold") else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def calibrate(rows: list, features=FEATURES) -> tuple:
    """(the calibration fitted on all rows, the report). With the one default feature the
    score is a monotone map of it, so its ranking (and AUC) is the feature's own and the
    thresholds are chosen on the pooled scores; the out-of-fold AUC is reported beside them."""
    final = fit(rows, features)
    scores = np.array([final.score(r) for r in rows])
    good = np.array([r["tre_mean_mm"] <= GOOD_TRE_MM for r in rows])
    good_above, doubtful_below = thresholds(scores, good)
    final = Calibration(final.weights, final.means, final.stds, final.bias, good_above, doubtful_below)
    text = report(rows, scores, final)
    held_out = out_of_fold_scores(rows, features)
    text += f"\nout of fold (each fold scored by the calibration fitted on the others): AUC {_auc(held_out, good):.2f}"
    return final, text


def _auc(scores: np.ndarray, good: np.ndarray) -> float:
    pairs = [(b, g) for b in scores[~good] for g in scores[good]]
    return float(np.mean([(g > b) + 0.5 * (g == b) for b, g in pairs])) if pairs else math.nan


def store(model_path, calibration: Calibration, text: str) -> None:
    """Record the calibration in a model's metadata sidecar (the weights file is unchanged)."""
    import json

    from labelreg.io import AtomicFile
    from labelreg.model_io import sidecar_path

    sidecar = sidecar_path(Path(model_path))
    metadata = json.loads(sidecar.read_text())
    metadata["confidence"] = {**calibration.to_dict(), "report": text.splitlines()}
    with AtomicFile(sidecar) as tmp:
        Path(tmp).write_text(json.dumps(metadata, indent=2) + "\n")

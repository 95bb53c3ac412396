"""Paired comparison of evaluation JSON files: is a change better on the same pairs?

Pooled medians of two methods move by chance as much as by design on 81 pairs (a net retrained
with another seed shifts the median TRE by 0.1-0.3 mm). Pairing removes the variation between
patients: each pair's change in mean landmark TRE and in gland Dice, with the number of pairs
that improve and worsen, an exact two-sided sign test, and a bootstrap 95% interval (over pairs)
of the mean change.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from labelreg.errors import LabelRegError

BOOTSTRAP = 5000


def load_groups(paths) -> dict:
    """Evaluation JSON files grouped by label (e.g. one file per fold), in first-seen order."""
    groups = {}
    for path in paths:
        try:
            blob = json.loads(Path(path).read_text())
            blob["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabelRegError(f"cannot read {path} ({exc}); pass evaluation JSON files written by "
                                "'labelreg-train evaluate --json'") from exc
        label = blob.get("label") or f"{blob.get('mode')} ({Path(path).stem})"
        groups.setdefault(label, []).append(blob)
    return groups


def _by_case(blobs) -> dict:
    rows = {}
    for blob in blobs:
        for row in blob["rows"]:
            if row["case"] in rows:
                raise LabelRegError(f"case {row['case']} appears twice in one group ('{blob.get('label')}'); "
                                    "give each method's files one label and each fold once")
            rows[row["case"]] = row
    return rows


def sign_test_p(better: int, worse: int) -> float:
    """Exact two-sided sign test (ties dropped): the chance of a split at least this uneven."""
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(better, worse) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def bootstrap_ci(values, seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile bootstrap interval of the mean (resampling the pairs); seeded, so repeatable."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    means = np.random.default_rng(seed).choice(values, (BOOTSTRAP, values.size)).mean(1)
    return tuple(float(q) for q in np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


def paired(base_rows: dict, rows: dict) -> dict:
    """Per-pair changes (candidate minus base) on the cases both evaluated: mean landmark TRE per
    pair (mm; negative is better) and gland Dice (positive is better)."""
    cases = sorted(set(base_rows) & set(rows))
    if not cases:
        raise LabelRegError("the two methods share no evaluated case; compare files of the same folds")
    d_tre, d_dice = [], []
    for case in cases:
        a, b = base_rows[case].get("tre_mm", []), rows[case].get("tre_mm", [])
        if len(a) != len(b):
            raise LabelRegError(f"case {case}: {len(a)} landmarks in one file, {len(b)} in the other")
        finite = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
        if finite:
            d_tre.append(float(np.mean([y - x for x, y in finite])))
        if base_rows[case].get("dice") is not None and rows[case].get("dice") is not None:
            d_dice.append(rows[case]["dice"] - base_rows[case]["dice"])
    return {"pairs": len(cases), "d_tre_mm": d_tre, "d_dice": d_dice}


def compare(paths, cases=None, exclude=()) -> list:
    """One result per group after the first (the baseline): the paired change against the baseline.
    ``cases``: only these cases (e.g. a subgroup); ``exclude``: all but these."""
    groups = load_groups(paths)
    if len(groups) < 2:
        raise LabelRegError(f"compare needs at least two methods (labels); got {list(groups) or 'none'}")

    def chosen(rows: dict) -> dict:
        return {c: r for c, r in rows.items() if (cases is None or c in cases) and c not in exclude}

    (base_label, base_blobs), *others = groups.items()
    base_rows = chosen(_by_case(base_blobs))
    results = []
    for label, blobs in others:
        p = paired(base_rows, chosen(_by_case(blobs)))
        d_tre, d_dice = np.asarray(p["d_tre_mm"]), np.asarray(p["d_dice"])
        if not d_tre.size and not d_dice.size:
            raise LabelRegError(f"'{label}' and '{base_label}' share cases but no landmark TRE or Dice to compare")
        results.append({
            "label": label, "baseline": base_label, "pairs": p["pairs"],
            "tre_mean_change_mm": float(d_tre.mean()) if d_tre.size else math.nan, "tre_ci_mm": bootstrap_ci(d_tre),
            "tre_better": int((d_tre < 0).sum()), "tre_worse": int((d_tre > 0).sum()),
            "tre_sign_p": sign_test_p(int((d_tre < 0).sum()), int((d_tre > 0).sum())),
            "dice_mean_change": float(d_dice.mean()) if d_dice.size else math.nan, "dice_ci": bootstrap_ci(d_dice),
            "dice_better": int((d_dice > 0).sum()), "dice_worse": int((d_dice < 0).sum()),
            "dice_sign_p": sign_test_p(int((d_dice > 0).sum()), int((d_dice < 0).sum())),
        })
    return results


def format_table(results) -> str:
    lines = [f"against: {results[0]['baseline']}" if results else "",
             ("| method | pairs | mean ΔTRE per pair (mm) [95% CI] | better / worse | sign p "
              "| mean ΔDice [95% CI] | better / worse | sign p |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['pairs']} | {r['tre_mean_change_mm']:+.2f} [{r['tre_ci_mm'][0]:+.2f}, "
            f"{r['tre_ci_mm'][1]:+.2f}] | {r['tre_better']} / {r['tre_worse']} | {r['tre_sign_p']:.3f} | "
            f"{r['dice_mean_change']:+.3f} [{r['dice_ci'][0]:+.3f}, {r['dice_ci'][1]:+.3f}] | "
            f"{r['dice_better']} / {r['dice_worse']} | {r['dice_sign_p']:.3f} |")
    return "\n".join(lines)

"""Registration accuracy metrics, as defined in the data set's README.

* landmark TRE: distance (mm, fixed LPS space) between the centroids of a warped moving
  landmark (channels >= 1) and the corresponding fixed landmark; centroids are weighted by the
  label values clipped to [0, 1]; a warped landmark whose values sum to < 0.5 (warped out of
  view) counts as an infinite error;
* gland Dice: channel 0, thresholded at 0.5;
* HD95: symmetric 95th percentile surface distance of the gland in mm;
* folding fraction: share of voxels whose Jacobian determinant is <= 0.

Label arrays are (C, z, y, x) numpy arrays on the same :class:`~labelreg.grid.Grid`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._sitk import sitk
from .errors import LabelRegError
from .grid import Grid
from .transforms import jacobian_determinant

#: a warped landmark whose clipped values sum to less than this is "out of view" (TRE = inf)
MIN_WARPED_MASS = 0.5


def _channels(array) -> np.ndarray:
    array = np.asarray(getattr(array, "array", array), dtype=np.float64)
    return array[None] if array.ndim == 3 else array


def centroid_lps(channel: np.ndarray, grid: Grid, min_mass: float = 0.0) -> np.ndarray | None:
    """Centroid (LPS mm) of a (z, y, x) label weighted by its values clipped to [0, 1];
    None when the total weight is zero or below ``min_mass``."""
    weights = np.clip(np.asarray(channel, dtype=np.float64), 0.0, 1.0)
    mass = float(weights.sum())
    if mass <= 0.0 or mass < min_mass:
        return None
    k, j, i = (np.arange(n, dtype=np.float64) for n in weights.shape)
    ci = float((weights.sum(axis=(0, 1)) * i).sum()) / mass
    cj = float((weights.sum(axis=(0, 2)) * j).sum()) / mass
    ck = float((weights.sum(axis=(1, 2)) * k).sum()) / mass
    return (grid.index_to_lps @ np.array([ci, cj, ck, 1.0]))[:3]


def landmark_tre_mm(warped_channels, fixed_channels, grid: Grid) -> list:
    """TRE (mm) of every landmark channel (1 .. C-1), in channel order.

    A warped landmark with a clipped sum below 0.5 gives ``inf``; an empty fixed landmark
    (nothing to compare with) gives ``nan``.
    """
    warped, fixed = _channels(warped_channels), _channels(fixed_channels)
    _check_same(warped, fixed)
    out = []
    for c in range(1, warped.shape[0]):
        target = centroid_lps(fixed[c], grid)
        if target is None:
            out.append(math.nan)
            continue
        found = centroid_lps(warped[c], grid, min_mass=MIN_WARPED_MASS)
        out.append(math.inf if found is None else float(np.linalg.norm(found - target)))
    return out


def dice(a, b, threshold: float = 0.5) -> float:
    """Dice of ``a >= threshold`` and ``b >= threshold`` (1.0 when both are empty)."""
    a = np.asarray(a) >= threshold
    b = np.asarray(b) >= threshold
    if a.shape != b.shape:
        raise LabelRegError(f"dice: shapes differ ({a.shape} vs {b.shape})")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface_distance_map(mask: np.ndarray, grid: Grid):
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    grid.apply_to_sitk(image)  # distances use the spacing; the (orthonormal) direction does not change them
    contour = sitk.LabelContour(image, fullyConnected=False)
    distance = sitk.SignedMaurerDistanceMap(contour, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    surface = sitk.GetArrayViewFromImage(contour).astype(bool)
    return surface, np.maximum(sitk.GetArrayFromImage(distance), 0.0)


def hd95_mm(a, b, grid: Grid, threshold: float = 0.5, percentile: float = 95.0) -> float:
    """Symmetric 95th percentile Hausdorff distance (mm) between the surfaces of
    ``a >= threshold`` and ``b >= threshold`` (distances from each surface to the other,
    pooled). ``inf`` if exactly one mask is empty, ``nan`` if both are."""
    a = np.asarray(a) >= threshold
    b = np.asarray(b) >= threshold
    if a.shape != b.shape or a.shape != grid.shape_zyx:
        raise LabelRegError(f"hd95: shapes {a.shape} and {b.shape} must both be the grid's {grid.shape_zyx}")
    if not a.any() or not b.any():
        return math.nan if not a.any() and not b.any() else math.inf
    surface_a, dist_to_a = _surface_distance_map(a, grid)
    surface_b, dist_to_b = _surface_distance_map(b, grid)
    distances = np.concatenate([dist_to_b[surface_a], dist_to_a[surface_b]])
    return float(np.percentile(distances, percentile))


def folding_fraction(ddf_lps, grid: Grid) -> float:
    """Fraction of interior voxels where the Jacobian determinant of ``x -> x + ddf(x)`` is <= 0.

    ``ddf_lps``: (z, y, x, 3) (or (B, z, y, x, 3)) displacement in mm, LPS, on ``grid``.
    """
    field = torch.as_tensor(np.asarray(ddf_lps), dtype=torch.float64)
    if field.dim() == 4:
        field = field[None]
    if field.dim() != 5 or tuple(field.shape[1:4]) != grid.shape_zyx or field.shape[-1] != 3:
        raise LabelRegError(f"displacement field shape {tuple(field.shape)} does not match grid {grid.shape_zyx}")
    if min(grid.shape_zyx) < 3:
        return 0.0
    det = jacobian_determinant(field, grid)
    return float((det <= 0).double().mean())


def _check_same(warped: np.ndarray, fixed: np.ndarray) -> None:
    if warped.shape[0] != fixed.shape[0]:
        raise LabelRegError(
            f"warped labels have {warped.shape[0]} channels but fixed labels have {fixed.shape[0]}; "
            "channel c of the moving labels must correspond to channel c of the fixed labels"
        )
    if warped.shape != fixed.shape:
        raise LabelRegError(f"warped labels {warped.shape} and fixed labels {fixed.shape} are not on the same grid")


def evaluate_pair(warped_labels, fixed_labels, grid: Grid, ddf_lps=None, hd95: bool = True) -> dict:
    """All metrics of one pair: ``dice``, ``hd95_mm`` (gland; None when ``hd95`` is False),
    ``tre_mm`` (list per landmark), ``tre_median_mm``, ``n_landmarks`` and ``folding_fraction``
    (None without a field)."""
    warped, fixed = _channels(warped_labels), _channels(fixed_labels)
    _check_same(warped, fixed)
    tre = landmark_tre_mm(warped, fixed, grid)
    valid = [t for t in tre if not math.isnan(t)]
    return {
        "dice": dice(warped[0], fixed[0]),
        "hd95_mm": hd95_mm(warped[0], fixed[0], grid) if hd95 else None,
        "tre_mm": tre,
        "tre_median_mm": _percentile(valid, 50),
        "n_landmarks": len(valid),
        "folding_fraction": None if ddf_lps is None else folding_fraction(ddf_lps, grid),
    }


def _percentile(values, q: float) -> float:
    """Percentile that treats ``inf`` as a real (infinitely bad) value; nan when empty."""
    values = np.sort(np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64))
    if values.size == 0:
        return math.nan
    finite = values[np.isfinite(values)]
    if finite.size == values.size:
        return float(np.percentile(values, q))
    big = (float(finite.max()) if finite.size else 0.0) * 10 + 1e9
    result = float(np.percentile(np.where(np.isfinite(values), values, big), q))
    return math.inf if finite.size == 0 or result > float(finite.max()) else result


def summarize(rows) -> dict:
    """Summary over pairs (rows from :func:`evaluate_pair`): median and 90th percentile TRE over
    all landmarks of all pairs, median and 10th percentile gland Dice, median HD95, mean
    folding fraction (over the rows that have one)."""
    rows = list(rows)
    tre = [t for r in rows for t in r.get("tre_mm", [])]
    dices = [r["dice"] for r in rows if r.get("dice") is not None]
    hd = [r["hd95_mm"] for r in rows if r.get("hd95_mm") is not None]
    folding = [r["folding_fraction"] for r in rows if r.get("folding_fraction") is not None]
    n_inf = sum(1 for t in tre if math.isinf(t))
    return {
        "pairs": len(rows),
        "landmarks": sum(1 for t in tre if not math.isnan(t)),
        "landmarks_out_of_view": n_inf,
        "tre_median_mm": _percentile(tre, 50),
        "tre_p90_mm": _percentile(tre, 90),
        "dice_median": _percentile(dices, 50),
        "dice_p10": _percentile(dices, 10),
        "hd95_median_mm": _percentile(hd, 50),
        "folding_fraction_mean": float(np.mean(folding)) if folding else None,
    }


def format_metrics(values: dict) -> str:
    """One line for a row of :func:`evaluate_pair` or a :func:`summarize` result."""
    parts = []
    for key, label, fmt in (("tre_median_mm", "TRE median", "{:.2f} mm"), ("tre_p90_mm", "TRE p90", "{:.2f} mm"),
                            ("dice", "Dice", "{:.3f}"), ("dice_median", "Dice median", "{:.3f}"),
                            ("dice_p10", "Dice p10", "{:.3f}"), ("hd95_mm", "HD95", "{:.2f} mm"),
                            ("hd95_median_mm", "HD95 median", "{:.2f} mm"),
                            ("folding_fraction", "folding", "{:.4%}"), ("folding_fraction_mean", "folding", "{:.4%}")):
        if values.get(key) is not None:
            parts.append(f"{label} " + fmt.format(values[key]))
    if values.get("n_landmarks") is not None:
        parts.append(f"{values['n_landmarks']} landmarks")
    if values.get("landmarks_out_of_view"):
        parts.append(f"{values['landmarks_out_of_view']} landmarks out of view")
    return ", ".join(parts)

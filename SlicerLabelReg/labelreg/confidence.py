"""How far to trust a registration, from what inference already has (no labels).

A model with gland localisers has, besides its transform, a gland probability map of each
image. :func:`features` measures what they say about the result: whether the MR gland, carried
by the final transform, lands on the TRUS gland; how sure each localiser is; how large the
glands are; whether the TRUS volume cuts its gland; how far the local net moved. A
:class:`Calibration` (fitted on cross-validation, each pair scored by the model that never saw
it, and stored in the model's metadata) turns them into a score in [0, 1], the estimated
probability that the registration's mean landmark error is within :data:`GOOD_TRE_MM`, and a
verdict: good, check or doubtful.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .choices import VERDICT_ADVICE
from .grid import Grid
from .warp import sample

#: a registration is "good" when its mean landmark error is within this (mm)
GOOD_TRE_MM = 8.0
#: the TRUS gland's share within this distance of the TRUS image's border (mm) is "at the border"
BORDER_MM = 3.0
VERDICTS = tuple(VERDICT_ADVICE)


def features(transform, fixed_map: torch.Tensor, fixed_map_grid: Grid, moving_map: torch.Tensor,
             moving_map_grid: Grid, fixed_grid: Grid) -> dict:
    """Label-free measures of one registration.

    Args:
        transform: the registration's :class:`labelreg.engine.FixedToMoving`.
        fixed_map, moving_map: (1, 1, ...) gland probabilities of the two localisers on their grids.
        fixed_grid: the TRUS image's own grid (for the border).
    Returns: {"gland_agreement": soft Dice of the TRUS gland map and the MR gland map carried onto
    it by the transform; "fixed_certainty" / "moving_certainty": mean |2p - 1| where p > 0.1;
    "fixed_gland_ml" / "moving_gland_ml": the predicted glands' volumes (p > 0.5);
    "gland_at_border": the TRUS gland's share near the TRUS image's border; "local_max_mm": the
    local net's largest displacement (0 without a local net)}.
    """
    fixed_p = fixed_map[0, 0]
    with torch.inference_mode():
        where = torch.cat([moving_points for _, _, moving_points in transform.slabs(fixed_map_grid)])
        carried = sample(moving_map.to(where.dtype), moving_map_grid, where[None])[0, 0]
        agreement = 2 * (fixed_p * carried).sum() / (fixed_p.sum() + carried.sum()).clamp_min(1e-9)
        local = transform.ddf_net_lps
        local_max = 0.0 if local is None else float(local.norm(dim=-1).max())
    return {
        "gland_agreement": float(agreement),
        "fixed_certainty": _certainty(fixed_p), "moving_certainty": _certainty(moving_map[0, 0]),
        "fixed_gland_ml": _volume_ml(fixed_p, fixed_map_grid), "moving_gland_ml": _volume_ml(moving_map[0, 0], moving_map_grid),
        "gland_at_border": _at_border(fixed_p, fixed_map_grid, fixed_grid),
        "local_max_mm": local_max,
    }


def _certainty(p: torch.Tensor) -> float:
    p = p[p > 0.1]
    return float((2 * p - 1).abs().mean()) if p.numel() else 0.0


def _volume_ml(p: torch.Tensor, grid: Grid) -> float:
    return float((p > 0.5).sum()) * float(np.prod(grid.spacing)) / 1000.0


def _at_border(p: torch.Tensor, map_grid: Grid, image_grid: Grid) -> float:
    """Share of the voxels with p > 0.5 whose centres lie within :data:`BORDER_MM` of a face of
    ``image_grid`` (a gland the field of view cuts)."""
    gland = (p > 0.5).cpu().numpy().ravel()
    if not gland.any():
        return 0.0
    points = map_grid.points_lps(dtype=torch.float64).reshape(-1, 3).numpy()[gland]
    to_index = image_grid.lps_to_index
    ijk = points @ to_index[:3, :3].T + to_index[:3, 3]
    size = np.asarray(image_grid.size, dtype=np.float64)
    inside_mm = np.minimum(ijk + 0.5, size - 0.5 - ijk) * np.asarray(image_grid.spacing)
    return float((inside_mm.min(axis=1) < BORDER_MM).mean())


@dataclass(frozen=True)
class Calibration:
    """A logistic model of P(mean landmark error <= GOOD_TRE_MM) on standardised features, and
    the score thresholds of the verdicts, as fitted on cross-validation (``labelreg-train
    calibrate``) and stored in a model's metadata under "confidence"."""

    weights: dict  # feature -> weight on (value - mean) / std
    means: dict
    stds: dict
    bias: float
    good_above: float
    doubtful_below: float

    @classmethod
    def from_dict(cls, values: dict) -> Calibration:
        known = {k: values[k] for k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def score(self, values: dict) -> float:
        z = self.bias + sum(w * (values[k] - self.means[k]) / self.stds[k] for k, w in self.weights.items())
        return 1.0 / (1.0 + math.exp(-z))

    def verdict(self, score: float) -> str:
        if score >= self.good_above:
            return "good"
        return "doubtful" if score < self.doubtful_below else "check"

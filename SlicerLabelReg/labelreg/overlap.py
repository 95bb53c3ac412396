"""The translation that best overlaps two gland probability maps.

A predicted gland's centroid moves with every voxel the localiser adds or misses: a leak into a
neighbouring structure, or a TRUS gland cut by the field of view, pulls it by several
millimetres. The overlap of the two maps is decided by their bulk instead. For a fixed map
p_f on its grid and a moving map p_m, :func:`overlap_translation_lps` finds the translation t
(fixed -> moving, LPS mm) that maximises the soft Dice

    2 sum_x p_f(x) p_m(x + t) / (sum_x p_f(x) + sum_x p_m(x + t)),

x over the fixed grid (so the moving map counts only where the fixed image sees it). Every
whole-voxel shift of the fixed grid within a radius of a starting translation is scored at once
by FFT correlation; a parabola through the best shift and its neighbours refines each axis.
"""
from __future__ import annotations

import math

import torch

from .grid import Grid
from .warp import sample


def overlap_translation_lps(fixed_p: torch.Tensor, fixed_grid: Grid, moving_p: torch.Tensor, moving_grid: Grid,
                            start_lps: torch.Tensor, radius_mm: float = 12.0) -> torch.Tensor:
    """(B, 3) translations (fixed -> moving, LPS mm) maximising the soft Dice of the two maps.

    Args:
        fixed_p: (B, 1, nz, ny, nx) fixed probabilities on ``fixed_grid``.
        moving_p: (B, 1, mz, my, mx) moving probabilities on ``moving_grid``.
        start_lps: (B, 3) translation the search is centred on (e.g. between the centroids).
        radius_mm: half-width of the search along each axis of ``fixed_grid``.
    """
    if fixed_p.ndim != 5 or moving_p.ndim != 5 or fixed_p.shape[0] != moving_p.shape[0]:
        raise ValueError(f"maps must be (B, 1, z, y, x) with the same B, got {tuple(fixed_p.shape)} and "
                         f"{tuple(moving_p.shape)}")
    if radius_mm <= 0:
        raise ValueError(f"radius_mm must be positive, got {radius_mm}")
    pad_ijk = [max(1, math.ceil(radius_mm / s - 1e-6)) for s in fixed_grid.spacing]
    pad_zyx = pad_ijk[::-1]
    # the fixed grid grown by the search radius: the moving map is seen there, moved by the start
    step = fixed_grid.direction_matrix * fixed_grid.spacing  # columns: LPS step of one voxel along i, j, k
    grown = Grid(tuple(n + 2 * p for n, p in zip(fixed_grid.size, pad_ijk)), fixed_grid.spacing,
                 tuple(fixed_grid.index_to_lps[:3, 3] - step @ pad_ijk), fixed_grid.direction)
    dtype = torch.float64
    points = grown.points_lps(dtype=dtype, device=fixed_p.device)
    start = start_lps.to(dtype)
    seen = sample(moving_p.to(dtype), moving_grid, points[None] + start[:, None, None, None, :])[:, 0]
    fixed = torch.zeros_like(seen)
    inside = torch.zeros_like(seen[0])
    region = tuple(slice(p, p + n) for p, n in zip(pad_zyx, fixed_grid.shape_zyx))
    fixed[(slice(None), *region)] = fixed_p[:, 0].to(dtype)
    inside[region] = 1.0
    # correlation at lag k: sum_y a(y) b(y + k), circular, but no lag within the pads wraps
    dims = (-3, -2, -1)
    spectrum = torch.fft.rfftn(seen, dim=dims)
    overlap = torch.fft.irfftn(torch.fft.rfftn(fixed, dim=dims).conj() * spectrum, s=seen.shape[-3:], dim=dims)
    moving_mass = torch.fft.irfftn(torch.fft.rfftn(inside).conj() * spectrum, s=seen.shape[-3:], dim=dims)
    # lags -p..p along each axis, brought to the centre of a (2p + 1)^3 block
    lags = [torch.arange(-p, p + 1, device=fixed_p.device) % n for p, n in zip(pad_zyx, seen.shape[-3:])]
    block = (slice(None), *torch.meshgrid(*lags, indexing="ij"))
    fixed_mass = fixed.flatten(1).sum(1)[:, None, None, None]
    dice = 2 * overlap[block] / (fixed_mass + moving_mass[block]).clamp_min(1e-9)
    flat, (_, h, w) = dice.flatten(1).argmax(1), dice.shape[1:]  # (torch.unravel_index imports sympy: ~1 s)
    best = torch.stack([flat // (h * w), flat // w % h, flat % w], dim=1)  # (B, 3) zyx
    shift_zyx = best.to(dtype) - torch.tensor(pad_zyx, dtype=dtype, device=fixed_p.device) + _vertex(dice, best)
    step_t = torch.as_tensor(step, dtype=dtype, device=fixed_p.device)
    return (start + shift_zyx.flip(1) @ step_t.T).to(start_lps.dtype)


def _vertex(scores: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """(B, 3) sub-voxel offsets of the peaks ``best`` (B, 3) of ``scores`` (B, z, y, x): per axis, the
    vertex of the parabola through the peak and its two neighbours, within half a voxel (0 at the
    block's edge, or where the scores do not curve down)."""
    batch = torch.arange(best.shape[0], device=best.device)
    centre = scores[(batch, *best.T)]
    offsets = torch.zeros(best.shape, dtype=scores.dtype, device=scores.device)
    for axis in range(3):
        size = scores.shape[axis + 1]
        below, above = best.clone(), best.clone()
        below[:, axis] = (best[:, axis] - 1).clamp(min=0)
        above[:, axis] = (best[:, axis] + 1).clamp(max=size - 1)
        lower, upper = scores[(batch, *below.T)], scores[(batch, *above.T)]
        curvature = lower - 2 * centre + upper
        inner = (best[:, axis] > 0) & (best[:, axis] < size - 1) & (curvature < 0)
        vertex = 0.5 * (lower - upper) / torch.where(inner, curvature, -torch.ones_like(curvature))
        offsets[:, axis] = torch.where(inner, vertex.clamp(-0.5, 0.5), torch.zeros_like(vertex))
    return offsets

"""Sampling volumes at physical points: the one place that turns LPS positions into
``torch.nn.functional.grid_sample`` coordinates.

Every warp in the project (images, labels, displacement fields, training and
inference) is "sample the source volume at these LPS points"; the transforms only
decide which points.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .grid import Grid


def lps_to_normalized(points_lps: torch.Tensor, source: Grid) -> torch.Tensor:
    """Map LPS points (..., 3) to grid_sample coordinates of ``source`` (align_corners=True).

    The last axis stays (x, y, z) = (i, j, k), which is grid_sample's (W, H, D) order for a
    volume stored as (D, H, W) = (nz, ny, nx): no axis flip is needed beyond this ordering.
    """
    m = torch.as_tensor(source.lps_to_index, dtype=points_lps.dtype, device=points_lps.device)
    index = points_lps @ m[:3, :3].T + m[:3, 3]
    size = torch.as_tensor(source.size, dtype=points_lps.dtype, device=points_lps.device)
    # A single-voxel axis maps every point to 0 (grid_sample would divide by zero otherwise).
    scale = torch.where(size > 1, 2.0 / (size - 1).clamp(min=1), torch.zeros_like(size))
    return index * scale - (size > 1).to(points_lps.dtype)


def sample(
    volume: torch.Tensor,
    source: Grid,
    points_lps: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Sample ``volume`` (B, C, nz, ny, nx) living on ``source`` at ``points_lps``.

    Args:
        volume: (B, C, nz, ny, nx) values on the ``source`` grid.
        source: geometry of ``volume``.
        points_lps: (B, D, H, W, 3) or (D, H, W, 3) LPS positions in mm (x, y, z last).
        mode: "bilinear" (trilinear in 3-D) or "nearest".
        padding_mode: value outside the source: "zeros" or "border".

    Returns:
        (B, C, D, H, W) samples.
    """
    if volume.dim() != 5:
        raise ValueError(f"volume must be (B, C, nz, ny, nx), got shape {tuple(volume.shape)}")
    if tuple(volume.shape[2:]) != source.shape_zyx:
        raise ValueError(
            f"volume shape {tuple(volume.shape[2:])} does not match its grid {source.shape_zyx}"
        )
    if points_lps.dim() == 4:
        points_lps = points_lps.unsqueeze(0).expand(volume.shape[0], *points_lps.shape)
    if points_lps.dim() != 5 or points_lps.shape[-1] != 3:
        raise ValueError(f"points_lps must be (B, D, H, W, 3), got {tuple(points_lps.shape)}")
    coords = lps_to_normalized(points_lps.to(volume.dtype), source)
    return F.grid_sample(volume, coords, mode=mode, padding_mode=padding_mode, align_corners=True)


def sample_field(field_lps: torch.Tensor, source: Grid, points_lps: torch.Tensor) -> torch.Tensor:
    """Sample a vector field (B, D, H, W, 3) living on ``source`` at ``points_lps`` (trilinear,
    the border value outside): (B, D', H', W', 3). How a displacement field on the network grid
    reaches a finer grid (the fixed image at inference, the loss grid in training)."""
    if field_lps.dim() != 5 or field_lps.shape[-1] != 3:
        raise ValueError(f"field_lps must be (B, D, H, W, 3), got {tuple(field_lps.shape)}")
    return sample(field_lps.permute(0, 4, 1, 2, 3), source, points_lps, padding_mode="border").permute(0, 2, 3, 4, 1)

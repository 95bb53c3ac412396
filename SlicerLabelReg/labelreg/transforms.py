"""Transforms in physical space.

Conventions used everywhere in the project:

* every transform maps a **fixed** (TRUS) LPS point to the **moving** (MR) LPS point that
  lands on it (ITK's resampling direction): ``x_moving = affine_lps @ x_fixed`` and
  ``x_moving = x_fixed + ddf_lps(x_fixed)``;
* the networks work in the *grid frame* of the network grid: millimetres along the grid's
  index axes, origin at the grid centre. :func:`affine_from_params` and
  :func:`ddf_grid_to_lps` are the only places that turn network outputs into LPS.
"""
from __future__ import annotations

import numpy as np
import torch

from .choices import GRID_ALIGNMENTS
from .grid import Grid


def _grid_frame(grid: Grid, dtype, device):
    rotation = torch.as_tensor(grid.direction_matrix, dtype=dtype, device=device)
    centre = torch.as_tensor(grid.center_lps, dtype=dtype, device=device)
    return rotation, centre


def half_extent_mm(grid: Grid) -> float:
    """Scalar scale of the affine translation parameters: the mean half extent of the grid."""
    return float(np.mean(grid.extent_mm) / 2.0)


def affine_from_params(params: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Turn the global net's 12 outputs into 4x4 LPS matrices (fixed -> moving).

    ``params[:, :9]`` is added to the identity matrix (zeros give the identity), and
    ``params[:, 9:]`` is a translation in units of :func:`half_extent_mm`, both in the grid
    frame (grid axes, origin at the grid centre), so that the transform acts about the centre
    of the fixed image.

    Args:
        params: (B, 12).
        grid: the network grid the parameters were predicted on.
    Returns:
        (B, 4, 4) matrices with ``x_moving = A @ x_fixed`` in LPS mm.
    """
    if params.dim() != 2 or params.shape[1] != 12:
        raise ValueError(f"affine params must be (B, 12), got {tuple(params.shape)}")
    b = params.shape[0]
    rotation, centre = _grid_frame(grid, params.dtype, params.device)
    linear_grid = torch.eye(3, dtype=params.dtype, device=params.device) + params[:, :9].view(b, 3, 3)
    translation_grid = params[:, 9:] * half_extent_mm(grid)
    linear = rotation @ linear_grid @ rotation.T
    translation = centre + translation_grid @ rotation.T - (linear @ centre.unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(b, 4, 4, dtype=params.dtype, device=params.device)
    out[:, :3, :3] = linear
    out[:, :3, 3] = translation
    out[:, 3, 3] = 1.0
    return out


def ddf_grid_to_lps(ddf_grid_mm: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Rotate a displacement field from grid-axis components to LPS components.

    Args:
        ddf_grid_mm: (B, 3, D, H, W), channel ``a`` = displacement in mm along index axis ``a``
            (i, j, k) of ``grid``.
    Returns:
        (B, D, H, W, 3) displacement in LPS mm (x, y, z last), ready to add to ``points_lps``.
    """
    rotation = torch.as_tensor(grid.direction_matrix, dtype=ddf_grid_mm.dtype, device=ddf_grid_mm.device)
    return torch.einsum("ab,nbzyx->nzyxa", rotation, ddf_grid_mm)


def initial_transform(fixed: Grid, moving: Grid, mode: str = "centers") -> np.ndarray:
    """4x4 LPS matrix (fixed -> moving) used before the networks.

    ``"centers"`` maps the fixed volume's centre to the moving volume's centre (a pure
    translation, which keeps the true scale); ``"headers"`` trusts the file headers (identity).
    """
    if mode not in GRID_ALIGNMENTS:
        raise ValueError(f"initial alignment must be one of {GRID_ALIGNMENTS}, got {mode!r}")
    out = np.eye(4)
    if mode == "centers":
        out[:3, 3] = moving.center_lps - fixed.center_lps
    return out


def transform_points(affine_lps: torch.Tensor, points_lps: torch.Tensor,
                     ddf_lps: torch.Tensor | None = None) -> torch.Tensor:
    """Composite mapping ``x -> A (x + u(x))``: the local field acts first, in fixed space,
    then the affine; this is exactly the two nets applied one after the other.

    Args:
        affine_lps: (B, 4, 4) fixed -> moving.
        points_lps: (D, H, W, 3) or (B, D, H, W, 3) fixed LPS points.
        ddf_lps: optional (B, D, H, W, 3) local displacement (mm, LPS) at those points.
    Returns:
        (B, D, H, W, 3) moving LPS points.
    """
    if points_lps.dim() == 4:
        points_lps = points_lps.unsqueeze(0)
    if ddf_lps is not None:
        points_lps = points_lps + ddf_lps
    linear = affine_lps[:, None, None, None, :3, :3]
    shift = affine_lps[:, None, None, None, :3, 3]
    return (linear @ points_lps.unsqueeze(-1)).squeeze(-1) + shift


def compose_ddf(affine_lps: torch.Tensor, points_lps: torch.Tensor,
                ddf_lps: torch.Tensor | None = None) -> torch.Tensor:
    """The composite of affine and local field as one displacement field on the fixed grid:
    ``d(x) = A (x + u(x)) - x`` in LPS mm, shape (B, D, H, W, 3)."""
    return transform_points(affine_lps, points_lps, ddf_lps) - points_lps


def jacobian_determinant(ddf_lps: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + d(x)``, by central differences in mm.

    Args:
        ddf_lps: (B, D, H, W, 3) on ``grid``.
    Returns:
        (B, D-2, H-2, W-2) determinants at interior voxels.
    """
    if ddf_lps.dim() != 5 or min(ddf_lps.shape[1:4]) < 3:
        raise ValueError(f"need a (B, D, H, W, 3) field with at least 3 voxels per axis, got {tuple(ddf_lps.shape)}")
    u = ddf_lps
    # derivatives along index axes k, j, i (array axes 1, 2, 3)
    dk = (u[:, 2:, 1:-1, 1:-1] - u[:, :-2, 1:-1, 1:-1]) / 2
    dj = (u[:, 1:-1, 2:, 1:-1] - u[:, 1:-1, :-2, 1:-1]) / 2
    di = (u[:, 1:-1, 1:-1, 2:] - u[:, 1:-1, 1:-1, :-2]) / 2
    du_dindex = torch.stack([di, dj, dk], dim=-1)  # (..., 3 components, 3 index axes)
    index_to_lps = torch.as_tensor(grid.index_to_lps[:3, :3], dtype=u.dtype, device=u.device)
    du_dx = du_dindex @ torch.linalg.inv(index_to_lps)
    jac = du_dx + torch.eye(3, dtype=u.dtype, device=u.device)
    return torch.linalg.det(jac)


# ----------------------------------------------------------------- LPS <-> RAS
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix_lps_to_ras(matrix_lps: np.ndarray) -> np.ndarray:
    """Express a 4x4 point transform given in LPS in RAS (F M F, with F = diag(-1, -1, 1, 1))."""
    return LPS_TO_RAS @ np.asarray(matrix_lps, dtype=np.float64) @ LPS_TO_RAS


matrix_ras_to_lps = matrix_lps_to_ras  # F is its own inverse


def vectors_lps_to_ras(vectors_lps: np.ndarray) -> np.ndarray:
    """Negate the first two components of vectors (..., 3): LPS <-> RAS."""
    out = np.array(vectors_lps, dtype=np.float32 if np.asarray(vectors_lps).dtype == np.float32 else np.float64)
    out[..., :2] *= -1
    return out


vectors_ras_to_lps = vectors_lps_to_ras

"""Training losses of the label-driven method, in physical units.

* :func:`multiscale_dice`: 1 - mean soft Dice over several Gaussian scales (mm).
* :func:`bending_energy`: mean squared second derivatives of the displacement, in 1/mm^2.
All take (B, 1, D, H, W) label maps on one isotropic-or-not grid with spacing in mm.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-6


def _gaussian_kernel(sigma_vox: float, dtype, device) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma_vox))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    return k / k.sum()


def _blur_matrix(n: int, sigma_vox: float, dtype, device) -> torch.Tensor:
    """(n, n) matrix M with (M @ v) = the Gaussian blur of v along one axis, the edge values
    repeated beyond the ends (replicate padding folded in)."""
    k = _gaussian_kernel(sigma_vox, dtype, device)
    radius = k.numel() // 2
    rows = torch.arange(n, device=device)[:, None]
    cols = (rows + torch.arange(-radius, radius + 1, device=device)[None]).clamp(0, n - 1)
    return torch.zeros(n, n, dtype=dtype, device=device).index_put_((rows.expand_as(cols), cols), k.expand_as(cols),
                                                                    accumulate=True)


def gaussian_blur(x: torch.Tensor, sigma_mm: float, spacing) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, D, H, W) with ``sigma_mm`` (kernel to 3 sigma, edge values
    repeated); ``spacing`` is the (x, y, z) mm. Each axis is one matrix product, which on a CPU
    is several times faster than a depthwise convolution for the wide kernels of fine grids."""
    if sigma_mm <= 0:
        return x
    # array axes (D, H, W) = (z, y, x): spacing reversed
    for axis, step in zip((2, 3, 4), tuple(spacing)[::-1]):
        m = _blur_matrix(x.shape[axis], sigma_mm / step, x.dtype, x.device)
        x = torch.movedim(torch.movedim(x, axis, -1) @ m.T, -1, axis)
    return x


def soft_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample soft Dice (B,) with squared terms in the denominator, 2<p,t> / (|p|^2 + |t|^2),
    which is 1 exactly when p = t, also for soft (blurred) maps."""
    dims = tuple(range(1, pred.dim()))
    inter = (pred * target).sum(dims)
    return (2 * inter + EPS) / (pred.pow(2).sum(dims) + target.pow(2).sum(dims) + EPS)


def multiscale_dice(pred: torch.Tensor, target: torch.Tensor, spacing, sigmas_mm=(0, 1.5, 3, 6, 12)) -> torch.Tensor:
    """1 - mean over scales and batch of soft Dice between Gaussian-blurred maps."""
    scores = [soft_dice(gaussian_blur(pred, s, spacing), gaussian_blur(target, s, spacing)) for s in sigmas_mm]
    return 1 - torch.stack(scores).mean(0).mean()


def bending_energy(ddf: torch.Tensor, spacing) -> torch.Tensor:
    """Bending energy of a displacement field (B, D, H, W, 3) in mm on a grid whose axes are
    orthonormal with ``spacing`` (x, y, z) mm: the mean over voxels of the squared second
    derivatives (mixed terms counted twice), in 1/mm^2.

    An affine field has zero bending energy; a rotation of the grid axes leaves it unchanged.
    """
    u = ddf.permute(0, 4, 1, 2, 3)  # (B, 3, D, H, W)
    steps = dict(zip((2, 3, 4), (float(s) for s in tuple(spacing)[::-1])))

    def diff(t, axis):  # central first difference, shortens the axis by 2
        n = t.shape[axis]
        return (t.narrow(axis, 2, n - 2) - t.narrow(axis, 0, n - 2)) / (2 * steps[axis])

    def diff2(t, axis):  # second difference, shortens the axis by 2
        n = t.shape[axis]
        return (t.narrow(axis, 2, n - 2) - 2 * t.narrow(axis, 1, n - 2) + t.narrow(axis, 0, n - 2)) / steps[axis] ** 2

    axes = (2, 3, 4)
    energy = sum(diff2(u, a).pow(2).sum(1).mean() for a in axes)
    for i, a in enumerate(axes):
        for b in axes[i + 1:]:
            energy = energy + 2 * diff(diff(u, a), b).pow(2).sum(1).mean()
    return energy

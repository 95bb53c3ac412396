"""The same physical image stored another way: the storage variants a registration must not
depend on (the invariance tests and ``benchmarks/storage_invariance.py`` use them).

Each function returns a new :class:`~labelreg.volume.Volume` showing the same physical content:
reordered or mirrored voxel axes with a matching direction (exact), an oblique or finer grid
(trilinear resampling, so nearly exact), a margin of zeros, or other pixel units. Image arrays
are (z, y, x), label channels (C, z, y, x).
"""
from __future__ import annotations

import numpy as np
import torch

from .grid import Grid
from .metrics import centroid_lps, dice
from .phantom import rotation_matrix
from .volume import Volume
from .warp import sample

#: direction = identity: how DICOM-derived volumes are often stored (LPS axes)
LPS_AXES = np.eye(3)


def reordered(volume: Volume, order, flips) -> Volume:
    """Index axis ``a`` of the result is axis ``order[a]`` of ``volume`` (0, 1, 2 = i, j, k),
    reversed where ``flips[a]``; the direction and origin follow, so nothing moves in space."""
    order, flips = [int(a) for a in order], [bool(f) for f in flips]
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"order must be a permutation of (0, 1, 2), got {order}")
    grid = volume.grid
    lead = volume.array.ndim - 3
    # array axis of index axis a is (lead + 2 - a); result axis of index axis a is (lead + 2 - a)
    array = np.transpose(volume.array, list(range(lead)) + [lead + 2 - order[a] for a in (2, 1, 0)])
    array = np.flip(array, [lead + 2 - a for a in range(3) if flips[a]])
    columns = grid.direction_matrix @ np.diag(grid.spacing)
    first = np.array([grid.size[order[a]] - 1 if flips[a] else 0 for a in range(3)], dtype=np.float64)
    start = np.zeros(3)
    start[order] = first
    origin = grid.index_to_lps[:3, :3] @ start + grid.index_to_lps[:3, 3]
    direction = np.stack([columns[:, order[a]] / grid.spacing[order[a]] * (-1 if flips[a] else 1)
                          for a in range(3)], axis=1)
    new = Grid(tuple(grid.size[a] for a in order), tuple(grid.spacing[a] for a in order), tuple(origin),
               tuple(direction.ravel()))
    return Volume(np.ascontiguousarray(array), new, volume.name)


def along_axes(volume: Volume, axes=LPS_AXES) -> Volume:
    """An axis-aligned ``volume`` re-stored with index axes along ``axes`` (3x3 LPS columns,
    each a signed axis of the volume's own direction)."""
    inner = np.asarray(axes, dtype=np.float64).T @ volume.grid.direction_matrix  # rows: new axes
    order = np.abs(inner).argmax(axis=1)
    if not np.allclose(np.abs(inner[range(3), order]), 1, atol=1e-6):
        raise ValueError("along_axes needs a volume whose axes are signed versions of the target axes")
    return reordered(volume, order, inner[range(3), order] < 0)


def resampled_on(volume: Volume, grid: Grid) -> Volume:
    """``volume`` sampled (trilinear, zeros outside) at the voxel centres of ``grid``."""
    channels = torch.from_numpy(np.ascontiguousarray(volume.channels, dtype=np.float32))[None]
    out = sample(channels, volume.grid, grid.points_lps())[0].numpy()
    return Volume(out if volume.array.ndim == 4 else out[0], grid, volume.name)


def oblique_grid(grid: Grid, rotation: np.ndarray, spacing=None) -> Grid:
    """A grid about the same centre whose axes are ``grid``'s turned by ``rotation`` (3x3),
    covering ``grid``'s whole box, at ``spacing`` (default: ``grid``'s)."""
    return grid.resampled(grid.spacing if spacing is None else spacing, 1,
                          np.asarray(rotation, dtype=np.float64) @ grid.direction_matrix)


def respaced_grid(grid: Grid, spacing) -> Grid:
    """A grid with ``grid``'s centre and axes at ``spacing`` (3 values, mm), covering its box."""
    return oblique_grid(grid, np.eye(3), spacing)


def padded(volume: Volume, margin_mm: float) -> Volume:
    """``volume`` with ``margin_mm`` of zeros added on every side."""
    grid = volume.grid
    pad = [int(np.ceil(margin_mm / s - 1e-6)) for s in grid.spacing]  # i, j, k
    lead = volume.array.ndim - 3
    array = np.pad(volume.array, [(0, 0)] * lead + [(p, p) for p in pad[::-1]])
    origin = grid.index_to_lps[:3, :3] @ -np.asarray(pad, dtype=np.float64) + grid.index_to_lps[:3, 3]
    new = Grid(tuple(n + 2 * p for n, p in zip(grid.size, pad)), grid.spacing, tuple(origin), grid.direction)
    return Volume(array, new, volume.name)


def retyped(volume: Volume, dtype, low: float, high: float) -> Volume:
    """``volume``'s intensities mapped linearly onto [low, high] and stored as ``dtype``
    (e.g. uint8 0-255 for ultrasound, int16 for MR)."""
    array = volume.array.astype(np.float64)
    span = max(float(array.max() - array.min()), 1e-12)
    scaled = low + (array - array.min()) * (high - low) / span
    return Volume(np.round(scaled).astype(dtype), volume.grid, volume.name)


# ------------------------------------------------------------- pair variants
def _pair(fixed_fn=None, moving_fn=None):
    """A variant re-storing the fixed image with ``fixed_fn`` and the moving image with
    ``moving_fn`` (None: as it is); the moving labels follow the moving image."""
    def apply(fixed: Volume, moving: Volume, labels: Volume | None):
        if moving_fn is not None:
            moving, labels = moving_fn(moving), None if labels is None else moving_fn(labels)
        return (fixed if fixed_fn is None else fixed_fn(fixed)), moving, labels
    return apply


def _oblique(volume: Volume) -> Volume:
    """Resampled on a grid turned by 25 degrees about an oblique axis, covering the whole box."""
    return resampled_on(volume, oblique_grid(volume.grid, rotation_matrix((0.4, -0.7, 0.6), np.deg2rad(25.0))))


def _respaced(spacing):
    return lambda volume: resampled_on(volume, respaced_grid(volume.grid, spacing))


def _permuted(volume: Volume) -> Volume:
    return reordered(volume, (2, 0, 1), (True, False, True))


def _retyped(fixed: Volume, moving: Volume, labels: Volume | None):
    return retyped(fixed, np.uint8, 0, 255), retyped(moving, np.int16, -1000, 3000), labels


#: name -> (fixed, moving, moving labels) -> the same pair stored another way. The first six are
#: exact (the same voxel values); the rest resample (trilinear), so they agree to the interpolation.
PAIR_VARIANTS = {
    "identity direction (LPS, as from DICOM)": _pair(along_axes, along_axes),
    "axes permuted and flipped": _pair(_permuted, _permuted),
    "fixed only: identity direction": _pair(along_axes),
    "moving only: axes permuted and flipped": _pair(None, _permuted),
    "padded by 20 mm": _pair(lambda v: padded(v, 20.0), lambda v: padded(v, 20.0)),
    "uint8 TRUS, int16 MR": _retyped,
    "oblique, 25 degrees": _pair(_oblique, _oblique),
    "1.0 mm isotropic": _pair(_respaced((1.0, 1.0, 1.0)), _respaced((1.0, 1.0, 1.0))),
    "0.5 x 0.5 x 3 mm": _pair(_respaced((0.5, 0.5, 3.0)), _respaced((0.5, 0.5, 3.0))),
}
#: the variants that keep every voxel value (the rest resample)
EXACT_VARIANTS = tuple(PAIR_VARIANTS)[:6]


def agreement(labels: Volume, reference: Volume) -> dict:
    """How closely warped label channels agree with a reference result stored on another grid:
    ``gland_dice`` (channel 0, thresholded at 0.5, on the reference grid) and the largest
    distance (mm, LPS) between the two results' landmark centroids (channels 1...; inf where a
    landmark is warped out of view in one of them)."""
    seen = resampled_on(labels, reference.grid)
    centroids = [(centroid_lps(a, labels.grid), centroid_lps(b, reference.grid))
                 for a, b in zip(labels.channels[1:], reference.channels[1:])]
    distances = [np.inf if a is None or b is None else float(np.linalg.norm(a - b)) for a, b in centroids]
    return {"gland_dice": dice(seen.channels[0], reference.channels[0]),
            "landmark_shift_mm": max(distances, default=0.0)}

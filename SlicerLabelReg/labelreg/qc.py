"""Quality-control snapshot: a PNG with a few axial slices of the fixed image, one row
"before" (initial alignment) and one row "after" registration, with contours drawn on top.

Colours: warped moving gland (channel 0) yellow, warped moving landmarks red (contour and a
cross at the centroid), fixed gland cyan and fixed landmarks green when fixed labels are given.
Without labels, a checkerboard of the fixed and the warped moving image is drawn instead.
Pure numpy + SimpleITK (no matplotlib).
"""
from __future__ import annotations

import numpy as np

from ._sitk import sitk
from .io import AtomicFile
from .volume import Volume

GLAND = (255, 220, 0)
LANDMARK = (255, 40, 40)
FIXED_GLAND = (0, 220, 255)
FIXED_LANDMARK = (60, 255, 60)
ZOOM = 3
GAP = 6

# 3x5 bitmap glyphs for the row titles
_FONT = {
    "A": "010101111101101", "B": "110101110101110", "E": "111100110100111", "F": "111100110100100",
    "O": "111101101101111", "R": "110101110101101", "T": "111010010010010", " ": "000000000000000",
}


def _channels(labels):
    if labels is None:
        return None
    array = np.asarray(getattr(labels, "array", labels), dtype=np.float32)
    return array[None] if array.ndim == 3 else array


def choose_slices(masks, depth: int, count: int = 3) -> list:
    """``count`` axial indices spread through the gland (the first non-empty mask), else the volume."""
    for mask in masks:
        if mask is not None:
            ks = np.flatnonzero((mask > 0.5).any(axis=(1, 2)))
            if ks.size:
                lo, hi = int(ks.min()), int(ks.max())
                return sorted({round(lo + (hi - lo) * f) for f in np.linspace(0.2, 0.8, count)})
    return sorted({round((depth - 1) * f) for f in np.linspace(0.3, 0.7, count)})


def _to_grey(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
    if high <= low:
        low, high = float(image.min()), float(image.max()) + 1e-6
    return (np.clip((image - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _zoom(plane: np.ndarray, zy: int, zx: int) -> np.ndarray:
    return np.repeat(np.repeat(plane, zy, axis=0), zx, axis=1)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _draw_cross(rgb: np.ndarray, plane: np.ndarray, colour, zy: int, zx: int) -> None:
    weights = np.clip(plane, 0, 1)
    if weights.sum() < 0.05:
        return
    j, i = np.indices(plane.shape)
    cy = round(float((weights * j).sum() / weights.sum()) * zy + (zy - 1) / 2)
    cx = round(float((weights * i).sum() / weights.sum()) * zx + (zx - 1) / 2)
    arm = 2 * max(zy, zx)
    rgb[max(cy - arm, 0):cy + arm + 1, np.clip(cx, 0, rgb.shape[1] - 1)] = colour
    rgb[np.clip(cy, 0, rgb.shape[0] - 1), max(cx - arm, 0):cx + arm + 1] = colour


def _overlay(rgb: np.ndarray, labels, k: int, zy: int, zx: int, gland, landmark) -> None:
    if labels is None:
        return
    for c in range(labels.shape[0]):
        plane = labels[c, k]
        mask = _zoom(plane > 0.5, zy, zx)
        colour = gland if c == 0 else landmark
        rgb[_boundary(mask)] = colour
        if c > 0:
            _draw_cross(rgb, plane, colour, zy, zx)


def _tile(fixed_plane, moving_plane, labels, fixed_labels, k, zy, zx) -> np.ndarray:
    grey = _zoom(fixed_plane, zy, zx)
    if moving_plane is not None and labels is None:
        moving = _zoom(moving_plane, zy, zx)
        squares = ((np.indices(grey.shape) // (8 * max(zy, zx))).sum(axis=0) % 2).astype(bool)
        grey = np.where(squares, moving, grey)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    _overlay(rgb, fixed_labels, k, zy, zx, FIXED_GLAND, FIXED_LANDMARK)
    _overlay(rgb, labels, k, zy, zx, GLAND, LANDMARK)
    return rgb


def _title(text: str, height: int, scale: int = 2) -> np.ndarray:
    """A vertical strip with ``text`` written top to bottom in white."""
    width = 3 * scale + 4
    strip = np.zeros((height, width, 3), np.uint8)
    y = 2
    for char in text.upper():
        glyph = np.array([int(b) for b in _FONT.get(char, _FONT[" "])], bool).reshape(5, 3)
        glyph = np.repeat(np.repeat(glyph, scale, 0), scale, 1)
        if y + glyph.shape[0] > height:
            break
        strip[y:y + glyph.shape[0], 2:2 + glyph.shape[1]][glyph] = 255
        y += glyph.shape[0] + scale
    return strip


def render_qc(fixed: Volume, warped_labels_before=None, warped_labels_after=None, fixed_labels=None,
              moving_before=None, moving_after=None, slices=None) -> np.ndarray:
    """The QC picture as an (H, W, 3) uint8 array (see :func:`write_qc_png`)."""
    before, after, target = _channels(warped_labels_before), _channels(warped_labels_after), _channels(fixed_labels)
    image = np.asarray(fixed.array, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"{fixed.name}: the QC needs a 3-D fixed image, got {image.shape}")
    if slices is None:
        slices = choose_slices([x[0] if x is not None else None for x in (target, after, before)], image.shape[0])
    sx, sy = fixed.grid.spacing[0], fixed.grid.spacing[1]
    zy, zx = (max(1, round(ZOOM * s / min(sx, sy))) for s in (sy, sx))
    grey = _to_grey(image)
    moving = [None if m is None else _to_grey(np.asarray(m, np.float32)) for m in (moving_before, moving_after)]
    rows = []
    for name, labels, mov in (("before", before, moving[0]), ("after", after, moving[1])):
        tiles = []
        for k in slices:
            tiles.append(_tile(grey[k], None if mov is None else mov[k], labels, target, k, zy, zx))
            tiles.append(np.zeros((tiles[-1].shape[0], GAP, 3), np.uint8))
        row = np.concatenate(tiles[:-1], axis=1)
        rows.append(np.concatenate([_title(name, row.shape[0]), row], axis=1))
        rows.append(np.zeros((GAP, rows[-1].shape[1], 3), np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def write_qc_png(path, fixed: Volume, warped_labels_before=None, warped_labels_after=None, fixed_labels=None,
                 moving_before=None, moving_after=None, slices=None):
    """Write the QC snapshot to ``path`` (PNG, atomically).

    Args:
        fixed: the fixed image.
        warped_labels_before: (C, z, y, x) moving labels on the fixed grid after the initial
            alignment only (or a :class:`Volume`).
        warped_labels_after: the same after registration.
        fixed_labels: optional (C, z, y, x) fixed labels, drawn in a third colour.
        moving_before / moving_after: optional warped moving images (z, y, x), shown as a
            checkerboard with the fixed image when no labels are given.
        slices: axial (k) indices to show; default three through the gland.
    Returns:
        the path written.
    """
    rgb = render_qc(fixed, warped_labels_before, warped_labels_after, fixed_labels, moving_before, moving_after, slices)
    image = sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True)
    with AtomicFile(path) as tmp:
        sitk.WriteImage(image, tmp)
    return path

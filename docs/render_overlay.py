"""Render the Extensions Index screenshot (``docs/sample-overlay.png``) from a real registration:
the bundled sample pair (obs003) is loaded and registered with the bundled model by the LabelReg
module itself (its Logic and worker process, in a headless Slicer: slicer-core and
Testing/slicer_bootstrap.py), then drawn as Slicer's slice views show it.

Top row: the TRUS with the resampled MR as foreground at the module's default opacity (0.5).
Bottom row: the TRUS with the MR gland (yellow) and landmarks (other colours) outlined, as the
module's output segmentation is shown, resampled by Slicer through the output transform.
Views: axial, sagittal, coronal through the registered gland's centre (radiological
convention, as Slicer's Red, Yellow and Green views). Pure numpy + SimpleITK.

    python docs/render_overlay.py [--output docs/sample-overlay.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
ZOOM = 5
OPACITY = 0.5
GAP = 8
COLOURS = [(255, 220, 0), (255, 60, 60), (60, 220, 255), (255, 80, 255), (90, 255, 90), (255, 150, 40)]


def register_sample():
    """(TRUS (z, y, x), MR on the TRUS grid, MR labels on the TRUS grid (C, z, y, x), TRUS Grid, summary)."""
    sys.path.insert(0, str(HERE.parent / "Testing"))
    import slicer_bootstrap

    slicer = slicer_bootstrap.bootstrap()
    import LabelReg
    from labelreg import resources
    from LabelRegLib import nodes

    if not resources.BUNDLED_MODEL_FILE.exists():
        raise SystemExit(f"the bundled model {resources.BUNDLED_MODEL_FILE} is missing: the screenshot needs it")
    logic = LabelReg.LabelRegLogic()
    try:
        loaded = logic.loadSampleData()
        outputs = logic.register(loaded["fixedVolume"], loaded["movingVolume"], loaded["movingSegmentation"],
                                 fixedSegmentationNode=loaded["fixedSegmentation"], device="cpu")
        fixed = nodes.volumeFromNode(loaded["fixedVolume"])
        labels = nodes.labelsFromNode(outputs.segmentationNode, fixed.grid)[0].array  # Slicer resamples them
        mr = slicer.util.arrayFromVolume(outputs.volumeNode).astype(np.float32)
        return fixed.array, mr, labels, fixed.grid, outputs.summary
    finally:
        logic.shutdown()


def to_lps_axes(array: np.ndarray, grid) -> np.ndarray:
    """An axis-aligned (..., z, y, x) array as (..., L, P, S): indices increasing to the patient's
    left, posterior and superior."""
    direction = grid.direction_matrix
    lead = array.ndim - 3
    order, flips = [None] * 3, []
    for index_axis in range(3):  # i, j, k are array axes lead+2, lead+1, lead
        lps_axis = int(np.argmax(np.abs(direction[:, index_axis])))
        order[lps_axis] = lead + 2 - index_axis
        if direction[lps_axis, index_axis] < 0:
            flips.append(lps_axis + lead)
    out = np.transpose(array, list(range(lead)) + order)
    return np.flip(out, axis=flips) if flips else out


def views(volume: np.ndarray, centre) -> list:
    """Axial, sagittal, coronal (rows, columns) planes of an (..., L, P, S) array, radiological."""
    l, p, s = centre
    return [np.swapaxes(volume[..., :, :, s], -1, -2),          # axial: anterior up, patient right on the left
            np.swapaxes(volume[..., l, :, ::-1], -1, -2),      # sagittal: superior up, anterior on the left
            np.swapaxes(volume[..., :, p, ::-1], -1, -2)]      # coronal: superior up, patient right on the left


def zoom(plane: np.ndarray) -> np.ndarray:
    """Linear upsampling by ZOOM (voxel centres kept)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(plane, dtype=np.float32))
    return sitk.GetArrayFromImage(sitk.Expand(image, [ZOOM, ZOOM], sitk.sitkLinear))


def grey(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((plane - low) / max(high - low, 1e-6), 0.0, 1.0)


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its border."""
    inner = mask.copy()
    for _ in range(width):
        eroded = inner.copy()
        eroded[1:, :] &= inner[:-1, :]
        eroded[:-1, :] &= inner[1:, :]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return mask & ~inner


def render(trus, mr, labels, grid) -> np.ndarray:
    trus_lps, mr_lps, labels_lps = (to_lps_axes(a, grid) for a in (trus, mr, labels))
    gland = labels_lps[0] > 0.5
    where = np.argwhere(gland).mean(axis=0) if gland.any() else np.asarray(gland.shape) / 2
    centre = [round(float(c)) for c in where]
    t_range = np.percentile(trus, [1, 99.5])
    m_range = np.percentile(mr, [1, 99.5])
    top, bottom = [], []
    for t, m, lab in zip(views(trus_lps, centre), views(mr_lps, centre), views(labels_lps, centre)):
        background = grey(zoom(t), *t_range)[..., None].repeat(3, axis=-1)
        foreground = grey(zoom(m), *m_range)[..., None].repeat(3, axis=-1)
        top.append(np.round(255 * ((1 - OPACITY) * background + OPACITY * foreground)).astype(np.uint8))
        drawn = np.round(255 * background).astype(np.uint8)
        for channel in range(lab.shape[0]):
            edge = outline(zoom(lab[channel]) > 0.5)
            drawn[edge] = COLOURS[channel % len(COLOURS)]
        bottom.append(drawn)
    height = max(view.shape[0] for view in top)

    def row(tiles):
        padded = [np.pad(tile, ((0, height - tile.shape[0]), (0, GAP), (0, 0))) for tile in tiles]
        return np.concatenate(padded, axis=1)[:, :-GAP]

    return np.concatenate([row(top), np.zeros((GAP, row(top).shape[1], 3), np.uint8), row(bottom)], axis=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "sample-overlay.png")
    args = parser.parse_args(argv)
    trus, mr, labels, grid, summary = register_sample()
    rgb = render(trus, mr, labels, grid)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(args.output))
    print(summary)
    print(f"wrote {args.output} ({rgb.shape[1]}x{rgb.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

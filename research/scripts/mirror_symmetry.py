"""Which LPS axis runs left-right in the patients? The prostate is nearly mirror-symmetric across
the mid-sagittal plane, and less so across the others (apex to base; the probe flattens the
posterior side). For each gland label (channel 0), the Dice of the gland and its mirror image
across the plane through its centroid normal to each LPS axis, averaged over all cases.

    python research/scripts/mirror_symmetry.py DATA
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from labelreg.io import read_image, read_labels
from labelreg.metrics import dice
from labelreg.transforms import transform_points
from labelreg.warp import sample
from labelreg_training.augment import mirror_lps


def mirror_dice(gland: np.ndarray, grid, axis: int) -> float:
    """Dice of a binary gland (z, y, x) and its mirror across the plane through its centroid normal to LPS ``axis``."""
    points = grid.points_lps(dtype=torch.float64)
    inside = torch.from_numpy(gland > 0.5)
    mirror = mirror_lps(torch.tensor([True]), points[inside].mean(0), axis)
    image = torch.from_numpy(gland.astype(np.float32))[None, None]
    mirrored = sample(image, grid, transform_points(mirror, points[None].float()))[0, 0].numpy()
    return dice(mirrored, gland)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    args = p.parse_args()
    for role, name in (("fixed", "TRUS"), ("moving", "MR")):
        files = sorted((Path(args.data) / f"{role}_labels").glob("*.nii.gz"))
        glands = (read_labels(f, read_image(f.parent.parent / f"{role}_images" / f.name).grid) for f in files)
        scores = np.array([[mirror_dice(v.channels[0], v.grid, a) for a in range(3)] for v in glands])
        mean = ", ".join(f"{'xyz'[a]} {scores[:, a].mean():.3f}" for a in range(3))
        print(f"{name} ({len(files)} glands), mean Dice with the mirror image across LPS axis: {mean}")


if __name__ == "__main__":
    main()

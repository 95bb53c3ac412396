"""Issue 25, gland refinement: how much gland Dice does seeing the gland on the localisers' 3 mm
grid cost by itself? Each true gland label (1.5 mm) is averaged onto a 3 mm grid (2x2x2 voxels),
brought back to 1.5 mm trilinearly and thresholded at 0.5: a perfect localiser at 3 mm. Its Dice
with the label bounds what a 1.5 mm pass can gain from resolution alone (the localisers reach
0.84-0.89 on their own grid).

    python research/refine/resolution_oracle.py DATA
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from labelreg.io import read_image, read_labels


def round_trip_dice(gland: np.ndarray) -> float:
    a = torch.from_numpy((gland > 0.5).astype(np.float32))[None, None]
    pad = [p for n in reversed(a.shape[2:]) for p in (0, n % 2)]
    coarse = F.avg_pool3d(F.pad(a, pad), 2)
    back = F.interpolate(coarse, scale_factor=2, mode="trilinear", align_corners=False)[..., :a.shape[2], :a.shape[3],
                                                                                          :a.shape[4]]
    b, g = back > 0.5, a > 0.5
    return float(2 * (b & g).sum() / (b.sum() + g.sum()))


if __name__ == "__main__":
    data = Path(sys.argv[1])
    for role, images, labels in (("TRUS", "fixed_images", "fixed_labels"), ("MR", "moving_images", "moving_labels")):
        dice = []
        for path in sorted((data / labels).glob("*.nii.gz")):
            grid = read_image(data / images / path.name).grid
            dice.append(round_trip_dice(read_labels(path, grid).channels[0]))
        print(f"{role}: {len(dice)} glands, Dice of a perfect 3 mm localiser: median {np.median(dice):.3f}, "
              f"min {np.min(dice):.3f}")

"""Probe: where do the gland localisers go wrong? For each validation pair of a fold it prints the
distance (mm) between each localiser's predicted gland centroid and the true gland label's
centroid, TRUS and MR; with ``--png`` it draws, for the named cases, three orthogonal TRUS slices
through the true gland with its outline (green) and the TRUS localiser's (red).

    python research/scripts/localiser_failures.py DATA FOLD CHECKPOINT [--png OUT --cases obs020,obs028]
"""
import argparse

import numpy as np
import torch
from labelreg.metrics import centroid_lps
from labelreg.model import probability_centroid_lps
from labelreg.warp import sample
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import load_pairs, predicted_gland_maps
from labelreg_training.train import load_checkpoint


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("fold", type=int)
    p.add_argument("checkpoint")
    p.add_argument("--png", help="draw the TRUS slices of --cases here")
    p.add_argument("--cases", default="", help="comma-separated case names to draw")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)[0].eval()
    data_dir, names = validation_cases(args.data, 5, args.fold)
    pairs = {pair[0]: pair for pair in load_pairs(data_dir, names)}
    maps = {}
    for name, fixed, moving, moving_labels, fixed_labels in pairs.values():
        maps[name] = predicted_gland_maps(model, fixed, moving)
        errors = []
        for (probability, grid), volume, labels in zip(maps[name], (fixed, moving), (fixed_labels, moving_labels)):
            centroid, found = probability_centroid_lps(probability, grid)
            true = centroid_lps(labels.channels[0], volume.grid)
            errors.append(float(np.linalg.norm(centroid[0].numpy() - true)) if found[0] else float("nan"))
        print(f"{name}: gland centroid error TRUS {errors[0]:.1f} mm, MR {errors[1]:.1f} mm")
    cases = [c for c in args.cases.split(",") if c]
    if args.png and cases:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(len(cases), 3, figsize=(12, 4 * len(cases)), squeeze=False)
        for row, case in zip(axes, cases):
            _, fixed, _, _, fixed_labels = pairs[case]
            probability, grid = maps[case][0]
            on_image = sample(probability, grid, fixed.grid.points_lps()[None])[0, 0].numpy()
            label = fixed_labels.channels[0]
            for axis, ax in enumerate(row):
                index = [slice(None)] * 3
                index[axis] = int(np.argmax(label.sum(tuple(a for a in range(3) if a != axis))))
                ax.imshow(fixed.array[tuple(index)], cmap="gray")
                ax.contour(label[tuple(index)], [0.5], colors="g")
                ax.contour(on_image[tuple(index)], [0.5], colors="r")
                ax.set_title(f"{case} TRUS, array axis {axis} slice {index[axis]}: green true, red predicted",
                             fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=60)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()

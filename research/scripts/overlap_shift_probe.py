"""Probe: how far does the best-overlap gland translation move from the centroid one, and does the
search end at its radius? For each validation pair of a fold: the length (mm) of the change, its
largest component along the TRUS localiser grid's axes (the search box is +-radius along each),
and whether the pair's TRUS gland is cut by the field of view.

    python research/scripts/overlap_shift_probe.py DATA FOLD CHECKPOINT [--radius 12]
"""
import argparse

import numpy as np
import torch
from labelreg.model import probability_centroid_lps
from labelreg.overlap import overlap_translation_lps
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import gland_cut_by_field_of_view, load_pairs, predicted_gland_maps
from labelreg_training.train import load_checkpoint


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("fold", type=int)
    p.add_argument("checkpoint")
    p.add_argument("--radius", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)[0].eval()
    data_dir, names = validation_cases(args.data, 5, args.fold)
    for name, fixed, moving, _, fixed_labels in load_pairs(data_dir, names):
        (fixed_p, fixed_g), (moving_p, moving_g) = predicted_gland_maps(model, fixed, moving)
        start = probability_centroid_lps(moving_p, moving_g)[0] - probability_centroid_lps(fixed_p, fixed_g)[0]
        found = overlap_translation_lps(fixed_p, fixed_g, moving_p, moving_g, start, args.radius)
        change = (found - start)[0].double().numpy()
        along_axes = np.abs(fixed_g.direction_matrix.T @ change)
        cut = gland_cut_by_field_of_view(fixed_labels)
        print(f"{name}: change {np.linalg.norm(change):5.1f} mm, largest along an axis {along_axes.max():5.1f} mm"
              f"{' (at the radius)' if along_axes.max() >= args.radius - 1e-3 else ''}{', TRUS gland cut' if cut else ''}")


if __name__ == "__main__":
    main()

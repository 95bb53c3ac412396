"""Probe: do the gland localisers find the gland centroid better when their predictions are
averaged over several views of the image (test-time augmentation)?

Each view samples the image at ``view(x)`` for the localiser grid points x, where ``view`` is a
random rigid transform about the volume centre (the first view is the identity); the centroid the
localiser predicts in the view frame is mapped back by ``view``. The centroids of the views are
averaged. For the fold's validation pairs it prints the median centroid error of each localiser
(against the true gland label's centroid) and the landmark TRE of the gland translation.

    python research/scripts/localiser_tta_probe.py DATA FOLD CHECKPOINT [--views 1,4,8]
"""
import argparse

import numpy as np
import torch
from labelreg.metrics import centroid_lps
from labelreg.model import gland_probability, probability_centroid_lps
from labelreg.transforms import transform_points
from labelreg_training.augment import AugmentConfig, random_affine
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import load_pairs
from labelreg_training.train import load_checkpoint


def view_centroid(model, role, volume, views):
    """Mean over ``views`` (V, 4, 4) of the localiser's centroid (LPS mm) seen through each view."""
    image = torch.from_numpy(model.config.normalize(volume.array, volume.grid, role))[None, None]
    grid = volume.grid
    out = []
    for view in views:
        # the localiser sees the image resampled at view(x): a grid whose points are moved by view
        moved = _ViewGrid(model.localiser_grid(grid, role), view)
        with torch.no_grad():
            c, found = probability_centroid_lps(*gland_probability(model.localisers[role], image, grid, moved))
        if found[0]:
            out.append(c[0])
    return torch.stack(out).mean(0).numpy() if out else None


class _ViewGrid:
    """A grid whose points are mapped by ``view`` (duck-typed for :func:`gland_probability`)."""

    def __init__(self, grid, view):
        self.grid, self.view = grid, view

    def points_lps(self, dtype=torch.float32, device=None):
        return transform_points(self.view.to(dtype)[None], self.grid.points_lps(dtype, device)[None])[0]

    def __getattr__(self, name):
        return getattr(self.grid, name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("fold", type=int)
    p.add_argument("checkpoint")
    p.add_argument("--views", default="1,4,8")
    p.add_argument("--rotation", type=float, default=6.0)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)[0].eval()
    data_dir, names = validation_cases(args.data, 5, args.fold)
    pairs = load_pairs(data_dir, names)
    aug = AugmentConfig(rotation_deg=args.rotation, scale=0.0, translation_mm=args.shift)
    for n_views in (int(v) for v in args.views.split(",")):
        gen = torch.Generator().manual_seed(0)
        errors = {"fixed": [], "moving": []}
        tre = []
        for _, fixed, moving, moving_labels, fixed_labels in pairs:
            centres = {}
            for role, volume, labels in (("fixed", fixed, fixed_labels), ("moving", moving, moving_labels)):
                views = random_affine(n_views, volume.grid.center_lps, aug, gen).float()
                views[0] = torch.eye(4)
                predicted = view_centroid(model, role, volume, views)
                true = centroid_lps(labels.channels[0], volume.grid)
                errors[role].append(np.linalg.norm(predicted - true))
                centres[role] = predicted
            shift = centres["moving"] - centres["fixed"]
            for lm in range(1, fixed_labels.channels.shape[0]):
                f = centroid_lps(fixed_labels.channels[lm], fixed.grid)
                m = centroid_lps(moving_labels.channels[lm], moving.grid)
                if f is not None and m is not None:
                    tre.append(np.linalg.norm(f + shift - m))
        print(f"fold {args.fold}, {n_views} view(s): centroid error median TRUS {np.median(errors['fixed']):.2f} mm, "
              f"MR {np.median(errors['moving']):.2f} mm; gland translation TRE median {np.median(tre):.2f} mm "
              f"(p90 {np.percentile(tre, 90):.2f}, {len(tre)} landmarks)", flush=True)


if __name__ == "__main__":
    main()

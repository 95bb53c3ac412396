"""Probe: how far does aligning the two *gland shapes* take the pairs?

For each validation pair of a fold, a transform is fitted (at test time, no learning) so that
the moving gland map lands on the fixed one: a translation between the two centroids, then
optionally an affine and a smooth displacement field on the network grid, minimising the
multi-scale soft Dice of the two maps plus the bending energy of the field (the training loss,
applied to one pair). The gland maps are either

* ``--masks labels``: the true gland labels (an upper bound, not a method), or
* ``--masks localiser``: the gland probabilities the fold's two localisers predict from the
  images (a method: it needs only the two images).

Landmark TRE and gland Dice are then measured at full resolution as in ``labelreg-train evaluate``.

    python research/scripts/gland_shape_probe.py DATA FOLD CHECKPOINT --masks localiser \
        --fit affine+ddf [--iters 100] [--bending 5] [--json OUT --label NAME]
"""
import argparse
import json
import time

import torch
from labelreg.metrics import evaluate_pair, format_metrics, summarize
from labelreg.model import gland_probability, probability_centroid_lps
from labelreg.transforms import transform_points
from labelreg.warp import sample
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import load_pairs
from labelreg_training.losses import bending_energy, multiscale_dice
from labelreg_training.train import load_checkpoint

FITS = ("translation", "affine", "ddf", "affine+ddf")


def gland_map(model, role, volume, labels, masks):
    """(1, 1, z, y, x) gland map and its grid: the true label, or the localiser's probability."""
    if masks == "labels":
        return torch.from_numpy(labels.channels[:1].astype("float32"))[None], volume.grid
    image = torch.from_numpy(model.config.normalize(volume.array, volume.grid, role))[None, None]
    with torch.no_grad():
        return gland_probability(model.localisers[role], image, volume.grid, model.localiser_grid(volume.grid, role))


def fit_pair(fixed_map, fixed_grid, moving_map, moving_grid, net_grid, fit, iters, bending, lr, scales):
    """(affine_lps (4, 4), ddf (1, D, H, W, 3) or None): moving point of x = affine (x + ddf(x))."""
    points = net_grid.points_lps()
    target = sample(fixed_map, fixed_grid, points)
    c_fixed, c_moving = (probability_centroid_lps(m, g)[0][0] for m, g in ((fixed_map, fixed_grid), (moving_map, moving_grid)))
    linear = torch.zeros(3, 4, requires_grad=True)  # about the fixed gland centroid
    ddf = torch.zeros(1, *net_grid.shape_zyx, 3, requires_grad=True)
    field = ddf if "ddf" in fit else None
    params = ([linear] if "affine" in fit else []) + ([ddf] if field is not None else [])

    def affine():
        shift, centre = torch.eye(4), torch.eye(4)
        shift[:3, 3], centre[:3, 3] = c_moving - c_fixed, c_fixed
        step = torch.cat([torch.cat([torch.eye(3) + linear[:, :3], linear[:, 3:]], 1), torch.tensor([[0.0, 0, 0, 1]])])
        return shift @ centre @ step @ torch.linalg.inv(centre)

    if params:
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(iters):
            opt.zero_grad()
            warped = sample(moving_map, moving_grid, transform_points(affine()[None], points[None], field))
            loss = multiscale_dice(warped, target, net_grid.spacing, scales)
            if field is not None:
                loss = loss + bending * bending_energy(field, net_grid.spacing)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return affine(), (None if field is None else field.detach())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("fold", type=int)
    p.add_argument("checkpoint", help="a checkpoint with the fold's gland localisers (its network grid is used)")
    p.add_argument("--masks", choices=("labels", "localiser"), default="localiser")
    p.add_argument("--fit", choices=FITS, default="affine+ddf")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--bending", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--scales", default="0,1.5,3,6,12", help="Dice scales, mm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--label")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scales = tuple(float(s) for s in args.scales.split(","))
    model = load_checkpoint(args.checkpoint)[0].eval()
    data_dir, names = validation_cases(args.data, 5, args.fold)
    rows = []
    for name, fixed, moving, moving_labels, fixed_labels in load_pairs(data_dir, names):
        t0 = time.perf_counter()
        fixed_map, fixed_map_grid = gland_map(model, "fixed", fixed, fixed_labels, args.masks)
        moving_map, moving_map_grid = gland_map(model, "moving", moving, moving_labels, args.masks)
        net_grid = model.network_grid(fixed.grid)
        affine, ddf = fit_pair(fixed_map, fixed_map_grid, moving_map, moving_map_grid, net_grid,
                               args.fit, args.iters, args.bending, args.lr, scales)
        seconds = time.perf_counter() - t0
        points = fixed.grid.points_lps()
        ddf_full = None if ddf is None else sample(
            ddf.permute(0, 4, 1, 2, 3), net_grid, points, padding_mode="border").permute(0, 2, 3, 4, 1)
        moving_points = transform_points(affine[None], points[None], ddf_full)
        channels = torch.from_numpy(moving_labels.channels.astype("float32"))[None]
        warped = sample(channels, moving.grid, moving_points)[0].clamp(0, 1).numpy()
        row = evaluate_pair(warped, fixed_labels.channels, fixed.grid, (moving_points[0] - points).numpy())
        rows.append({"case": name, "seconds": seconds, **row})
    summary = summarize(rows)
    summary["seconds_per_pair"] = sum(r["seconds"] for r in rows) / len(rows)
    label = args.label or f"gland shapes ({args.masks}), {args.fit}"
    print(f"fold {args.fold} {label}: {format_metrics(summary)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows, "mode": args.fit, "fold": args.fold, "folds": 5, "label": label}, f, indent=2, default=float)


if __name__ == "__main__":
    main()

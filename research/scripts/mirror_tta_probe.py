"""Probe: does averaging a local net's field with its field on the mirrored pair help?

The pair is mirrored across the patients' left-right plane (``--axis``, LPS; see
``AugmentConfig.mirror_axis_lps``), through the fixed and moving centres alike (a mirror-image
patient), the local net predicts a field on it, and that field is mirrored back and averaged
with the field of the pair itself (test-time augmentation). On grids whose direction maps the LPS
axis onto a grid axis (the MR-TRUS pairs), the network grid is centred on the fixed centre, so
the mirror is a flip of the network's inputs and output along that grid axis, with the output's
component along it negated. Evaluates each checkpoint with and without it on the fold's
validation cases.

    python research/scripts/mirror_tta_probe.py DATA FOLD CHECKPOINT [CHECKPOINT ...] [--json-prefix P]
"""
import argparse
import json

import numpy as np
import torch
from labelreg.metrics import format_metrics
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import evaluate_model, load_pairs
from labelreg_training.train import load_checkpoint
from torch import nn


class MirrorMeanNet(nn.Module):
    """The mean of ``net`` on its inputs and, mirrored back, on the inputs flipped along
    tensor dimension ``dim`` (grid index axis ``axis``)."""

    def __init__(self, net, axis: int):
        super().__init__()
        self.net, self.axis, self.dim = net, axis, 4 - axis  # (B, C, k, j, i)
        self.multiple = net.multiple

    def forward(self, x):
        plain = self.net(x)
        mirrored = self.net(x.flip(self.dim)).flip(self.dim)
        mirrored[:, self.axis] = -mirrored[:, self.axis]
        return (plain + mirrored) / 2


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("fold", type=int)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--axis", type=int, default=1, help="the left-right LPS axis (default 1: y)")
    p.add_argument("--json-prefix", help="write <prefix><i>.json for checkpoint i with the mirror average")
    p.add_argument("--label", default="gland alignment + local net, mirror-averaged")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data_dir, names = validation_cases(args.data, 5, args.fold)
    pairs = load_pairs(data_dir, names)
    direction = np.asarray(pairs[0][1].grid.direction_matrix)
    axis = int(np.argmax(np.abs(direction[args.axis])))  # the grid axis along LPS args.axis
    if not np.isclose(abs(direction[args.axis, axis]), 1.0):
        raise SystemExit("the left-right axis is oblique to the fixed grid: this probe flips grid axes only")
    for i, path in enumerate(args.checkpoints):
        model = load_checkpoint(path)[0].eval()
        _, summary = evaluate_model(model, pairs, "local", hd95=False)
        print(f"fold {args.fold} {path}: {format_metrics(summary)}")
        model.local_net = MirrorMeanNet(model.local_net, axis)
        rows, summary = evaluate_model(model, pairs, "local", hd95=False)
        print(f"fold {args.fold} {path} mirror-averaged: {format_metrics(summary)}")
        if args.json_prefix:
            out = {"summary": summary, "rows": rows, "mode": "local", "fold": args.fold, "folds": 5, "label": args.label}
            with open(f"{args.json_prefix}{i}.json", "w") as f:
                json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()

"""Probe: does averaging the affine of several global nets of one fold beat each net alone?

The affine is linear in the global net's 12 outputs (all nets share the network grid), so the
mean of the outputs is the mean of the affines. Evaluates each net and the ensemble on the
fold's validation cases in affine mode.

    python LabelRegTraining/scripts/ensemble_probe.py DATA FOLD CHECKPOINT [CHECKPOINT ...] [--json OUT]
"""
import argparse
import json

import torch
from labelreg.metrics import format_metrics
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import evaluate_model, load_pairs
from labelreg_training.train import load_checkpoint
from torch import nn


class MeanGlobal(nn.Module):
    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.multiple = max(n.multiple for n in nets)

    def forward(self, x):
        return torch.stack([n(x) for n in self.nets]).mean(0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("fold", type=int)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--json", help="write the ensemble's rows and summary here")
    p.add_argument("--label", default="global only, mean of the nets")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data_dir, names = validation_cases(args.data, 5, args.fold)
    pairs = load_pairs(data_dir, names)
    models = [load_checkpoint(c)[0].eval() for c in args.checkpoints]
    for path, model in zip(args.checkpoints, models):
        _, summary = evaluate_model(model, pairs, "affine", hd95=False)
        print(f"fold {args.fold} {path}: {format_metrics(summary)}")
    ensemble = models[0]  # its local net is unused in affine mode
    ensemble.global_net = MeanGlobal([m.global_net for m in models])
    rows, summary = evaluate_model(ensemble, pairs, "affine", hd95=False)
    print(f"fold {args.fold} ensemble: {format_metrics(summary)}")
    if args.json:
        out = {"summary": summary, "rows": rows, "mode": "affine", "fold": args.fold, "folds": 5, "label": args.label}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()

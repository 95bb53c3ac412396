"""Probe: does averaging several nets of one fold beat each net alone?

``--net global`` (affine mode): the affine is linear in the global net's 12 outputs (all nets
share the network grid), so the mean of the outputs is the mean of the affines.
``--net local`` (local mode): local nets trained on the same frozen start (e.g. the same gland
localisers) see the same input, and the field is linear in their outputs, so the mean of the
outputs is the mean displacement field. ``--net localiser`` (affine mode): each gland localiser
(TRUS, MR) is replaced by the mean of the members' logits, so the gland translation comes from the
mean gland map. Evaluates each net and the ensemble on the fold's validation cases.

    python research/scripts/ensemble_probe.py DATA FOLD CHECKPOINT [CHECKPOINT ...] [--net local] [--json OUT]
"""
import argparse
import json

import torch
from labelreg.metrics import format_metrics
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import evaluate_model, load_pairs
from labelreg_training.train import load_checkpoint
from torch import nn


class MeanNet(nn.Module):
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
    p.add_argument("--net", choices=("global", "local", "localiser"), default="global")
    p.add_argument("--label", help="default: '<net> net, mean of N'")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data_dir, names = validation_cases(args.data, 5, args.fold)
    pairs = load_pairs(data_dir, names)
    models = [load_checkpoint(c)[0].eval() for c in args.checkpoints]
    mode, name = {"global": ("affine", "global_net"), "local": ("local", "local_net"),
                  "localiser": ("affine", "localisers")}[args.net]
    if args.net == "local":  # the same start for every member, or the mean field is meaningless
        start = {k: v for k, v in models[0].state_dict().items() if k.startswith("localisers.")}
        if any(not torch.equal(v, m.state_dict()[k]) for m in models[1:] for k, v in start.items()):
            raise SystemExit("--net local: the checkpoints must share their gland localisers")
    for path, model in zip(args.checkpoints, models):
        _, summary = evaluate_model(model, pairs, mode, hd95=False)
        print(f"fold {args.fold} {path}: {format_metrics(summary)}")
    ensemble = models[0]
    if args.net == "localiser":
        ensemble.localisers = nn.ModuleDict({role: MeanNet([m.localisers[role] for m in models])
                                             for role in ("fixed", "moving")})
    else:
        setattr(ensemble, name, MeanNet([getattr(m, name) for m in models]))
    rows, summary = evaluate_model(ensemble, pairs, mode, hd95=False)
    print(f"fold {args.fold} ensemble: {format_metrics(summary)}")
    if args.json:
        label = args.label or f"{args.net} net, mean of {len(models)}"
        out = {"summary": summary, "rows": rows, "mode": mode, "fold": args.fold, "folds": 5, "label": label}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()

"""Pilot: can a gland segmenter, trained with dense labels, localise the gland well enough for a
translation initial alignment? (A research probe, not part of the method or the bundled model.)

The label oracles (label_oracles.py) show that putting the MR gland centroid on the TRUS gland
centroid leaves a median landmark TRE of 5.1 mm over all pairs, while the global net, which has
to learn the same from 12 outputs and a registration loss, reaches 8-9 mm on unseen pairs.
This probe trains one small U-Net per modality (``labelreg.networks.GlandLocaliser``) to
segment the gland on the 3 mm grid, then aligns the predicted gland centroids of each held-out
pair and measures the landmark TRE, next to the same translation with the true centroids.

    train:   gland_localiser_pilot.py train --data CACHE_OR_DIR --fold 1 --modality fixed --out OUT
             gland_localiser_pilot.py train --data CACHE_OR_DIR --fold 1 --modality moving --out OUT
    measure: gland_localiser_pilot.py measure --data CACHE_OR_DIR --out OUT
    probe:   gland_localiser_pilot.py probe --data DATA_DIR --out OUT --fold 1 \
                 --checkpoint runs/cv/fold1/joint/best.pt --mode deformable --json ROWS.json
             (the fold's trained nets, started from the predicted-centroid translation instead of
             the volume centres; without --checkpoint: the translation alone)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from labelreg.grid import Grid
from labelreg.io import AtomicFile
from labelreg.metrics import centroid_lps
from labelreg.networks import GlandLocaliser
from labelreg_training.data import load_dataset, split_cases


def pooled(case, modality):
    """(image, gland) on the 3 mm grid: 2x2x2 average pooling of the 1.5 mm cache."""
    image = getattr(case, modality).float()[None]
    gland = getattr(case, f"{modality}_labels")[:1].float()[None]
    return F.avg_pool3d(image, 2)[0], F.avg_pool3d(gland, 2)[0]


def shifted(x, shift):
    """Translate (C, D, H, W) by integer voxels, replicating the border."""
    p = max(abs(s) for s in shift)
    if p == 0:
        return x
    padded = F.pad(x[None], [p] * 6, mode="replicate")[0]
    d, h, w = x.shape[1:]
    return padded[:, p - shift[0]: p - shift[0] + d, p - shift[1]: p - shift[1] + h, p - shift[2]: p - shift[2] + w]


def pooled_grid(grid, shape_zyx):
    """The grid of a 2x2x2 average pooling of ``grid``: voxel n covers voxels 2n and 2n + 1."""
    origin = grid.index_to_lps @ np.array([0.5, 0.5, 0.5, 1.0])
    return Grid(tuple(shape_zyx[::-1]), tuple(2 * np.asarray(grid.spacing)), tuple(origin[:3]), grid.direction)


def label_centroids_lps(labels, grid):
    return np.array([centroid_lps(c, grid) for c in labels])


def train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, "cache", log=lambda *_: None)
    train_cases, tune_cases, val_cases = split_cases(data.subjects, 5, args.fold, 0, 0.15)
    grid = data.fixed_grid if args.modality == "fixed" else data.moving_grid
    samples = [pooled(data.cases[n], args.modality) for n in train_cases]
    net = GlandLocaliser(args.channels)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        idx = torch.randint(len(samples), (args.batch,), generator=gen)
        images, glands = [], []
        for i in idx.tolist():
            shift = torch.randint(-args.shift, args.shift + 1, (3,), generator=gen).tolist()
            image, gland = samples[i]
            gamma = float(torch.exp(0.25 * torch.randn((), generator=gen)))
            images.append(shifted(image.clamp(0, 1) ** gamma, shift))
            glands.append(shifted(gland, shift))
        x, y = torch.stack(images), torch.stack(glands)
        logits = net(x)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} dice {1 - dice.item():.3f} {time.time() - start:.0f} s", flush=True)
    net.eval()
    out = {}
    with torch.no_grad():
        for n in tune_cases + val_cases:
            image, gland = pooled(data.cases[n], args.modality)
            p = torch.sigmoid(net(image[None]))[0, 0].numpy()
            mask = p * (p > 0.5) if (p > 0.5).any() else p
            dice = 2 * ((p > 0.5) * (gland[0].numpy() > 0.5)).sum() / ((p > 0.5).sum() + (gland[0].numpy() > 0.5).sum())
            out[n] = {"centroid_lps": centroid_lps(mask, pooled_grid(grid, mask.shape)).tolist(), "dice_3mm": float(dice),
                      "split": "tune" if n in tune_cases else "validation"}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with AtomicFile(Path(args.out) / f"{args.modality}.pt") as tmp:  # GlandLocaliser weights, for reuse
        torch.save({"config": net.config, "state_dict": net.state_dict()}, tmp)
    (Path(args.out) / f"{args.modality}.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}/{args.modality}.json ({time.time() - start:.0f} s)")


def measure(args):
    data = load_dataset(args.data, "cache", log=lambda *_: None)
    predicted = {m: json.loads((Path(args.out) / f"{m}.json").read_text()) for m in ("fixed", "moving")}
    for split in ("tune", "validation"):
        names = [n for n, v in predicted["fixed"].items() if v["split"] == split]
        tre_pred, tre_true, centroid_err = [], [], {"fixed": [], "moving": []}
        for n in names:
            case = data.cases[n]
            fixed = label_centroids_lps(case.fixed_labels.numpy(), data.fixed_grid)
            moving = label_centroids_lps(case.moving_labels.numpy(), data.moving_grid)
            c_f, c_m = (np.array(predicted[m][n]["centroid_lps"]) for m in ("fixed", "moving"))
            centroid_err["fixed"].append(np.linalg.norm(c_f - fixed[0]))
            centroid_err["moving"].append(np.linalg.norm(c_m - moving[0]))
            for lm in range(1, len(fixed)):
                tre_pred.append(np.linalg.norm(fixed[lm] - c_f + c_m - moving[lm]))
                tre_true.append(np.linalg.norm(fixed[lm] - fixed[0] + moving[0] - moving[lm]))
        dice = {m: np.median([predicted[m][n]["dice_3mm"] for n in names]) for m in ("fixed", "moving")}
        print(f"{split}: {len(names)} pairs, {len(tre_pred)} landmarks | gland Dice (3 mm) TRUS {dice['fixed']:.3f} "
              f"MR {dice['moving']:.3f} | centroid error median TRUS {np.median(centroid_err['fixed']):.2f} mm, "
              f"MR {np.median(centroid_err['moving']):.2f} mm | TRE median with predicted centroids "
              f"{np.median(tre_pred):.2f} mm (p90 {np.percentile(tre_pred, 90):.2f}), with true centroids "
              f"{np.median(tre_true):.2f} mm")


def probe(args):
    from labelreg.engine import RegistrationEngine
    from labelreg.metrics import evaluate_pair, format_metrics, summarize
    from labelreg.model import RegistrationModel
    from labelreg_training.evaluate import load_pairs
    from labelreg_training.train import load_checkpoint

    torch.set_num_threads(args.threads)
    predicted = {m: json.loads((Path(args.out) / f"{m}.json").read_text()) for m in ("fixed", "moving")}
    names = [n for n, v in predicted["fixed"].items() if v["split"] == "validation"]
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else RegistrationModel()
    engine = RegistrationEngine(model.eval(), device="cpu")
    rows = []
    for name, fixed, moving, moving_labels, fixed_labels in load_pairs(args.data, names):
        start = np.eye(4)  # x_moving = x_fixed + (moving centroid - fixed centroid)
        start[:3, 3] = np.subtract(predicted["moving"][name]["centroid_lps"], predicted["fixed"][name]["centroid_lps"])
        t0 = time.perf_counter()
        result = engine.register(fixed, moving, moving_labels, mode=args.mode, initial_alignment=start)
        row = evaluate_pair(result.warped_labels, fixed_labels.channels, fixed.grid, result.ddf_lps)
        rows.append({"case": name, "seconds": time.perf_counter() - t0, **row})
    summary = summarize(rows)
    print(f"{args.mode} from predicted gland centroids, {len(rows)} cases: {format_metrics(summary)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": args.mode, "label": args.label, "fold": args.fold,
                                               "checkpoint": args.checkpoint, "summary": summary, "rows": rows},
                                              indent=2, default=float))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train", "measure", "probe"])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--modality", choices=["fixed", "moving"], default="fixed")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--shift", type=int, default=3, help="random translation, voxels of 3 mm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="probe: a training checkpoint of this fold")
    p.add_argument("--mode", default="affine", choices=["affine", "deformable", "local"])
    p.add_argument("--label", help="probe: row name for labelreg-train report")
    p.add_argument("--json", help="probe: write the rows here")
    args = p.parse_args()
    {"train": train, "measure": measure, "probe": probe}[args.command](args)


if __name__ == "__main__":
    main()

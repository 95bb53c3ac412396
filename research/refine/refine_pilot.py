"""Issue 25, gland refinement pilot: a second gland-localiser pass at 1.5 mm on a box around the
first pass's gland, one per modality, whose maps then drive the gland alignment (best overlap)
in place of the 3 mm maps. A research probe: nothing in the product imports it.

Each refiner is a :class:`labelreg.networks.GlandLocaliser` with two input channels, the image
and the first pass's gland probability (a cascade: labels are never inputs), both seen on the
box; it starts from the fold's 3 mm localiser (its weights, the map channel's at zero). The
first pass and the local net are the fold model's, frozen, so the paired comparison against the
fold model isolates the refinement.

    python research/refine/refine_pilot.py train CACHE.pt FOLD MODEL.pt OUT [--steps 600] [--threads 1]
    python research/refine/refine_pilot.py evaluate DATA FOLD MODEL.pt OUT/refiners.pt OUT.json [--mode local]
    python research/refine/refine_pilot.py segmentation DATA FOLD MODEL.pt OUT/refiners.pt

MODEL.pt is the fold's recipe checkpoint (``local_only/best.pt``), or a model file (``.pt`` with
its ``.json``: the bundled model is fold 0's). Training is resumable
(``OUT/checkpoint.pt``, written atomically every few minutes and at the end; ``OUT/refiners.pt``
at the end). Selection: the last step (the tuning pick has been within 0.06 mm of it).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from labelreg.grid import Grid
from labelreg.io import AtomicFile
from labelreg.model import RegistrationModel, probability_centroid_lps
from labelreg.networks import Conv3d, GlandLocaliser
from labelreg.transforms import transform_points
from labelreg.warp import sample
from labelreg_training import augment
from labelreg_training.data import load_dataset, split_cases
from labelreg_training.train import load_checkpoint
from torch import nn

SPACING_MM = 1.5
#: the box (mm along the frame axes i, j, k) around the first pass's gland: the 95th percentile of
#: the 81 pairs' gland extents (57, 70.5, 63 mm, TRUS and MR labels) plus about 8 mm either side
BOX_MM = (72.0, 87.0, 78.0)
JITTER_MM = 3.0
ROLES = ("fixed", "moving")


def load_base(path) -> RegistrationModel:
    """The fold model from a training checkpoint or an exported model file."""
    from labelreg.model_io import load_model

    try:
        return load_checkpoint(path)[0]
    except KeyError:  # an exported model file: weights only, its configuration in the sidecar
        return load_model(path)[0]


def make_refiner(localiser: GlandLocaliser) -> GlandLocaliser:
    """A two-channel copy of ``localiser`` (image, first-pass probability): the image channel's
    weights copied, the probability channel's zero, so it starts as the localiser at 1.5 mm."""
    refiner = copy.deepcopy(localiser)
    block = refiner.encoder.blocks[0]
    for name in ("conv1", "skip"):
        old = getattr(block, name)
        new = Conv3d(2, old.out_channels, old.kernel_size, padding=old.padding, bias=False)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, :1] = old.weight
        setattr(block, name, new)
    return refiner


def forward_refiner(refiner: GlandLocaliser, x: torch.Tensor) -> torch.Tensor:
    """The refiner's logits for (B, 2, ...) inputs (GlandLocaliser checks for one channel)."""
    from labelreg.networks import _pad_to_multiple

    x, shape = _pad_to_multiple(x, refiner.multiple)
    features = refiner.encoder(x)
    y = features[-1]
    for up, decode, skip in zip(refiner.up, refiner.decode, reversed(features[:-1])):
        y = decode(torch.cat([up(y), skip], dim=1))
    return refiner.output(y)[:, :, : shape[0], : shape[1], : shape[2]]


def box_grid(centre_lps, frame: np.ndarray) -> Grid:
    """The refinement box around ``centre_lps`` (3,) in the model's frame at :data:`SPACING_MM`."""
    return Grid((1, 1, 1), BOX_MM, tuple(float(c) for c in centre_lps), tuple(frame.ravel())).resampled(
        SPACING_MM, 4, frame, BOX_MM)


def inside_block(grid: Grid, field: Grid | None) -> tuple:
    """Slices (z, y, x) of the largest block of ``grid`` whose voxel centres lie in ``field``
    (the same frame): where the fixed image is seen."""
    if field is None:
        return (slice(None),) * 3
    mask = grid.voxels_inside(field)
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 1))
    return tuple(slices)


def sub_grid(grid: Grid, block: tuple) -> Grid:
    start = [s.start or 0 for s in block][::-1]  # i, j, k
    size = [len(range(*s.indices(n))) for s, n in zip(block, grid.shape_zyx)][::-1]
    origin = grid.index_to_lps[:3, :3] @ np.asarray(start, dtype=np.float64) + grid.index_to_lps[:3, 3]
    return Grid(tuple(size), grid.spacing, tuple(origin), grid.direction)


class RefinedModel(RegistrationModel):
    """The fold model whose gland maps come from the refiners (one pair at a time)."""

    def __init__(self, base: RegistrationModel, refiners: nn.ModuleDict):
        super().__init__(base.config)
        self.load_state_dict(base.state_dict())
        self.refiners = refiners

    def gland_maps(self, fixed, fixed_grid, moving, moving_grid):
        coarse = super().gland_maps(fixed, fixed_grid, moving, moving_grid)
        if fixed.shape[0] != 1:
            raise ValueError("the refinement pilot registers one pair at a time")
        out = []
        with torch.no_grad():
            for role, image, grid, (p, p_grid) in zip(ROLES, (fixed, moving), (fixed_grid, moving_grid), coarse):
                centre, found = probability_centroid_lps(p, p_grid)
                c = centre[0].double().numpy() if bool(found[0]) else p_grid.center_lps
                box = box_grid(c, self.config.frame)
                points = box.points_lps(dtype=image.dtype)
                x = torch.cat([sample(image, grid, points[None]), sample(p, p_grid, points[None])], 1)
                refined = torch.sigmoid(forward_refiner(self.refiners[role], x))
                block = inside_block(box, self.config.field_box(grid, role)) if role == "fixed" else (slice(None),) * 3
                out.append((refined[(slice(None), slice(None), *block)].contiguous(), sub_grid(box, block)))
        return tuple(out)


def refiner_loss(model: RegistrationModel, refiners, fixed, moving, fixed_gland, moving_gland, grids, aug,
                 gen) -> tuple:
    """Soft Dice + cross-entropy of each refiner on its box, each image under its own random affine
    and intensity change; the box is centred on the frozen first pass's gland (as seen) plus a
    uniform jitter of +-:data:`JITTER_MM`."""
    dice, ce = torch.zeros(()), torch.zeros(())
    frame = model.config.frame
    for role, image, gland, grid in zip(ROLES, (fixed, moving), (fixed_gland, moving_gland), grids):
        b = image.shape[0]
        r = augment.random_affine(b, grid.center_lps, aug, gen)
        image = augment.intensity(image, aug, gen)
        coarse_grid = model.localiser_grid(grid, role)
        with torch.no_grad():
            seen = sample(image, grid, transform_points(r, coarse_grid.points_lps()))
            p = torch.sigmoid(model.localisers[role](seen))
            centre, found = probability_centroid_lps(p, coarse_grid)
        jitter = (torch.rand(b, 3, generator=gen, dtype=torch.float64) * 2 - 1) * JITTER_MM
        inputs, targets = [], []
        for k in range(b):
            c = (centre[k].double() if bool(found[k]) else torch.as_tensor(coarse_grid.center_lps)) + jitter[k]
            box_points = box_grid(c.numpy(), frame).points_lps()
            where = transform_points(r[k:k + 1], box_points[None])
            inputs.append(torch.cat([sample(image[k:k + 1], grid, where), sample(p[k:k + 1], coarse_grid,
                                                                                  box_points[None])], 1))
            targets.append(sample(gland[k:k + 1], grid, where).clamp(0, 1))
        x, target = torch.cat(inputs), torch.cat(targets)
        logits = forward_refiner(refiners[role], x)
        q = torch.sigmoid(logits)
        dice = dice + 1 - (2 * (q * target).sum() + 1) / (q.sum() + target.sum() + 1)
        ce = ce + F.binary_cross_entropy_with_logits(logits, target)
    return dice + ce, dice.detach(), ce.detach()


def learning_rate(step: int, steps: int, lr: float, lr_final: float) -> float:
    warm = min(1.0, (step + 1) / 50)
    return warm * (lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * min(1.0, step / steps))))


def save(obj, path: Path):
    with AtomicFile(path) as tmp:
        torch.save(obj, tmp)


def train(args):
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    train_cases, _, _ = split_cases(data.subjects, 5, args.fold, 0, 0.15)
    cases = data.subset(train_cases)
    model = load_base(args.model)
    model.eval().requires_grad_(False)
    torch.manual_seed(1000 + args.fold)
    refiners = nn.ModuleDict({role: make_refiner(model.localisers[role]) for role in ROLES})
    refiners.train()
    optimizer = torch.optim.Adam(refiners.parameters(), lr=args.lr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    if (out / "checkpoint.pt").exists():
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        refiners.load_state_dict(state["refiners"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    aug = augment.AugmentConfig()
    grids = (data.fixed_grid, data.moving_grid)
    last_save, clock, running = time.monotonic(), time.monotonic(), []
    with open(out / "log.csv", "a", newline="") as log:
        writer = csv.writer(log)
        while step < args.steps:
            gen = torch.Generator().manual_seed(7_000_003 * (args.fold + 1) + step)
            idx = torch.randint(len(cases), (args.batch,), generator=gen).tolist()
            chosen = [cases[i] for i in idx]
            fixed = torch.stack([c.fixed for c in chosen]).float()
            moving = torch.stack([c.moving for c in chosen]).float()
            fixed_gland = torch.stack([c.fixed_labels[:1] for c in chosen]).float()
            moving_gland = torch.stack([c.moving_labels[:1] for c in chosen]).float()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args.steps, args.lr, args.lr_final)
            loss, dice, ce = refiner_loss(model, refiners, fixed, moving, fixed_gland, moving_gland, grids, aug, gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running.append((loss.item(), dice.item(), ce.item()))
            if step % 10 == 0 or step == args.steps:
                mean = np.mean(running, axis=0)
                writer.writerow([step, *np.round(mean, 5), round(time.monotonic() - clock, 1)])
                log.flush()
                running = []
            if time.monotonic() - last_save > 180 or step == args.steps:
                save({"refiners": refiners.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                     out / "checkpoint.pt")
                last_save = time.monotonic()
    save({"refiners": refiners.state_dict(), "box_mm": BOX_MM, "spacing_mm": SPACING_MM, "steps": step,
          "model": str(args.model)}, out / "refiners.pt")
    print(f"done: {out / 'refiners.pt'}", flush=True)


def evaluate(args):
    from labelreg.metrics import format_metrics
    from labelreg_training.data import validation_cases
    from labelreg_training.evaluate import evaluate_model, load_pairs

    torch.set_num_threads(args.threads)
    base = load_base(args.model)
    refiners = nn.ModuleDict({role: make_refiner(base.localisers[role]) for role in ROLES})
    if args.refiners != "none":
        refiners.load_state_dict(torch.load(args.refiners, weights_only=True)["refiners"])
        model = RefinedModel(base, refiners).eval()
    else:
        model = base.eval()
    data_dir, names = validation_cases(args.data, 5, args.fold, 0, "validation")
    pairs = load_pairs(data_dir, names)
    rows, summary = evaluate_model(model, pairs, args.mode, "cpu", batch=1)
    print(f"{args.mode} on {len(rows)} cases: {format_metrics(summary)}, {summary['seconds_per_pair']:.3f} s/pair")
    out = {"mode": args.mode, "label": args.label, "fold": args.fold, "folds": 5, "split": "validation",
           "checkpoint": args.model, "refiners": args.refiners, "summary": summary, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=float))


def segmentation(args):
    """Each localiser's gland Dice against the label on the image's own grid (thresholded at 0.5),
    first pass (3 mm) and refined (1.5 mm box), for the fold's validation pairs."""
    from labelreg_training.data import validation_cases
    from labelreg_training.evaluate import load_pairs, predicted_gland_maps

    torch.set_num_threads(args.threads)
    base = load_base(args.model)
    refiners = nn.ModuleDict({role: make_refiner(base.localisers[role]) for role in ROLES})
    refiners.load_state_dict(torch.load(args.refiners, weights_only=True)["refiners"])
    refined_model = RefinedModel(base, refiners).eval()
    data_dir, names = validation_cases(args.data, 5, args.fold, 0, "validation")
    rows = []
    for name, fixed, moving, moving_labels, fixed_labels in load_pairs(data_dir, names):
        row = {"case": name}
        for label, model in (("coarse", base.eval()), ("refined", refined_model)):
            maps = predicted_gland_maps(model, fixed, moving)
            for role, (p, grid), labels in zip(ROLES, maps, (fixed_labels, moving_labels)):
                on_image = sample(p, grid, labels.grid.points_lps()[None])[0, 0].numpy() > 0.5
                truth = labels.channels[0] > 0.5
                row[f"{role}_{label}"] = 2 * (on_image & truth).sum() / max(on_image.sum() + truth.sum(), 1)
        rows.append(row)
        print(", ".join(f"{k} {v:.3f}" if not isinstance(v, str) else v for k, v in row.items()), flush=True)
    for key in rows[0]:
        if key != "case":
            print(f"median {key}: {np.median([r[key] for r in rows]):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("data")
    t.add_argument("fold", type=int)
    t.add_argument("model")
    t.add_argument("out")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--lr-final", type=float, default=2e-5)
    t.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("evaluate")
    e.add_argument("data")
    e.add_argument("fold", type=int)
    e.add_argument("model")
    e.add_argument("refiners", help="OUT/refiners.pt, or 'none' for the fold model itself one pair at a time")
    e.add_argument("json")
    e.add_argument("--mode", default="local")
    e.add_argument("--label", default="refined")
    e.add_argument("--threads", type=int, default=1)
    g = sub.add_parser("segmentation")
    g.add_argument("data")
    g.add_argument("fold", type=int)
    g.add_argument("model")
    g.add_argument("refiners")
    g.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    {"train": train, "evaluate": evaluate, "segmentation": segmentation}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

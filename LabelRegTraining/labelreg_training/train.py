"""Training loop: one stage (global, local, joint or local-only) of the label-driven method.

Resumable bit-for-bit: every step draws its cases, label channels and augmentation from a
generator seeded by (seed, stage, step, rank), and the checkpoint (model, optimiser, step)
is written atomically every few minutes. Runs on CPU, one GPU, or several processes with
``torchrun`` (DDP; gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from labelreg.io import AtomicFile
from labelreg.model import ModelConfig, RegistrationModel
from labelreg.transforms import initial_transform, transform_points
from labelreg.warp import sample, sample_field
from torch import nn

from . import augment, losses
from .data import TUNE_FRACTION, Dataset, split_cases

#: stage -> the registration mode it is evaluated in. "localiser" trains the two gland
#: localisers (segmentation of the gland label, a training target only); its tuning evaluation
#: is the "affine" mode of a still untrained global net: the gland translation itself.
STAGES = {"localiser": "affine", "global": "affine", "local": "deformable", "joint": "deformable",
          "local_only": "local"}
LABEL_DRAWS = ("one", "all")


@dataclass
class TrainConfig:
    """One training stage. Saved beside every checkpoint as config.json."""

    out_dir: str = "runs/fold0"
    stage: str = "global"
    steps: int = 2000
    batch_size: int = 4
    lr: float = 3e-4
    lr_final: float = 3e-5
    folds: int = 5
    fold: int = 0
    #: seeds the subject split (and, with ``run_seed``, the weights and the draws)
    seed: int = 0
    #: another initialisation and draw order on the same split (members of an ensemble)
    run_seed: int = 0
    dice_weight: float = 1.0
    #: smoothed, label-balanced cross-entropy; off by default: on the MR-TRUS fold-0 runs it made
    #: training unstable (local-only, fold-0 validation TRE 16.6 mm vs 9.0 mm with Dice alone at step 1200)
    ce_weight: float = 0.0
    bending_weight: float = 5.0
    smoothing_mm: float = 3.0
    #: spacing of the grid the label losses are computed on (0: the network grid). The labels are
    #: sampled there through the network's field interpolated to it, so a finer loss grid sees small
    #: landmarks without aliasing while the networks keep their grid; the bending energy stays on
    #: the network grid.
    loss_spacing_mm: float = 0.0
    dice_scales_mm: tuple = (0.0, 1.5, 3.0, 6.0, 12.0)
    gland_draw_weight: float = 2.0
    #: "one": the paper's sampling, one label per case and step, the gland drawn
    #: ``gland_draw_weight`` times as often as each landmark; "all": every label of the case in
    #: each step, weighted in that ratio (the expected loss of the draw, without its variance)
    label_draw: str = "one"
    #: the affine head sees thousands of pooled features: a smaller step keeps the affine stable
    head_lr_scale: float = 0.03
    #: exponential moving average of the weights (0: off). Tuning evaluations and best.pt use the
    #: averaged weights; the checkpoint keeps both, so a resume continues exactly.
    ema_decay: float = 0.0
    init_from: str = ""
    #: wall-clock budget of the stage in minutes (0: none). The stage ends at ``steps`` or when the
    #: budget is spent, whichever comes first, and the learning rate decays with whichever is further
    #: along, so a time-boxed run (a rented GPU) still ends with a fully decayed rate. Such a run
    #: depends on the machine's speed, so its resume is not bit-for-bit.
    minutes: float = 0.0
    checkpoint_minutes: float = 3.0
    log_every: int = 10
    val_every: int = 250
    #: share of the training subjects held out to pick the best checkpoint (never the validation fold)
    tune_fraction: float = TUNE_FRACTION
    #: share of the training subjects the stage learns from (a seeded, nested subset; learning curves)
    train_fraction: float = 1.0
    threads: int = 2
    device: str = "auto"
    augment: dict = field(default_factory=lambda: asdict(augment.AugmentConfig()))
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {tuple(STAGES)}, got {self.stage!r}")
        if self.label_draw not in LABEL_DRAWS:
            raise ValueError(f"label_draw must be one of {LABEL_DRAWS}, got {self.label_draw!r}")
        if self.loss_spacing_mm < 0:
            raise ValueError(f"loss_spacing_mm must be positive (or 0: the network grid), got {self.loss_spacing_mm}")
        self.dice_scales_mm = tuple(self.dice_scales_mm)
        # a misspelt key would otherwise be dropped (model) or fail only at the first step (augment)
        for name, known in (("model", ModelConfig.__dataclass_fields__),
                            ("augment", augment.AugmentConfig.__dataclass_fields__)):
            unknown = sorted(set(getattr(self, name)) - set(known))
            if unknown:
                raise ValueError(f"unknown {name} setting(s) {unknown} in the training config; "
                                 f"the known ones are {sorted(known)}")
        ModelConfig.from_dict(self.model)  # checks the values now, with the model's own messages
        augment.AugmentConfig(**self.augment)


class LossModule(nn.Module):
    """Wraps the model so that DDP sees one forward: batch -> (loss, terms)."""

    def __init__(self, model: RegistrationModel, cfg: TrainConfig, data: Dataset):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.fixed_grid, self.moving_grid = data.fixed_grid, data.moving_grid
        self.aug = augment.AugmentConfig(**cfg.augment)
        alignment = model.config.initial_alignment
        self.initial = None if alignment == "gland" else torch.as_tensor(
            initial_transform(data.fixed_grid, data.moving_grid, alignment), dtype=torch.float32)

    def forward(self, fixed, moving, fixed_label, moving_label, label_weights, gen: torch.Generator):
        """One step's loss; the labels are (B, C, ...) with (B, C) ``label_weights`` (see :func:`draw_batch`)."""
        cfg, aug, model = self.cfg, self.aug, self.model
        if cfg.stage == "localiser":
            return self.localiser_loss(fixed, moving, fixed_label, moving_label, gen)
        b, dev = fixed.shape[0], fixed.device
        net_grid = model.network_grid(self.fixed_grid)
        points = net_grid.points_lps(device=dev)
        r_fixed = augment.random_affine(b, self.fixed_grid.center_lps, aug, gen).to(dev)
        r_moving = augment.random_affine(b, self.moving_grid.center_lps, aug, gen).to(dev)
        if aug.mirror:  # the same mirror for both images: the pair stays a true pair
            flip = augment.random_mirrors(b, aug, gen)
            r_fixed = r_fixed @ augment.mirror_lps(flip, self.fixed_grid.center_lps, aug.mirror_axis_lps).to(dev)
            r_moving = r_moving @ augment.mirror_lps(flip, self.moving_grid.center_lps, aug.mirror_axis_lps).to(dev)
        jitter = augment.smooth_displacement(b, net_grid.shape_zyx, aug, gen, dev)  # on the network grid
        fixed_points = transform_points(r_fixed, points) + jitter
        fixed = augment.intensity(fixed, aug, gen)
        moving = augment.intensity(moving, aug, gen)
        # the frozen localisers' gland maps, when the model uses them (computed once per step)
        maps = (model.gland_maps(fixed, self.fixed_grid, moving, self.moving_grid)
                if model.uses_gland_maps(model.config.initial_alignment, STAGES[cfg.stage]) else None)
        if self.initial is None:  # the gland translation, as seen on the augmented pair
            with torch.no_grad():
                base = model.initial_lps(fixed, self.fixed_grid, moving, self.moving_grid, views_lps=(r_fixed, r_moving),
                                         gland_maps=maps)
        else:
            base = self.initial.to(dev)
        initial = r_moving @ base
        residual = (augment.random_affine(b, self.fixed_grid.center_lps, aug.residual, gen).to(dev)
                    if aug.has_residual and STAGES[cfg.stage] != "affine" else None)
        affine, ddf, net_grid, _ = model.forward_pair(
            fixed, self.fixed_grid, moving, self.moving_grid, initial, STAGES[cfg.stage],
            fixed_points_lps=fixed_points, train_global=cfg.stage != "local", residual_lps=residual, gland_maps=maps)
        loss_grid, loss_points, loss_fixed_points, loss_ddf = net_grid, points, fixed_points, ddf
        if cfg.loss_spacing_mm:  # the same mappings, interpolated to the finer loss grid
            loss_grid = model.frame_grid(self.fixed_grid, "fixed", cfg.loss_spacing_mm, model.grid_multiple)
            loss_points = loss_grid.points_lps(device=dev)
            loss_fixed_points = transform_points(r_fixed, loss_points) + sample_field(jitter, net_grid, loss_points)
            loss_ddf = None if ddf is None else sample_field(ddf, net_grid, loss_points)
        warped = sample(moving_label, self.moving_grid, transform_points(affine, loss_points, loss_ddf)).clamp(0, 1)
        target = sample(fixed_label, self.fixed_grid, loss_fixed_points).clamp(0, 1)
        spacing = loss_grid.spacing
        # each label map its own sample of the losses: (B, C, ...) -> (B * C, 1, ...)
        warped, target = warped.flatten(0, 1).unsqueeze(1), target.flatten(0, 1).unsqueeze(1)
        weights = label_weights.flatten()
        dice = losses.multiscale_dice(warped, target, spacing, cfg.dice_scales_mm, weights)
        ce = (losses.weighted_cross_entropy(warped, losses.smooth_label(target, cfg.smoothing_mm, spacing), weights)
              if cfg.ce_weight else torch.zeros((), device=dev))
        bending = losses.bending_energy(ddf, net_grid.spacing) if ddf is not None else torch.zeros((), device=dev)
        loss = cfg.dice_weight * dice + cfg.ce_weight * ce + cfg.bending_weight * bending
        return loss, torch.stack([dice.detach(), ce.detach(), bending.detach()])

    def localiser_loss(self, fixed, moving, fixed_gland, moving_gland, gen: torch.Generator):
        """Soft Dice + cross-entropy of each localiser's gland prediction, each image with its own
        random affine, deformation and intensity change, on the grid :meth:`initial_lps` uses."""
        aug, model, dev = self.aug, self.model, fixed.device
        dice, ce = torch.zeros((), device=dev), torch.zeros((), device=dev)
        for role, image, gland, grid in (("fixed", fixed, fixed_gland, self.fixed_grid),
                                         ("moving", moving, moving_gland, self.moving_grid)):
            net = model.localisers[role]
            net_grid = model.localiser_grid(grid, role)
            r = augment.random_affine(image.shape[0], grid.center_lps, aug, gen).to(dev)
            if aug.mirror:  # segmentation: each image its own mirror draw
                r = r @ augment.mirror_lps(augment.random_mirrors(image.shape[0], aug, gen), grid.center_lps,
                                           aug.mirror_axis_lps).to(dev)
            points = transform_points(r, net_grid.points_lps(device=dev)) + augment.smooth_displacement(
                image.shape[0], net_grid.shape_zyx, aug, gen, dev)
            seen = sample(augment.intensity(image, aug, gen), grid, points)
            target = sample(gland, grid, points).clamp(0, 1)
            if role == "fixed":  # the TRUS volume may end inside the gland
                seen, target = augment.cut_field_of_view(seen, target, aug, gen)
            logits = net(seen)
            p = torch.sigmoid(logits)
            dice = dice + 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
            ce = ce + F.binary_cross_entropy_with_logits(logits, target)
        zero = torch.zeros((), device=dev)
        return dice + ce, torch.stack([dice.detach(), ce.detach(), zero])


def draw_batch(cases: list, cfg: TrainConfig, gen: torch.Generator, device):
    """(fixed, moving, fixed labels, moving labels, label weights) of ``batch_size`` cases drawn
    uniformly. The labels are (B, C, ...) with (B, C) weights that sum to 1 per case:

    * ``label_draw`` "one" (the paper's): C = 1, one label per case, the gland drawn
      ``gland_draw_weight`` times as often as each landmark;
    * "all": every label of the case, weighted in that ratio; cases with fewer labels are padded
      with empty maps of weight 0.

    The localiser stage learns the gland only (C = 1)."""
    idx = torch.randint(len(cases), (cfg.batch_size,), generator=gen).tolist()
    chosen = [cases[i] for i in idx]
    every_label = cfg.label_draw == "all" and cfg.stage != "localiser"
    channels, weights = [], []
    for c in chosen:
        w = torch.ones(c.fixed_labels.shape[0], dtype=torch.float64)
        w[0] = cfg.gland_draw_weight
        if every_label:
            channels.append(list(range(len(w))))
            weights.append(w / w.sum())
            continue
        if cfg.stage == "localiser":  # the localisers learn the gland only
            w[1:] = 0.0
        channels.append([int(torch.multinomial(w, 1, generator=gen))])
        weights.append(torch.ones(1))
    width = max(len(ch) for ch in channels)

    def labels(attr):
        out = torch.zeros((len(chosen), width, *getattr(chosen[0], attr).shape[1:]))
        for i, (c, ch) in enumerate(zip(chosen, channels)):
            out[i, :len(ch)] = getattr(c, attr)[ch].float()
        return out.to(device)

    label_weights = torch.zeros(len(chosen), width)
    for i, w in enumerate(weights):
        label_weights[i, :len(w)] = w.float()
    return (torch.stack([c.fixed for c in chosen]).float().to(device),
            torch.stack([c.moving for c in chosen]).float().to(device),
            labels("fixed_labels"), labels("moving_labels"), label_weights.to(device))


def load_init(model: RegistrationModel, state: dict, log=print):
    """``init_from``: copy a checkpoint's weights into ``model``. A network this stage trains may
    have another shape in the model (e.g. a local net with gland-map inputs on top of a localiser
    checkpoint): that network then keeps its fresh initial weights. Any other mismatch is an error."""
    own = model.state_dict()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    for k in changed:
        if k not in trained:
            raise ValueError(f"--init-from: {k} is {tuple(state[k].shape)} in the checkpoint but {tuple(own[k].shape)} "
                             "in this model, and this stage does not train it: start from a matching checkpoint")
    fresh = sorted({k.split(".")[0] for k in changed})
    if fresh:
        log(f"init_from: {', '.join(fresh)} changed shape; it starts from fresh weights")
        state = {k: v for k, v in state.items() if k.split(".")[0] not in fresh}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.split(".")[0] not in fresh for k in missing):
        raise ValueError(f"--init-from: the checkpoint does not match this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def set_trainable(model: RegistrationModel, stage: str):
    if stage == "localiser" and model.localisers is None:
        raise ValueError("stage 'localiser' needs a model with gland localisers: set model.localiser (e.g. "
                         "{'base_channels': 16, 'levels': 3}) and model.initial_alignment 'gland' in the config")
    train_global = stage in ("global", "joint")
    train_local = stage in ("local", "joint", "local_only")
    for p in model.global_net.parameters():
        p.requires_grad_(train_global)
    for p in model.local_net.parameters():
        p.requires_grad_(train_local)
    model.train()
    if not train_global:
        model.global_net.eval()  # frozen: batch-norm keeps its running statistics
    if not train_local:
        model.local_net.eval()
    if model.localisers is not None:  # trained in their own stage, frozen in the others
        model.localisers.requires_grad_(stage == "localiser").train(stage == "localiser")


def learning_rate(cfg: TrainConfig, step: int, progress: float | None = None) -> float:
    """Short warm-up, then cosine decay from lr to lr_final over ``progress`` (default
    ``step / steps``) from 0 to 1."""
    warm = min(1.0, (step + 1) / 50)
    t = min(1.0, step / max(1, cfg.steps) if progress is None else progress)
    return warm * (cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * t)))


def _atomic_torch_save(obj, path: Path):
    with AtomicFile(path) as tmp:
        torch.save(obj, tmp)


#: model options that change no weight, so a checkpoint may be loaded with others (``evaluate``, ``export``)
INFERENCE_OPTIONS = ("gland_translation", "overlap_radius_mm")


def load_checkpoint(path, **options) -> tuple:
    """(model with the checkpoint's weights, the checkpoint dict) from a training checkpoint;
    ``options``: :data:`INFERENCE_OPTIONS` to set in its model configuration."""
    unknown = set(options) - set(INFERENCE_OPTIONS)
    if unknown:
        raise ValueError(f"only {INFERENCE_OPTIONS} can be changed when loading a checkpoint, got {sorted(unknown)}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = RegistrationModel(ModelConfig.from_dict(state["model_config"] | options))
    model.load_state_dict(state["model"])
    return model, state


def update_ema(ema: dict, model: nn.Module, decay: float):
    """``ema <- decay * ema + (1 - decay) * weights`` for floating-point entries; others copied."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema[key].lerp_(value, 1.0 - decay)
            else:
                ema[key].copy_(value)


@contextmanager
def weights_swapped(model: nn.Module, weights: dict | None):
    """Run the block with ``weights`` loaded into ``model`` (no-op for None), then restore."""
    if weights is None:
        yield
        return
    live = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(live)


def _distributed() -> tuple:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(cfg: TrainConfig, data: Dataset, resume: bool = False, log=print, evaluate_fn=None,
          stop_after: int | None = None, clock=time.monotonic) -> Path:
    """Run (or continue) one stage; returns the checkpoint path. ``stop_after`` ends this run
    early after that many steps (a time-boxed session); ``--resume`` continues it exactly.
    ``clock`` (seconds) times the ``minutes`` budget and the checkpoint interval."""
    rank, world = _distributed()
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    out = Path(cfg.out_dir)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.csv"
    train_cases, tune_cases, val_cases = split_cases(data.subjects, cfg.folds, cfg.fold, cfg.seed, cfg.tune_fraction,
                                                       cfg.train_fraction)
    # the training cases live where the model trains (a GPU holds the whole set easily)
    cases = [replace(c, fixed=c.fixed.to(device), moving=c.moving.to(device), fixed_labels=c.fixed_labels.to(device),
                     moving_labels=c.moving_labels.to(device)) for c in data.subset(train_cases)]

    run = cfg.seed + 1000 * cfg.run_seed
    torch.manual_seed(run)  # the same initial weights on every rank and every rerun
    # the fields of view the networks see are the training images' own, recorded in the model
    model = RegistrationModel(ModelConfig.from_dict(cfg.model).with_fields_of(data.fixed_grid, data.moving_grid))
    set_trainable(model, cfg.stage)
    if cfg.init_from:
        state = torch.load(cfg.init_from, map_location="cpu", weights_only=True)
        load_init(model, state.get("model", state.get("state_dict")), log)
    model.to(device)
    head = [p for p in model.global_net.head.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("global_net.head.")]
    optimizer = torch.optim.Adam([{"params": rest, "lr_scale": 1.0}, {"params": head, "lr_scale": cfg.head_lr_scale}],
                                 lr=cfg.lr)
    step, seconds_before = 0, 0.0
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema_decay else None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema = {k: v.to(device) for k, v in state["ema"].items()}
        step, seconds_before = int(state["step"]), float(state.get("seconds", 0.0))
        log(f"resumed {ckpt_path} at step {step}")
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        with AtomicFile(out / "config.json") as tmp:
            Path(tmp).write_text(json.dumps(asdict(cfg) | {"train_cases": train_cases, "tune_cases": tune_cases,
                                                        "val_cases": val_cases}, indent=2))
    set_trainable(model, cfg.stage)
    module = LossModule(model, cfg, data)
    runner = nn.parallel.DistributedDataParallel(module) if world > 1 else module
    _truncate_log(log_path, step)

    best_path = out / "best.pt"
    best = torch.load(best_path, weights_only=True)["score"] if resume and best_path.exists() else float("inf")

    def save(path=ckpt_path, weights=None, **extra):
        if rank == 0:
            averaged = {} if ema is None else {"ema": ema}
            _atomic_torch_save({"model": weights or model.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step, "seconds": seconds(), "stage": cfg.stage,
                                "model_config": model.config.to_dict(), **averaged, **extra}, path)

    stage_index = list(STAGES).index(cfg.stage)
    last_save, start, running = clock(), clock(), torch.zeros(4)

    def seconds():  # training time of this stage, over all runs
        return seconds_before + clock() - start

    def fraction_done():  # of the stage, by steps or by time; the same on every rank
        done = step / max(1, cfg.steps)
        if cfg.minutes > 0:
            done = max(done, seconds() / (60 * cfg.minutes))
            if world > 1:
                shared = torch.tensor([done], device=device if device.type == "cuda" else "cpu")
                dist.all_reduce(shared, op=dist.ReduceOp.MAX)
                done = float(shared.item())
        return done

    progress = _progress(None if cfg.minutes > 0 else cfg.steps, step) if rank == 0 else None  # time-boxed: no ETA by steps
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    done = fraction_done()
    finished = step >= end or done >= 1
    while not finished:
        gen = torch.Generator().manual_seed(((run * 10 + stage_index) * 1_000_003 + step) * 64 + rank)
        lr = learning_rate(cfg, step, done)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        batch = draw_batch(cases, cfg, gen, device)
        loss, terms = runner(*batch, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if ema is not None:
            update_ema(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        done = fraction_done()
        finished = step >= end or done >= 1
        running += torch.cat([loss.detach().cpu()[None], terms.cpu()])
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
        last = finished and done >= 1  # the stage's end, not a stop_after pause
        if rank == 0 and (step % cfg.log_every == 0 or last):
            n = (step - 1) % cfg.log_every + 1
            row = {"step": step, "loss": running[0].item() / n, "dice_loss": running[1].item() / n,
                   "ce": running[2].item() / n, "bending": running[3].item() / n,
                   "lr": lr, "seconds": round(seconds(), 1)}
            if evaluate_fn is not None and tune_cases and (step % cfg.val_every == 0 or last):
                with weights_swapped(model, ema):
                    row.update(evaluate_fn(model, tune_cases))
                set_trainable(model, cfg.stage)
                score = selection_score(row)
                if score < best:
                    best = score
                    save(best_path, weights=ema, score=score)
            _append_log(log_path, row)
            running.zero_()
        if clock() - last_save > 60 * cfg.checkpoint_minutes:
            save()
            last_save = clock()
    save()
    if progress is not None:
        progress.close()
    if world > 1:
        dist.barrier()  # every rank returns once rank 0's final checkpoint is written
    return ckpt_path


LOG_FIELDS = ["step", "loss", "dice_loss", "ce", "bending", "lr", "seconds",
              "tune_tre_median_mm", "tune_tre_p90_mm", "tune_dice_median", "tune_dice_p10"]


def selection_score(row: dict) -> float:
    """Lower is better: median landmark TRE (mm) minus 10 mm per unit of median gland Dice."""
    return row["tune_tre_median_mm"] - 10.0 * row["tune_dice_median"]


def _append_log(path: Path, row: dict):
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _truncate_log(path: Path, step: int):
    """Drop log rows written after the checkpoint being resumed (or all, on a fresh start)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with AtomicFile(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=5)

"""Training loop: one stage (localiser, global, local or local-only) of the label-driven method.

Resumable bit-for-bit: every step draws its cases, label channels and augmentation from a
generator seeded by (seed, stage, step, rank), and the checkpoint (model, optimiser, step)
is written atomically every few minutes. Runs on CPU, one GPU, or several processes with
``torchrun`` (DDP; gloo on CPU, NCCL on GPU).

:func:`train` runs the named steps: :func:`select_device`, :func:`initial_model` (seeded weights,
``init_from``), :func:`make_optimizer`, :meth:`StageRun.resume` or :func:`write_run_config`, then
:meth:`StageRun.run`, whose steps log (:meth:`StageRun.log_row`), select the best checkpoint on
the tuning subjects (:meth:`StageRun.select`) and save (:meth:`StageRun.save`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from labelreg.io import AtomicFile
from labelreg.model import ModelConfig, RegistrationModel
from labelreg.model import retire_options as retire_model_options
from labelreg.transforms import initial_transform, transform_points
from labelreg.warp import sample
from torch import nn

from . import augment, losses
from .data import TUNE_FRACTION, Dataset, split_cases

#: stage -> the registration mode it is trained and evaluated in. "localiser" trains the two gland
#: localisers (segmentation of the gland label, a training target only); its tuning evaluation
#: is the "affine" mode of a still untrained global net: the gland translation itself. The
#: bundled recipe runs "localiser" then "local_only"; "global" then "local" (on the frozen global
#: net) train the model's affine element and the local net after it.
STAGES = {"localiser": "affine", "global": "affine", "local": "deformable", "local_only": "local"}
#: each stage's stream of random draws (3 was the retired joint stage: the others draw what they always drew)
STAGE_STREAMS = {"localiser": 0, "global": 1, "local": 2, "local_only": 4}
#: the global net's dense head sees thousands of pooled features: a smaller step keeps the affine stable
HEAD_LR_SCALE = 0.03
#: the Gaussian scales (mm) of the multiscale Dice
DICE_SCALES_MM = (0.0, 1.5, 3.0, 6.0, 12.0)
#: the paper's sampling: one label per case and step, the gland this many times as often as each landmark
GLAND_DRAW_WEIGHT = 2.0
CHECKPOINT, BEST, LOG = "checkpoint.pt", "best.pt", "log.csv"

ANY = object()
#: options of earlier versions that only rejected research experiments set (their configs are kept in the record),
#: with the value under which each changed nothing (ANY: it had no effect whatever its value,
#: e.g. the smoothing of the removed cross-entropy term): a config or run that holds them so
#: loads, one that used them is refused (:func:`retire_options`).
RETIRED_OPTIONS = {"dice_weight": 1.0, "ce_weight": 0.0, "smoothing_mm": ANY, "loss_spacing_mm": 0.0,
                   "dice_scales_mm": DICE_SCALES_MM, "gland_draw_weight": GLAND_DRAW_WEIGHT, "label_draw": "one",
                   "head_lr_scale": HEAD_LR_SCALE, "ema_decay": 0.0, "train_fraction": 1.0}
RETIRED_AUGMENT_OPTIONS = {"residual_rotation_deg": 0.0, "residual_scale": 0.0, "residual_translation_mm": 0.0,
                           "mirror": 0.0, "mirror_axis_lps": ANY, "fov_cut": 0.0}


def _inert(value, inert) -> bool:
    if inert is ANY:
        return True
    return list(value) == list(inert) if isinstance(value, (list, tuple)) else value == inert


def retire_options(values: dict) -> dict:
    """A training config as read from JSON (``--config``, a run's config.json) without the options
    of :data:`RETIRED_OPTIONS` and :data:`RETIRED_AUGMENT_OPTIONS` that hold their inert value;
    ValueError naming the first that does not, and what to do."""
    out = dict(values)
    augment_values = dict(out.get("augment") or {})
    for section, retired, prefix in ((out, RETIRED_OPTIONS, ""), (augment_values, RETIRED_AUGMENT_OPTIONS, "augment.")):
        for option, inert in retired.items():
            value = section.pop(option, inert)
            if not _inert(value, inert):
                raise ValueError(f"training option {prefix}{option} = {value!r} was removed (only a rejected research "
                                 "experiment used it): train with the current options, or rerun that experiment with "
                                 "labelreg <= 0.1")
    if "augment" in out:
        out["augment"] = augment_values
    return out


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
    #: weight of the displacement's bending energy against the multiscale label Dice
    bending_weight: float = 5.0
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
    threads: int = 2
    device: str = "auto"
    augment: dict = field(default_factory=lambda: asdict(augment.AugmentConfig()))
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from JSON (``--config``): options of earlier versions checked by :func:`retire_options`."""
        return cls(**retire_options(values))

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {tuple(STAGES)}, got {self.stage!r}")
        self.model = retire_model_options(self.model)  # an earlier version's run: inert options dropped
        ModelConfig.from_dict(self.model)  # checks the values now, with the model's own messages
        # a misspelt key would otherwise be dropped (model) or fail only at the first step (augment)
        for name, known in (("model", ModelConfig.__dataclass_fields__),
                            ("augment", augment.AugmentConfig.__dataclass_fields__)):
            unknown = sorted(set(getattr(self, name)) - set(known))
            if unknown:
                raise ValueError(f"unknown {name} setting(s) {unknown} in the training config; "
                                 f"the known ones are {sorted(known)}")
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

    def forward(self, fixed, moving, fixed_label, moving_label, gen: torch.Generator):
        """One step's loss; the labels are (B, 1, ...): one label per case (see :func:`draw_batch`).

        The networks see the fixed image at ``r_fixed x + jitter(x)`` and the moving one through
        ``r_moving``, two random affines, with random intensity changes."""
        if self.cfg.stage == "localiser":
            return self.localiser_loss(fixed, moving, fixed_label, moving_label, gen)
        aug, model, b, dev = self.aug, self.model, fixed.shape[0], fixed.device
        net_grid = model.network_grid(self.fixed_grid)
        r_fixed = augment.random_affine(b, self.fixed_grid.center_lps, aug, gen).to(dev)
        r_moving = augment.random_affine(b, self.moving_grid.center_lps, aug, gen).to(dev)
        jitter = augment.smooth_displacement(b, net_grid.shape_zyx, aug, gen, dev)  # on the network grid
        fixed_points = transform_points(r_fixed, net_grid.points_lps(device=dev)) + jitter
        fixed = augment.intensity(fixed, aug, gen)
        moving = augment.intensity(moving, aug, gen)
        initial = r_moving @ self.initial_alignment(fixed, moving, (r_fixed, r_moving))
        affine, ddf, net_grid, _ = model.forward_on_grid(sample(fixed, self.fixed_grid, fixed_points), net_grid,
                                                         moving, self.moving_grid, initial, STAGES[self.cfg.stage])
        return self.registration_loss(affine, ddf, net_grid, fixed_points, fixed_label, moving_label)

    def initial_alignment(self, fixed, moving, views_lps):
        """The initial transform of the pairs as the networks see them: the frozen localisers'
        gland translation on the augmented pair, or the model's grid alignment."""
        if self.initial is not None:
            return self.initial.to(fixed.device)
        with torch.no_grad():
            return self.model.initial_lps(fixed, self.fixed_grid, moving, self.moving_grid, views_lps=views_lps)

    def registration_loss(self, affine, ddf, net_grid, fixed_points, fixed_label, moving_label):
        """Multiscale Dice of the warped moving label against the fixed one on the network grid,
        plus ``bending_weight`` times the bending energy of the displacement (when there is one);
        returns (loss, (dice, 0, bending)): the log's dice_loss, ce and bending columns."""
        points = net_grid.points_lps(device=affine.device)
        warped = sample(moving_label, self.moving_grid, transform_points(affine, points, ddf)).clamp(0, 1)
        target = sample(fixed_label, self.fixed_grid, fixed_points).clamp(0, 1)
        dice = losses.multiscale_dice(warped, target, net_grid.spacing, DICE_SCALES_MM)
        zero = torch.zeros((), device=affine.device)
        bending = losses.bending_energy(ddf, net_grid.spacing) if ddf is not None else zero
        return dice + self.cfg.bending_weight * bending, torch.stack([dice.detach(), zero, bending.detach()])

    def localiser_loss(self, fixed, moving, fixed_gland, moving_gland, gen: torch.Generator):
        """Soft Dice + cross-entropy of each localiser's gland prediction, each image with its own
        random affine, deformation and intensity change, on the grid :meth:`initial_lps` uses."""
        aug, model, dev = self.aug, self.model, fixed.device
        dice, ce = torch.zeros((), device=dev), torch.zeros((), device=dev)
        for role, image, gland, grid in (("fixed", fixed, fixed_gland, self.fixed_grid),
                                         ("moving", moving, moving_gland, self.moving_grid)):
            net_grid = model.localiser_grid(grid, role)
            r = augment.random_affine(image.shape[0], grid.center_lps, aug, gen).to(dev)
            points = transform_points(r, net_grid.points_lps(device=dev)) + augment.smooth_displacement(
                image.shape[0], net_grid.shape_zyx, aug, gen, dev)
            seen = sample(augment.intensity(image, aug, gen), grid, points)
            target = sample(gland, grid, points).clamp(0, 1)
            logits = model.localisers[role](seen)
            p = torch.sigmoid(logits)
            dice = dice + 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
            ce = ce + F.binary_cross_entropy_with_logits(logits, target)
        zero = torch.zeros((), device=dev)
        return dice + ce, torch.stack([dice.detach(), ce.detach(), zero])


def draw_batch(cases: list, cfg: TrainConfig, gen: torch.Generator, device):
    """(fixed, moving, fixed label, moving label) of ``batch_size`` cases drawn uniformly, the
    labels (B, 1, ...): one label per case, the gland drawn :data:`GLAND_DRAW_WEIGHT` times as
    often as each landmark (the paper's sampling). The localiser stage learns the gland only
    (its draw consumes the generator alike)."""
    idx = torch.randint(len(cases), (cfg.batch_size,), generator=gen).tolist()
    chosen = [cases[i] for i in idx]
    channels = []
    for c in chosen:
        w = torch.ones(c.fixed_labels.shape[0], dtype=torch.float64)
        w[0] = GLAND_DRAW_WEIGHT
        if cfg.stage == "localiser":
            w[1:] = 0.0
        channels.append(int(torch.multinomial(w, 1, generator=gen)))

    def labels(attr):
        return torch.stack([getattr(c, attr)[ch:ch + 1].float() for c, ch in zip(chosen, channels)]).to(device)

    return (torch.stack([c.fixed for c in chosen]).float().to(device),
            torch.stack([c.moving for c in chosen]).float().to(device),
            labels("fixed_labels"), labels("moving_labels"))


def load_init(model: RegistrationModel, state: dict):
    """``init_from``: copy a checkpoint's weights (every network) into ``model``, which must have
    the same architecture."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and value.shape != own[key].shape:
            raise ValueError(f"--init-from: {key} is {tuple(value.shape)} in the checkpoint but "
                             f"{tuple(own[key].shape)} in this model: start from a checkpoint of the same architecture")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"--init-from: the checkpoint does not match this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def set_trainable(model: RegistrationModel, stage: str):
    if stage == "localiser" and model.localisers is None:
        raise ValueError("stage 'localiser' needs a model with gland localisers: set model.localiser (e.g. "
                         "{'base_channels': 16, 'levels': 3}) and model.initial_alignment 'gland' in the config")
    train_global = stage == "global"
    train_local = stage in ("local", "local_only")
    model.global_net.requires_grad_(train_global)
    model.local_net.requires_grad_(train_local)
    model.train()
    model.global_net.train(train_global)
    model.local_net.train(train_local)
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


def _distributed() -> tuple:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def select_device(cfg: TrainConfig, rank: int, world: int) -> torch.device:
    """The device this rank trains on (``cfg.device``: "auto" takes a GPU when there is one), with
    ``cfg.threads`` CPU threads."""
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    return device


def cases_on(cases: list, device) -> list:
    """The training cases where the model trains (a GPU holds the whole set easily)."""
    return [replace(c, fixed=c.fixed.to(device), moving=c.moving.to(device), fixed_labels=c.fixed_labels.to(device),
                    moving_labels=c.moving_labels.to(device)) for c in cases]


def initial_model(cfg: TrainConfig, data: Dataset, log=print) -> RegistrationModel:
    """The stage's model before its first step: seeded weights (the same on every rank and every
    rerun), the fields of view of the training images recorded in its configuration, the
    networks of ``init_from`` copied in, the stage's networks trainable."""
    torch.manual_seed(cfg.seed + 1000 * cfg.run_seed)
    model = RegistrationModel(ModelConfig.from_dict(cfg.model).with_fields_of(data.fixed_grid, data.moving_grid))
    set_trainable(model, cfg.stage)
    if cfg.init_from:
        state = torch.load(cfg.init_from, map_location="cpu", weights_only=True)
        load_init(model, state.get("model", state.get("state_dict")))
        log(f"init_from: {cfg.init_from}")
    return model


def make_optimizer(model: RegistrationModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam on the trainable parameters; the global net's head steps :data:`HEAD_LR_SCALE` as far."""
    head = [p for p in model.global_net.head.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("global_net.head.")]
    return torch.optim.Adam([{"params": rest, "lr_scale": 1.0}, {"params": head, "lr_scale": HEAD_LR_SCALE}],
                            lr=cfg.lr)


def write_run_config(cfg: TrainConfig, out: Path, splits: tuple):
    """``out/config.json``: the stage's settings and its (train, tune, val) cases."""
    out.mkdir(parents=True, exist_ok=True)
    with AtomicFile(out / "config.json") as tmp:
        Path(tmp).write_text(json.dumps(asdict(cfg) | dict(zip(("train_cases", "tune_cases", "val_cases"), splits)),
                                        indent=2))


def step_seed(cfg: TrainConfig, step: int, rank: int) -> int:
    """The seed of a step's draws: one stream per (split seed, run seed, stage), step and rank."""
    run = cfg.seed + 1000 * cfg.run_seed
    return ((run * 10 + STAGE_STREAMS[cfg.stage]) * 1_000_003 + step) * 64 + rank


def train(cfg: TrainConfig, data: Dataset, resume: bool = False, log=print, evaluate_fn=None,
          stop_after: int | None = None, clock=time.monotonic) -> Path:
    """Run (or continue) one stage; returns the checkpoint path. ``stop_after`` ends this run
    early after that many steps (a time-boxed session); ``--resume`` continues it exactly.
    ``evaluate_fn(model, tune_cases)`` gives the tune_* columns that pick ``best.pt``.
    ``clock`` (seconds) times the ``minutes`` budget and the checkpoint interval."""
    rank, world = _distributed()
    device = select_device(cfg, rank, world)
    out = Path(cfg.out_dir)
    splits = split_cases(data.subjects, cfg.folds, cfg.fold, cfg.seed, cfg.tune_fraction)
    cases = cases_on(data.subset(splits[0]), device)
    model = initial_model(cfg, data, log).to(device)
    stage = StageRun(cfg, model, make_optimizer(model, cfg), out, rank, world, device, clock)
    if resume and (out / CHECKPOINT).exists():
        stage.resume(log)
    elif rank == 0:
        write_run_config(cfg, out, splits)
    set_trainable(model, cfg.stage)
    module = LossModule(model, cfg, data)
    runner = nn.parallel.DistributedDataParallel(module) if world > 1 else module
    _truncate_log(out / LOG, stage.step)
    stage.run(runner, cases, splits[1], evaluate_fn, stop_after)
    if world > 1:
        dist.barrier()  # every rank returns once rank 0's final checkpoint is written
    return out / CHECKPOINT


class StageRun:
    """One run of a stage: its step count, clock (over this run and those it continues) and best
    tuning score, and the steps it takes on the way: train, log, select, save."""

    def __init__(self, cfg: TrainConfig, model: RegistrationModel, optimizer, out: Path, rank: int, world: int,
                 device, clock):
        self.cfg, self.model, self.optimizer, self.out = cfg, model, optimizer, out
        self.rank, self.world, self.device, self.clock = rank, world, device, clock
        self.step, self.seconds_before, self.best = 0, 0.0, float("inf")
        self.start = self.last_save = 0.0  # clock readings, taken when run() starts
        self.running = torch.zeros(4)  # loss and its three terms, summed since the last log row
        self.evaluate_fn, self.tune_cases = None, []

    def resume(self, log=print):
        """Continue from ``out/checkpoint.pt``: weights, optimiser, step, training time, best score."""
        state = torch.load(self.out / CHECKPOINT, map_location="cpu", weights_only=True)
        if state.get("ema") is not None:
            raise ValueError(f"{self.out / CHECKPOINT} was trained with weight averaging (ema_decay), which was "
                             "removed: start the stage again, or resume it with labelreg <= 0.1")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds_before = int(state["step"]), float(state.get("seconds", 0.0))
        if (self.out / BEST).exists():
            self.best = torch.load(self.out / BEST, weights_only=True)["score"]
        log(f"resumed {self.out / CHECKPOINT} at step {self.step}")

    def seconds(self) -> float:
        """Training time of this stage, over all its runs."""
        return self.seconds_before + self.clock() - self.start

    def fraction_done(self) -> float:
        """How far the stage is, by steps or by time; the same on every rank."""
        done = self.step / max(1, self.cfg.steps)
        if self.cfg.minutes > 0:
            done = max(done, self.seconds() / (60 * self.cfg.minutes))
            if self.world > 1:
                shared = torch.tensor([done], device=self.device if self.device.type == "cuda" else "cpu")
                dist.all_reduce(shared, op=dist.ReduceOp.MAX)
                done = float(shared.item())
        return done

    def run(self, runner, cases: list, tune_cases: list, evaluate_fn, stop_after: int | None):
        """Steps until ``steps``, the time budget or ``stop_after`` steps of this run; then the checkpoint.
        ``evaluate_fn(model, tune_cases)`` (or None) gives the tuning columns that pick ``best.pt``."""
        cfg = self.cfg
        self.evaluate_fn, self.tune_cases = evaluate_fn, tune_cases
        self.last_save, self.start = self.clock(), self.clock()
        # time-boxed: no ETA by steps
        progress = _progress(None if cfg.minutes > 0 else cfg.steps, self.step) if self.rank == 0 else None
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        done = self.fraction_done()
        finished = self.step >= end or done >= 1
        while not finished:
            lr = learning_rate(cfg, self.step, done)
            loss, terms = self.train_step(runner, cases, lr)
            done = self.fraction_done()
            finished = self.step >= end or done >= 1
            self.running += torch.cat([loss.detach().cpu()[None], terms.cpu()])
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
            last = finished and done >= 1  # the stage's end, not a stop_after pause
            if self.rank == 0 and (self.step % cfg.log_every == 0 or last):
                self.log_row(lr, tune=self.step % cfg.val_every == 0 or last)
            if self.clock() - self.last_save > 60 * cfg.checkpoint_minutes:
                self.save()
                self.last_save = self.clock()
        self.save()
        if progress is not None:
            progress.close()

    def train_step(self, runner, cases: list, lr: float) -> tuple:
        """One optimiser step at learning rate ``lr`` on a batch drawn from this step's generator."""
        gen = torch.Generator().manual_seed(step_seed(self.cfg, self.step, self.rank))
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss, terms = runner(*draw_batch(cases, self.cfg, gen, self.device), gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss, terms

    def log_row(self, lr: float, tune: bool):
        """Append the mean loss terms since the last row to the log (rank 0), with the tuning
        evaluation when ``tune`` (and there are an evaluation and tuning cases)."""
        n, running = (self.step - 1) % self.cfg.log_every + 1, self.running
        row = {"step": self.step, "loss": running[0].item() / n, "dice_loss": running[1].item() / n,
               "ce": running[2].item() / n, "bending": running[3].item() / n,
               "lr": lr, "seconds": round(self.seconds(), 1)}
        if tune and self.evaluate_fn is not None and self.tune_cases:
            self.select(row, self.evaluate_fn(self.model, self.tune_cases))
        _append_log(self.out / LOG, row)
        running.zero_()

    def select(self, row: dict, tuning: dict):
        """Record the tuning evaluation in ``row``; a better :func:`selection_score` than any before
        saves ``best.pt``."""
        row.update(tuning)
        set_trainable(self.model, self.cfg.stage)  # the evaluation left the model in eval mode
        score = selection_score(row)
        if score < self.best:
            self.best = score
            self.save(self.out / BEST, score=score)

    def save(self, path: Path | None = None, **extra):
        """Write (rank 0) the weights, optimiser, step and training time to ``path`` (default: the checkpoint)."""
        if self.rank == 0:
            _atomic_torch_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                "step": self.step, "seconds": self.seconds(), "stage": self.cfg.stage,
                                "model_config": self.model.config.to_dict(), **extra}, path or self.out / CHECKPOINT)


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

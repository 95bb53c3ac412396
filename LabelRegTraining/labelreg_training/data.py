"""Training data: a folder in the public layout, validated up front, cached as tensors, and
split by subject.

Layout: ``fixed_images/``, ``moving_images/``, ``fixed_labels/``, ``moving_labels/`` with the
same file names, and optionally ``subjects.csv`` (``case,subject``). Without it every case
is its own subject.
"""
from __future__ import annotations

import csv
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from labelreg.errors import LabelRegError
from labelreg.grid import Grid
from labelreg.io import AtomicFile
from labelreg.layout import FOLDERS, complete_pairs
from labelreg.model import normalize_intensity

CACHE_VERSION = 2
#: default share of the training subjects held out to pick checkpoints
TUNE_FRACTION = 0.15


def resolve_data_dir(path=None) -> Path:
    """``path``, or $LABELREG_DATA, checked to be a complete data set in the public layout."""
    path = path or os.environ.get("LABELREG_DATA")
    if not path:
        raise LabelRegError("no data folder: pass --data DIR or set LABELREG_DATA")
    complete_pairs(path)
    return Path(path)


def case_names(data_dir: Path) -> list:
    """The data set's pair names (:func:`labelreg.layout.complete_pairs`: every pair has all four files)."""
    return [pair.name for pair in complete_pairs(data_dir)]


def read_subjects(data_dir: Path, names: list) -> dict:
    """case -> subject id (every case its own subject when subjects.csv is absent)."""
    path = data_dir / "subjects.csv"
    if not path.exists():
        return {n: n for n in names}
    with open(path, newline="") as f:
        mapping = {row["case"]: row["subject"] for row in csv.DictReader(f)}
    unknown = [n for n in names if n not in mapping]
    if unknown:
        raise LabelRegError(f"{path}: no subject for cases {unknown[:5]}")
    return {n: mapping[n] for n in names}


def kfold_by_subject(subjects: dict, folds: int, fold: int, seed: int = 0) -> tuple:
    """(train_cases, val_cases): subjects shuffled with ``seed`` and dealt into ``folds`` groups;
    group ``fold`` is validation. No subject is ever on both sides."""
    if not 0 <= fold < folds:
        raise LabelRegError(f"fold must be in [0, {folds}), got {fold}")
    ids = sorted(set(subjects.values()))
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    val_subjects = set(ids[fold::folds])
    train = [c for c, s in subjects.items() if s not in val_subjects]
    val = [c for c, s in subjects.items() if s in val_subjects]
    return sorted(train), sorted(val)


def validation_cases(data_dir, folds: int, fold: int, seed: int = 0, split: str = "validation",
                     tune_fraction: float = TUNE_FRACTION) -> tuple:
    """(resolved data folder, the case names of validation fold ``fold``; every case for ``folds <= 1``).

    ``split="training"`` gives instead the cases that fold trained on (tuning subjects excluded,
    as :func:`split_cases` with ``tune_fraction``): the gap between the two is the overfit."""
    data_dir = resolve_data_dir(data_dir)
    return data_dir, fold_cases(read_subjects(data_dir, case_names(data_dir)), folds, fold, seed, split, tune_fraction)


def fold_cases(subjects: dict, folds: int, fold: int, seed: int = 0, split: str = "validation",
               tune_fraction: float = TUNE_FRACTION) -> list:
    """The case names of :func:`validation_cases` from a {case: subject} mapping."""
    if split == "training":
        return split_cases(subjects, folds, fold, seed, tune_fraction)[0]
    if split != "validation":
        raise LabelRegError(f"split must be 'validation' or 'training', got {split!r}")
    return kfold_by_subject(subjects, folds, fold, seed)[1] if folds > 1 else sorted(subjects)


def split_cases(subjects: dict, folds: int, fold: int, seed: int = 0, tune_fraction: float = 0.0) -> tuple:
    """(train, tune, val) case lists. ``val`` is fold ``fold`` of :func:`kfold_by_subject` (all
    cases for ``folds <= 1``: no validation); ``tune`` takes about ``tune_fraction`` of the
    remaining subjects (at least one when the fraction is positive) for checkpoint selection,
    so that validation subjects are never used to pick a model."""
    if folds > 1:
        train, val = kfold_by_subject(subjects, folds, fold, seed)
    else:
        train, val = sorted(subjects), []
    ids = sorted({subjects[c] for c in train})
    n_tune = 0 if tune_fraction <= 0 else max(1, round(tune_fraction * len(ids)))
    if n_tune >= len(ids):
        raise LabelRegError(f"tune_fraction {tune_fraction} leaves no training subjects ({len(ids)} available)")
    rng = np.random.default_rng(seed + 1)
    tune_ids = set(rng.permutation(ids)[:n_tune].tolist())
    return ([c for c in train if subjects[c] not in tune_ids], [c for c in train if subjects[c] in tune_ids], val)


@dataclass
class Case:
    name: str
    fixed: torch.Tensor  # (1, nz, ny, nx) float16, normalised
    moving: torch.Tensor  # (1, mz, my, mx) float16, normalised
    fixed_labels: torch.Tensor  # (C, nz, ny, nx) uint8
    moving_labels: torch.Tensor  # (C, mz, my, mx) uint8


@dataclass
class Dataset:
    cases: dict  # name -> Case
    fixed_grid: Grid
    moving_grid: Grid
    subjects: dict
    data_dir: str
    fingerprint: str

    def subset(self, names) -> list:
        return [self.cases[n] for n in names]


def _fingerprint(pairs: list) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        for folder in FOLDERS:
            st = Path(pair.paths[folder]).stat()
            digest.update(f"{folder}/{pair.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def load_dataset(data_dir=None, cache_dir=None, percentiles=(1.0, 99.0), log=print) -> Dataset:
    """Validate every file, then load (from the cache when it is current).

    ``data_dir`` may also be a cache file written by an earlier call (``cache-*.pt``): it holds
    the whole data set (tensors, grids, subjects), so training can run where neither the NIfTI
    files nor SimpleITK are (a rented GPU machine, say)."""
    if data_dir is not None and Path(data_dir).is_file():
        return _from_cache(Path(data_dir))
    data_dir = resolve_data_dir(data_dir)
    pairs = complete_pairs(data_dir)
    names = [pair.name for pair in pairs]
    subjects = read_subjects(data_dir, names)
    fingerprint = _fingerprint(pairs) + f"-p{percentiles[0]:g}-{percentiles[1]:g}-v{CACHE_VERSION}"
    cache = Path(cache_dir) / f"cache-{fingerprint}.pt" if cache_dir else None
    if cache is not None and cache.exists():
        return _from_cache(cache)

    cases, fixed_grid, moving_grid = {}, None, None
    for pair in pairs:
        n = pair.name
        f, m, ml, fl = pair.read()
        if fl.channels.shape[0] != ml.channels.shape[0]:
            raise LabelRegError(f"{n}: {fl.channels.shape[0]} fixed label channels but {ml.channels.shape[0]} moving ones")
        fixed_grid = fixed_grid or f.grid
        moving_grid = moving_grid or m.grid
        for role, grid, ref in (("fixed", f.grid, fixed_grid), ("moving", m.grid, moving_grid)):
            if not grid.same_as(ref):
                raise LabelRegError(
                    f"{n}: {role} image grid ({grid.describe()}) differs from the first case's ({ref.describe()}); "
                    "training needs one grid per role: resample the images first"
                )
        cases[n] = Case(
            n,
            # one grid per role: the fields of view the model records are these images' whole extents
            torch.from_numpy(normalize_intensity(f.array, percentiles)[None]).half(),
            torch.from_numpy(normalize_intensity(m.array, percentiles)[None]).half(),
            torch.from_numpy(fl.channels > 0.5).to(torch.uint8),
            torch.from_numpy(ml.channels > 0.5).to(torch.uint8),
        )
    log(f"validated {len(names)} cases in {data_dir}")
    if cache is not None:
        blob = {
            "cases": {n: [c.fixed, c.moving, c.fixed_labels, c.moving_labels] for n, c in cases.items()},
            "grids": [{"size": g.size, "spacing": g.spacing, "origin": g.origin, "direction": g.direction}
                      for g in (fixed_grid, moving_grid)],
            "subjects": subjects, "data_dir": str(data_dir), "fingerprint": fingerprint, "version": CACHE_VERSION,
        }
        with AtomicFile(cache) as tmp:
            torch.save(blob, tmp)
    return Dataset(cases, fixed_grid, moving_grid, subjects, str(data_dir), fingerprint)


def _from_cache(path: Path) -> Dataset:
    try:
        blob = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise LabelRegError(f"{path}: not a readable data cache ({exc}); delete it to rebuild it from the data folder")
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
        raise LabelRegError(f"{path}: a data cache of another version; delete it to rebuild it from the data folder")
    cases = {n: Case(n, *tensors) for n, tensors in blob["cases"].items()}
    grids = [Grid(**g) for g in blob["grids"]]
    return Dataset(cases, grids[0], grids[1], blob["subjects"], blob["data_dir"], blob["fingerprint"])

"""Work behind the command line: one pair registered and written to a folder, folders of
pairs in the public layout (``labelreg batch``), and evaluation of warped labels
(``labelreg evaluate``). Every bad input ends as a :class:`LabelRegError` naming the file."""
from __future__ import annotations

import csv
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from . import io as lio
from .errors import LabelRegError
from .grid import Grid
from .layout import data_pairs, image_files, stem, subfolder
from .metrics import evaluate_pair, format_metrics, summarize
from .model import is_gland_alignment
from .outputs import prepare_output_dir
from .qc import write_qc_png
from .storage import resampled_on
from .transforms import initial_transform, transform_points
from .volume import Volume
from .warp import sample

#: the QC picture shows images finer than this on a grid of this spacing (mm)
QC_SPACING_MM = 1.0
REGISTRATION_COLUMNS = ("name", "mode", "confidence", "verdict", "seconds", "dice", "tre_median_mm", "hd95_mm",
                        "n_landmarks", "folding_fraction", "tre_mm", "warnings")
CSV_COLUMNS = ("name", "dice", "dice_p10", "hd95_mm", "tre_median_mm", "tre_p90_mm", "n_landmarks",
               "folding_fraction", "tre_mm", "warnings")


def warp_initial(fixed_grid: Grid, moving: Volume, alignment) -> np.ndarray:
    """Moving channels (C, z, y, x) resampled on the fixed grid by the initial alignment only:
    a grid alignment name ("centers", "headers") or a (4, 4) fixed -> moving LPS matrix."""
    if isinstance(alignment, str):
        alignment = initial_transform(fixed_grid, moving.grid, alignment)
    with torch.inference_mode():
        init = torch.as_tensor(alignment, dtype=torch.float32)[None]
        points = transform_points(init, fixed_grid.points_lps())
        channels = torch.from_numpy(np.ascontiguousarray(moving.channels, dtype=np.float32))[None]
        return sample(channels, moving.grid, points)[0].numpy()


def _slabs(result, moving: Volume | None, labels: Volume | None, grid):
    """The outputs on ``grid`` as (k0, ddf_lps, warped_moving, warped_labels) slabs: the result's
    arrays as one slab when the engine computed them (on the fixed grid), else warped a slab at a time."""
    if result.ddf_lps is not None and grid is result.fixed_grid:
        return [(0, result.ddf_lps, result.warped_moving, result.warped_labels)]
    return result.output_slabs(moving, labels, grid)


def write_outputs(result, paths: dict, moving: Volume | None = None, labels: Volume | None = None) -> dict:
    """Write a registration's full-resolution outputs named in ``paths`` ("warped_moving",
    "warped_labels", "displacement": NIfTI files) a slab at a time, so that an output of any size
    never sits whole in memory (or from the result's arrays when the engine computed them)."""
    grid = result.fixed_grid
    opened = {"warped_moving": lambda path: lio.SlabWriter(path, grid),
              "warped_labels": lambda path: lio.labels_writer(path, grid, labels.channels.shape[0]),
              "displacement": lambda path: lio.displacement_writer(path, grid)}
    with ExitStack() as stack:
        writers = {key: stack.enter_context(opened[key](path)) for key, path in paths.items()}
        slabs = _slabs(result, moving if "warped_moving" in paths else None,
                       labels if "warped_labels" in paths else None, grid)
        for k0, ddf, warped, warped_labels in slabs:
            for key, slab in (("displacement", ddf), ("warped_moving", warped), ("warped_labels", warped_labels)):
                if key in writers:
                    writers[key].write(k0, slab)
    return {key: Path(path) for key, path in paths.items()}


def register_to_folder(engine, fixed: Volume, moving: Volume, labels: Volume | None, out_dir, mode: str,
                       alignment: str | None = None, fixed_labels: Volume | None = None) -> dict:
    """Register one pair and write ``warped_moving``, ``warped_labels`` (with labels),
    ``displacement`` (.nii.gz), ``affine.tfm`` and ``qc.png`` into ``out_dir``. The outputs are
    written a slab at a time; with ``fixed_labels`` (metrics) they are also held in memory.

    Returns {"result", "paths", "metrics_before", "metrics_after", "write_s"}; "before" is the
    initial alignment, or the volume centres when that alignment is the learned "gland" one.
    """
    alignment = alignment or engine.config.initial_alignment
    if fixed_labels is not None and labels is not None and fixed_labels.channels.shape[0] != labels.channels.shape[0]:
        raise LabelRegError(f"{fixed_labels.name}: {fixed_labels.channels.shape[0]} channels, but the moving labels "
                            f"{labels.name} have {labels.channels.shape[0]}; channel c must match channel c")
    evaluate = fixed_labels is not None and labels is not None
    result = engine.register(fixed, moving, labels, mode=mode, initial_alignment=alignment, outputs=evaluate)
    start = time.perf_counter()
    out, grid = Path(out_dir), result.fixed_grid
    names = {"warped_moving": "warped_moving.nii.gz", "warped_labels": "warped_labels.nii.gz",
             "displacement": "displacement.nii.gz"}
    if labels is None:
        del names["warped_labels"]
    paths = write_outputs(result, {key: out / name for key, name in names.items()}, moving, labels)
    paths["affine"] = lio.write_affine(out / "affine.tfm", result.affine_lps)
    # "before" is where the pair starts without any network: the gland alignment is learned
    start_from = "centers" if is_gland_alignment(alignment) else result.initial_lps
    paths["qc"] = write_qc(out / "qc.png", result, fixed, moving, labels, fixed_labels, start_from)
    metrics_before = metrics_after = None
    if evaluate:
        metrics_before = evaluate_pair(warp_initial(grid, labels, start_from), fixed_labels.channels, grid)
        metrics_after = evaluate_pair(result.warped_labels, fixed_labels.channels, grid, result.ddf_lps)
    return {"result": result, "paths": paths, "metrics_before": metrics_before, "metrics_after": metrics_after,
            "write_s": time.perf_counter() - start}


def write_qc(path, result, fixed: Volume, moving: Volume, labels: Volume | None, fixed_labels: Volume | None,
             start_from) -> Path:
    """The QC picture of a registration (:func:`labelreg.qc.write_qc_png`): the labels, or
    without them the moving image, before (``start_from``: an alignment name or matrix) and after.
    Images finer than :data:`QC_SPACING_MM` are shown on a grid of that spacing (a picture, not a
    measurement), so that the picture's size and cost do not grow with the image's."""
    grid = result.fixed_grid
    if min(grid.spacing) < QC_SPACING_MM:
        grid = grid.resampled(np.maximum(grid.spacing, QC_SPACING_MM))
        fixed = resampled_on(fixed, grid)
        fixed_labels = None if fixed_labels is None else resampled_on(fixed_labels, grid)
    shown = labels if labels is not None else moving
    slabs = _slabs(result, None if labels is not None else moving, labels, grid)
    after = np.concatenate([s[3] if labels is not None else s[2][None] for s in slabs], axis=1)
    before = warp_initial(grid, shown, start_from)
    if labels is not None:
        views = {"warped_labels_before": before, "warped_labels_after": after}
    else:
        views = {"moving_before": before[0], "moving_after": after[0]}
    return write_qc_png(path, fixed, fixed_labels=fixed_labels, **views)


# ------------------------------------------------------------------ reporting
class Progress:
    """tqdm on a terminal when installed, else one text line per item on stderr."""

    def __init__(self, total: int, description: str):
        self.total, self.count, self.bar = total, 0, None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=description, unit="pair", file=sys.stderr)
            except ImportError:
                pass

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def step(self, name: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            print(f"[{self.count}/{self.total}] {name}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_metrics_csv(path, rows: list, summary: dict) -> Path:
    """Per-pair rows, then a ``summary`` row (medians, p10 Dice, p90 TRE, mean folding)."""
    table = []
    for row in rows:
        tre = [t for t in row["tre_mm"] if not math.isnan(t)]
        table.append({**row, "tre_p90_mm": float(np.percentile(tre, 90)) if tre and all(map(math.isfinite, tre))
                      else (math.inf if tre else None), "tre_mm": ";".join(_fmt(t) for t in row["tre_mm"])})
    table.append({"name": "summary", "dice": summary["dice_median"], "dice_p10": summary["dice_p10"],
                  "hd95_mm": summary["hd95_median_mm"], "tre_median_mm": summary["tre_median_mm"],
                  "tre_p90_mm": summary["tre_p90_mm"], "n_landmarks": summary["landmarks"],
                  "folding_fraction": summary["folding_fraction_mean"], "tre_mm": ""})
    with lio.AtomicFile(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in table:
            writer.writerow({k: _fmt(row.get(k)) for k in CSV_COLUMNS})
    return Path(path)


def report_failures(failures: list) -> int:
    for name, message in failures:
        print(f"labelreg: error: pair {name}: {message}", file=sys.stderr)
    return 1 if failures else 0


# ---------------------------------------------------------------------- batch
def run_batch(engine, data_dir, out_dir, mode: str = "deformable", alignment: str | None = None,
              save_ddf: bool = False, overwrite: bool = False) -> int:
    """Register every pair of a public-layout folder; returns the exit code (1 if any pair failed).
    ``out_dir`` must be empty, or hold only an earlier run's outputs with ``overwrite``."""
    out_dir = Path(out_dir)
    pairs = data_pairs(data_dir)
    names = [pair.name for pair in pairs]
    prepare_output_dir(out_dir, overwrite)
    failures, rows, started = [], [], time.perf_counter()
    progress = Progress(len(names), "registering")

    with ThreadPoolExecutor(1) as pool:  # read the next pair while this one registers
        pending = pool.submit(pairs[0].read)
        for index, name in enumerate(names):
            future, tick = pending, time.perf_counter()
            if index + 1 < len(names):
                pending = pool.submit(pairs[index + 1].read)
            try:
                row = _register_one(engine, name, future.result(), out_dir, mode, alignment, save_ddf)
                row["seconds"] = time.perf_counter() - tick
                rows.append(row)
                progress.write(_batch_line(row))
            except LabelRegError as exc:
                failures.append((name, str(exc)))
            progress.step(name)
    progress.close()
    total = time.perf_counter() - started
    done = len(names) - len(failures)
    print(f"{done} of {len(names)} pairs registered in {total:.1f} s ({total / len(names):.2f} s per pair); "
          f"outputs in {out_dir}")
    evaluated = [row for row in rows if "dice" in row]
    if evaluated:
        print(f"summary over {len(evaluated)} pairs: {format_metrics(summarize(evaluated))}")
    if rows:
        print(f"one row per pair written to {write_registrations_csv(out_dir / 'registrations.csv', rows)}")
    return report_failures(failures)


def _register_one(engine, name: str, volumes: tuple, out_dir: Path, mode: str, alignment, save_ddf: bool) -> dict:
    """Register one pair of a batch and write its outputs; its row of ``registrations.csv``."""
    fixed, moving, labels, fixed_labels = volumes
    evaluate = labels is not None and fixed_labels is not None
    result = engine.register(fixed, moving, labels, mode=mode, initial_alignment=alignment, outputs=evaluate)
    kind = "warped_labels" if labels is not None else "warped_moving"
    paths = {kind: out_dir / kind / f"{name}.nii.gz"}
    if save_ddf:
        paths["displacement"] = out_dir / "ddf" / f"{name}.nii.gz"
    write_outputs(result, paths, moving, labels)
    row = {"name": name, "mode": mode, "confidence": result.confidence, "verdict": result.verdict,
           "warnings": list(result.warnings)}
    if evaluate:
        row.update(evaluate_pair(result.warped_labels, fixed_labels.channels, result.fixed_grid, result.ddf_lps))
    return row


def _batch_line(row: dict) -> str:
    line = f"{row['name']}: {row['seconds']:.2f} s"
    if row["verdict"] is not None:
        line += f", {row['verdict']} (confidence {row['confidence']:.2f})"
    if "dice" in row:
        line += "  " + format_metrics(row)
    return line + "".join(f"\n  warning: {w}" for w in row["warnings"])


def write_registrations_csv(path, rows: list) -> Path:
    """One row per registered pair: name, mode, confidence and verdict (:mod:`labelreg.confidence`),
    seconds, warnings, and with fixed labels the metrics (TRE as each landmark's, ';'-separated)."""
    with lio.AtomicFile(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REGISTRATION_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            tre = row.get("tre_mm")
            values = {**row, "warnings": " | ".join(row["warnings"]),
                      "tre_mm": None if tre is None else ";".join(_fmt(t) for t in tre)}
            writer.writerow({k: _fmt(values.get(k)) for k in REGISTRATION_COLUMNS})
    return Path(path)


# ------------------------------------------------------------------- evaluate
def run_evaluate(warped_dir, fixed_dir, ddf_dir=None, csv_path=None) -> int:
    """Metrics of warped labels against fixed labels (folders, batch outputs or single files)."""
    root = Path(warped_dir)
    if root.is_dir() and (root / "warped_labels.nii.gz").is_file():  # a `labelreg register` output folder
        root = root / "warped_labels.nii.gz"
    if ddf_dir is None:  # batch output: ddf/ beside warped_labels/; register output: displacement.nii.gz
        guess = root.parent / "displacement.nii.gz" if root.is_file() else root / "ddf"
        ddf_dir = guess if guess.exists() else None
    warped = image_files(subfolder(root, "warped_labels"))
    fixed = image_files(subfolder(fixed_dir, "fixed_labels"))
    ddfs = image_files(ddf_dir) if ddf_dir is not None else {}
    if root.is_file():  # single files: pair them whatever their names
        fixed = {stem(root): fixed[next(iter(fixed))]} if Path(fixed_dir).is_file() else fixed
        ddfs = {stem(root): ddfs[next(iter(ddfs))]} if ddf_dir is not None and Path(ddf_dir).is_file() else ddfs
    if not warped:
        raise LabelRegError(f"{warped_dir}: no warped label files")
    rows, failures = [], []
    for name, path in sorted(warped.items()):
        try:
            if name not in fixed:
                raise LabelRegError(f"{subfolder(fixed_dir, 'fixed_labels')}: no fixed labels named {name}")
            moved = lio.read_label_channels(path, "warped labels")
            target = lio.read_label_channels(fixed[name], "fixed labels")
            if not moved.grid.same_as(target.grid):
                raise LabelRegError(f"{path}: grid ({moved.grid.describe()}) differs from the fixed labels "
                                    f"{fixed[name]} ({target.grid.describe()})")
            ddf = None
            if name in ddfs:
                ddf, ddf_grid = lio.read_displacement(ddfs[name])
                if not ddf_grid.same_as(target.grid):
                    raise LabelRegError(f"{ddfs[name]}: displacement grid differs from the fixed labels")
            row = {"name": name, **evaluate_pair(moved.channels, target.channels, target.grid, ddf)}
            rows.append(row)
            print(f"{name}: {format_metrics(row)}")
        except LabelRegError as exc:
            failures.append((name, str(exc)))
    if rows:
        summary = summarize(rows)
        print(f"summary over {len(rows)} pairs: {format_metrics(summary)}")
        if csv_path:
            print(f"metrics written to {write_metrics_csv(csv_path, rows, summary)}")
    return report_failures(failures)

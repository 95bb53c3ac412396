"""Work behind the command line: one pair registered and written to a folder, folders of
pairs in the public layout (``labelreg batch``), and evaluation of warped labels
(``labelreg evaluate``). Every bad input ends as a :class:`LabelRegError` naming the file."""
from __future__ import annotations

import csv
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from . import io as lio
from .errors import LabelRegError
from .grid import Grid
from .metrics import evaluate_pair, format_metrics, summarize
from .model import is_gland_alignment
from .outputs import prepare_output_dir
from .qc import write_qc_png
from .transforms import initial_transform, transform_points
from .volume import Volume
from .warp import sample

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CSV_COLUMNS = ("name", "dice", "dice_p10", "hd95_mm", "tre_median_mm", "tre_p90_mm", "n_landmarks",
               "folding_fraction", "tre_mm", "warnings")


def stem(path) -> str:
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def image_files(folder) -> dict:
    """{stem: path} of the image files in ``folder`` (or of ``folder`` itself if it is a file)."""
    folder = Path(folder)
    if folder.is_file():
        return {stem(folder): folder}
    if not folder.is_dir():
        raise LabelRegError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {stem(p): p for p in files if not p.name.lower().endswith((".raw", ".zraw", ".txt", ".csv", ".md"))}


def subfolder(path, name: str) -> Path:
    """``path/name`` if that folder exists (a data set or batch output), else ``path``."""
    path = Path(path)
    return path / name if (path / name).is_dir() else path


def read_label_channels(path, role: str = "labels") -> Volume:
    """Labels for evaluation: like :func:`labelreg.io.read_labels` but any grid and empty
    channels allowed (a landmark warped out of view is empty)."""
    path = Path(path)
    image = lio._read_pixels(lio._read_header(path), path)
    if image.GetDimension() not in (3, 4) or image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelRegError(f"{path}: {role} must be a 3-D label map or a 4-D (x, y, z, channel) image")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array = array[None] if array.ndim == 3 else array
    if not np.isfinite(array).all() or array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise LabelRegError(f"{path}: {role} values must be finite and lie in [0, 1] (one channel per label)")
    return Volume(array, Grid.from_sitk(image), str(path))


def read_displacement(path) -> tuple:
    path = Path(path)
    reader = lio._read_header(path)
    image = lio._read_pixels(reader, path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise LabelRegError(f"{path}: a displacement field must be a 3-D image of 3-vectors")
    return sitk.GetArrayFromImage(image).astype(np.float64), Grid.from_sitk(image)


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


def register_to_folder(engine, fixed: Volume, moving: Volume, labels: Volume | None, out_dir, mode: str,
                       alignment: str | None = None, fixed_labels: Volume | None = None) -> dict:
    """Register one pair and write ``warped_moving``, ``warped_labels`` (with labels),
    ``displacement`` (.nii.gz), ``affine.tfm`` and ``qc.png`` into ``out_dir``.

    Returns {"result", "paths", "metrics_before", "metrics_after", "write_s"}; "before" is the
    initial alignment, or the volume centres when that alignment is the learned "gland" one.
    """
    alignment = alignment or engine.config.initial_alignment
    if fixed_labels is not None and labels is not None and fixed_labels.channels.shape[0] != labels.channels.shape[0]:
        raise LabelRegError(f"{fixed_labels.name}: {fixed_labels.channels.shape[0]} channels, but the moving labels "
                            f"{labels.name} have {labels.channels.shape[0]}; channel c must match channel c")
    result = engine.register(fixed, moving, labels, mode=mode, initial_alignment=alignment)
    start = time.perf_counter()
    out, grid = Path(out_dir), result.fixed_grid
    paths = {"warped_moving": lio.write_image(out / "warped_moving.nii.gz", result.warped_moving, grid)}
    if labels is not None:
        paths["warped_labels"] = lio.write_labels(out / "warped_labels.nii.gz", result.warped_labels, grid)
    paths["displacement"] = lio.write_displacement(out / "displacement.nii.gz", result.ddf_lps, grid)
    paths["affine"] = lio.write_affine(out / "affine.tfm", result.affine_lps)
    # "before" is where the pair starts without any network: the gland alignment is learned
    before = warp_initial(grid, labels if labels is not None else moving,
                          "centers" if is_gland_alignment(alignment) else result.initial_lps)
    if labels is not None:
        qc_args = {"warped_labels_before": before, "warped_labels_after": result.warped_labels}
    else:
        qc_args = {"moving_before": before[0], "moving_after": result.warped_moving}
    paths["qc"] = write_qc_png(out / "qc.png", fixed, fixed_labels=fixed_labels, **qc_args)
    metrics_before = metrics_after = None
    if fixed_labels is not None and labels is not None:
        metrics_before = evaluate_pair(before, fixed_labels.channels, grid)
        metrics_after = evaluate_pair(result.warped_labels, fixed_labels.channels, grid, result.ddf_lps)
    return {"result": result, "paths": paths, "metrics_before": metrics_before, "metrics_after": metrics_after,
            "write_s": time.perf_counter() - start}


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
def _load_pair(folders: dict, name: str, paths: dict):
    fixed = lio.read_image(paths["fixed_images"], "fixed image")
    moving = lio.read_image(paths["moving_images"], "moving image")
    labels = None
    if "moving_labels" in folders:
        if "moving_labels" not in paths:
            raise LabelRegError(f"{folders['moving_labels'] / (name + '.nii.gz')}: moving labels missing for this pair")
        labels = lio.read_labels(paths["moving_labels"], moving.grid, "moving labels")
    return fixed, moving, labels


def run_batch(engine, data_dir, out_dir, mode: str = "deformable", alignment: str | None = None,
              save_ddf: bool = False, overwrite: bool = False) -> int:
    """Register every pair of a public-layout folder; returns the exit code (1 if any pair failed).
    ``out_dir`` must be empty, or hold only an earlier run's outputs with ``overwrite``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    folders = {n: data_dir / n for n in ("fixed_images", "moving_images", "moving_labels", "fixed_labels")
               if (data_dir / n).is_dir()}
    for needed in ("fixed_images", "moving_images"):
        if needed not in folders:
            raise LabelRegError(f"{data_dir}: no {needed}/ folder; expected fixed_images/, moving_images/ "
                                "and optionally moving_labels/ and fixed_labels/ with the same file names")
    files = {n: image_files(f) for n, f in folders.items()}
    names = sorted(files["fixed_images"])
    if not names:
        raise LabelRegError(f"{folders['fixed_images']}: no image files")
    prepare_output_dir(out_dir, overwrite)
    failures, rows, started = [], [], time.perf_counter()
    progress = Progress(len(names), "registering")

    def load(name):
        paths = {n: files[n][name] for n in files if name in files[n]}
        if "moving_images" not in paths:
            raise LabelRegError(f"{folders['moving_images']}: no moving image named {name}")
        return _load_pair(folders, name, paths)

    with ThreadPoolExecutor(1) as pool:  # read the next pair while this one registers
        pending = pool.submit(load, names[0])
        for index, name in enumerate(names):
            future, tick = pending, time.perf_counter()
            if index + 1 < len(names):
                pending = pool.submit(load, names[index + 1])
            try:
                fixed, moving, labels = future.result()
                result = engine.register(fixed, moving, labels, mode=mode, initial_alignment=alignment)
                grid = result.fixed_grid
                if labels is not None:
                    lio.write_labels(out_dir / "warped_labels" / f"{name}.nii.gz", result.warped_labels, grid)
                else:
                    lio.write_image(out_dir / "warped_moving" / f"{name}.nii.gz", result.warped_moving, grid)
                if save_ddf:
                    lio.write_displacement(out_dir / "ddf" / f"{name}.nii.gz", result.ddf_lps, grid)
                line = f"{name}: {time.perf_counter() - tick:.2f} s"
                if labels is not None and name in files.get("fixed_labels", {}):
                    fixed_labels = lio.read_labels(files["fixed_labels"][name], grid, "fixed labels")
                    row = {"name": name, **evaluate_pair(result.warped_labels, fixed_labels.channels, grid,
                                                         result.ddf_lps), "warnings": " | ".join(result.warnings)}
                    rows.append(row)
                    line += "  " + format_metrics(row)
                progress.write(line + "".join(f"\n  warning: {w}" for w in result.warnings))
            except LabelRegError as exc:
                failures.append((name, str(exc)))
            progress.step(name)
    progress.close()
    total = time.perf_counter() - started
    done = len(names) - len(failures)
    print(f"{done} of {len(names)} pairs registered in {total:.1f} s ({total / len(names):.2f} s per pair); "
          f"outputs in {out_dir}")
    if rows:
        summary = summarize(rows)
        print(f"summary over {len(rows)} pairs: {format_metrics(summary)}")
        print(f"metrics written to {write_metrics_csv(out_dir / 'metrics.csv', rows, summary)}")
    return report_failures(failures)


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
            moved = read_label_channels(path, "warped labels")
            target = read_label_channels(fixed[name], "fixed labels")
            if not moved.grid.same_as(target.grid):
                raise LabelRegError(f"{path}: grid ({moved.grid.describe()}) differs from the fixed labels "
                                    f"{fixed[name]} ({target.grid.describe()})")
            ddf = None
            if name in ddfs:
                ddf, ddf_grid = read_displacement(ddfs[name])
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

"""Inference benchmark (not a test): per-stage times of one MR->TRUS registration.

    python benchmarks/benchmark_inference.py [--data /path/to/mrus] [--case obs000]
        [--model model.pt] [--runs 10] [--threads 2] [--device cpu] [--batch 4] [--skip-io]

Uses a real pair from ``--data`` (or $LABELREG_DATA; public layout) if given, else a
synthetic phantom; the bundled model if installed, else ``--model``, else an untrained model
(same architecture, so the timings are the same). Prints medians over ``--runs`` runs after
a warm-up: file I/O, preprocess, alignment, network, warp (image + labels), the total per pair
excluding file I/O, batch throughput, peak memory and model size, and a baseline measured
in the same run (the same pipeline in affine mode: global net only); for a model whose gland
alignment uses the best overlap, also the same model from the gland centroids. With pair files
(``--data`` or the phantom written to disk), also whole ``labelreg register`` processes (import,
model load, reading, registration, writing): median wall time and peak memory, and beside
them processes that only import SimpleITK and torch (the floor under any such process).

Every time is also printed as a multiple of a reference measured in the same run (a plain
16-channel 3x3x3 conv3d on a 32^3 volume, the networks' typical layer; timed before and after the
pipeline, the median of both, each half printed too), so runs on other days and machines compare
by ratio.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from child_process import run_measured
from labelreg import io as lio
from labelreg import resources
from labelreg.engine import RegistrationEngine
from labelreg.model import RegistrationModel
from labelreg.model_io import load_model, save_model

STAGES = ("preprocess", "alignment", "network", "warp")


def _reader(fixed_path, moving_path, labels_path):
    """A function that reads the pair's files again, returning (..., seconds); its ``paths``."""
    def read():
        start = time.perf_counter()
        fixed = lio.read_image(fixed_path, "fixed image")
        moving = lio.read_image(moving_path, "moving image")
        labels = lio.read_labels(labels_path, moving.grid, "moving labels")
        return fixed, moving, labels, time.perf_counter() - start
    read.paths = {"fixed_images": fixed_path, "moving_images": moving_path, "moving_labels": labels_path}
    return read


def load_pair(data, case, tmp, skip_io=False):
    """Returns (fixed, moving, moving_labels, description, read) where ``read()`` reads the
    pair's files again and returns (..., seconds); ``read`` is None with ``skip_io`` (a machine
    without SimpleITK: the phantom stays in memory)."""
    if data:
        data = Path(data)
        name = case or min(p.name for p in (data / "fixed_images").iterdir())
        read = _reader(*(data / sub / name for sub in ("fixed_images", "moving_images", "moving_labels")))
        return (*read()[:3], f"{data}/{name}", read)
    from labelreg.phantom import make_pair, write_pair

    pair = make_pair(seed=0, fixed_size=(47, 63, 44), moving_size=(69, 69, 64))
    if skip_io:
        return pair.fixed, pair.moving, pair.moving_labels, "synthetic phantom (data set sizes, in memory)", None
    paths = write_pair(pair, tmp, "phantom")  # to time the file I/O on the data set's sizes
    read = _reader(paths["fixed_images"], paths["moving_images"], paths["moving_labels"])
    return pair.fixed, pair.moving, pair.moving_labels, "synthetic phantom (data set sizes)", read


def get_model(path):
    """(model, description, file size in bytes)."""
    if path or resources.BUNDLED_MODEL_FILE.exists():
        path = Path(path) if path else resources.BUNDLED_MODEL_FILE
        model, _ = load_model(path)
        return model, str(path), path.stat().st_size
    torch.manual_seed(0)
    model = RegistrationModel()
    with tempfile.TemporaryDirectory() as tmp:
        size = save_model(Path(tmp) / "untrained.pt", model).stat().st_size
    return model, "untrained (no bundled model yet; same architecture)", size


def reference_times(runs: int = 50) -> list:
    """Times of the reference operation: conv3d 16 -> 16 channels, 3x3x3, on (1, 16, 32, 32, 32)."""
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 32, 32, 32)
    times = []
    with torch.inference_mode():
        for index in range(runs + 5):
            start = time.perf_counter()
            conv(x)
            if index >= 5:
                times.append(time.perf_counter() - start)
    return times


def measured_processes(command: list, runs: int) -> tuple:
    """(median wall seconds, peak MB) of ``runs`` processes running ``command``."""
    walls, peaks = zip(*(run_measured(command) for _ in range(runs)))
    return statistics.median(walls), max(peaks)


def process_times(paths: dict, model, threads: int, runs: int) -> tuple:
    """(median wall seconds, peak MB) of ``labelreg register`` processes on the pair's files."""
    labelreg = Path(sys.executable).with_name("labelreg")
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(labelreg), "register", "--fixed", str(paths["fixed_images"]),
                   "--moving", str(paths["moving_images"]), "--moving-labels", str(paths["moving_labels"]),
                   "--output-dir", f"{tmp}/out", "--overwrite", "--threads", str(threads)]
        return measured_processes(command + (["--model", str(model)] if model else []), runs)


def import_times(runs: int) -> tuple:
    """(median wall seconds, peak MB) of processes that only import SimpleITK and torch: the floor
    under any ``labelreg register`` process (most of it the shared libraries' code)."""
    return measured_processes([sys.executable, "-c", "import SimpleITK, torch"], runs)


def median_times(engine, pairs, mode, runs, warmup=2):
    """Median wall time of register_batch and the median of each engine stage."""
    for _ in range(warmup):
        engine.register_batch(pairs, mode=mode)
    walls, stages = [], {s: [] for s in STAGES}
    for _ in range(runs):
        start = time.perf_counter()
        result = engine.register_batch(pairs, mode=mode)[0]
        walls.append(time.perf_counter() - start)
        for stage in STAGES:
            stages[stage].append(result.timings.get(stage, 0.0))
    return statistics.median(walls), {s: statistics.median(v) for s, v in stages.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("LABELREG_DATA"), help="data folder in the public layout")
    parser.add_argument("--case", help="file name of the pair (default: the first)")
    parser.add_argument("--model", help="model file (default: bundled, else untrained)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--batch", type=int, default=4, help="pairs per call for the batched throughput")
    parser.add_argument("--skip-io", action="store_true", help="phantom in memory, no file I/O timing")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    reference_first = reference_times()  # measured again after the pipeline's timings: the median of both
    with tempfile.TemporaryDirectory() as tmp:
        fixed, moving, labels, description, read = load_pair(args.data, args.case, tmp, args.skip_io)
        io_times = [read()[3] for _ in range(max(3, args.runs // 2))] if read else []
        process = process_times(read.paths, args.model, args.threads, 5) if read and args.device == "cpu" else None
        imports = import_times(5) if process else None
    model, model_name, model_bytes = get_model(args.model)
    engine = RegistrationEngine(model, device=args.device, threads=args.threads)
    net_grid = model.network_grid(fixed.grid)
    one = [(fixed, moving, labels)]
    total, stages = median_times(engine, one, "deformable", args.runs)
    affine_total, affine_stages = median_times(engine, one, "affine", args.runs)
    batched, _ = median_times(engine, one * args.batch, "deformable", max(3, args.runs // 2), warmup=1)
    centroid = None
    if model.config.gland_translation == "overlap":  # its baseline: the same model from the gland centroids
        overlap_config, model.config = model.config, replace(model.config, gland_translation="centroid")
        centroid = median_times(engine, one, "deformable", args.runs)
        model.config = overlap_config
    reference_last = reference_times()
    reference = statistics.median(reference_first + reference_last)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    print(f"pair:    {description}; fixed {fixed.grid.size}, moving {moving.grid.size}, "
          f"{labels.channels.shape[0]} label channels; network grid {net_grid.size}")
    print(f"model:   {model_name}, {model_bytes / 1e6:.2f} MB, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"device {engine.device}, {torch.get_num_threads()} threads (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs); median of {args.runs} runs\n")
    rows = [("load (file I/O)", statistics.median(io_times), None)] if io_times else []
    rows += [(f"{s}" + (" (image+labels)" if s == "warp" else ""), stages[s], affine_stages[s]) for s in STAGES]
    rows += [("total per pair (no I/O)", total, affine_total)]
    print(f"reference: conv3d 16 -> 16, 3x3x3 on 32^3: {reference * 1000:.2f} ms (first "
          f"{statistics.median(reference_first) * 1000:.2f}, last {statistics.median(reference_last) * 1000:.2f}; "
          f"x ref: a time / this one)\n")
    print(f"{'stage':28s}{'deformable':>12s}{'x ref':>8s}{'affine (baseline)':>20s}{'x ref':>8s}")
    for name, value, base in rows:
        base_text = "" if base is None else f"{base * 1000:15.1f} ms{base / reference:8.1f}"
        print(f"{name:28s}{value * 1000:9.1f} ms{value / reference:8.1f}{base_text}")
    print(f"{'deformable / affine':28s}{total / affine_total:10.2f} x")
    if centroid:
        print(f"{'alignment from centroids':28s}{centroid[1]['alignment'] * 1000:9.1f} ms   (the same model, "
              f"gland_translation centroid)")
        print(f"{'total, from centroids':28s}{centroid[0] * 1000:9.1f} ms   (overlap / centroid "
              f"{total / centroid[0]:.2f} x)")
    print(f"{'throughput, batch 1':28s}{1 / total:9.2f} pairs/s")
    print(f"{f'throughput, batch {args.batch}':28s}{args.batch / batched:9.2f} pairs/s")
    print(f"{'peak RSS':28s}{peak_mb:9.0f} MB")
    if process:
        print(f"{'labelreg register process':28s}{process[0] * 1000:9.1f} ms{process[0] / reference:8.1f}   "
              f"(median of 5: import, model load, read, register, write); peak RSS {process[1]:.0f} MB")
        print(f"{'  of which imports':28s}{imports[0] * 1000:9.1f} ms{imports[0] / reference:8.1f}   "
              f"(a process that only imports SimpleITK and torch); peak RSS {imports[1]:.0f} MB")
    if engine.device.type == "cuda":
        print(f"{'peak GPU memory':28s}{torch.cuda.max_memory_allocated() / 2**20:9.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

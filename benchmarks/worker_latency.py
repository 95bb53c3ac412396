"""Worker-process benchmark (not a test): what running the registration in a separate process
costs the Slicer module, against the registration itself measured in the same run.

    python benchmarks/worker_latency.py [--runs 10] [--frames 10] [--fixed-size 47 63 44]

Runs the LabelReg module in a headless Slicer (slicer-core + Testing/slicer_bootstrap.py, whose
stand-in QTimer polls the worker every 20 ms, as in Slicer). The pair: the bundled sample pair
(obs003) with the bundled model; with ``--fixed-size``, a synthetic phantom of that TRUS size
(the MR one and a half times larger) with an untrained model of the bundled architecture.
Prints, each with its ratio to the reference:

* reference: the registration in this process (the library, model loaded; median of ``--runs``);
* worker start: process start until torch and the library are imported; the first
  registration (model loaded in the worker) end to end;
* round-trip overhead per registration: the module's blocking ``register`` minus the time
  the worker spent registering (arrays to files, messages, reading the outputs back), and the
  scene copy-in and output-node writing that both paths share;
* live latency for a burst of ``--frames`` TRUS frames: registrations run, and the time from
  the last frame's image change to its overlay in the scene.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ms(seconds: float) -> str:
    return f"{1000 * seconds:8.1f} ms"


def load_pair(slicer, logic, fixed_size, folder):
    """(fixed node, moving node, moving segmentation node, model path, description)."""
    from labelreg import resources
    from LabelRegLib import nodes

    if fixed_size is None:
        if not resources.BUNDLED_MODEL_FILE.exists():
            raise SystemExit("the bundled model is missing; use --fixed-size for a synthetic pair")
        loaded = logic.loadSampleData()
        return (loaded["fixedVolume"], loaded["movingVolume"], loaded["movingSegmentation"], "",
                "the sample pair obs003 (TRUS 47x63x44, MR 69x69x64), bundled model")
    from labelreg.model import RegistrationModel
    from labelreg.model_io import save_model
    from labelreg.phantom import make_pair

    moving_size = tuple(round(1.5 * n) for n in fixed_size)
    pair = make_pair(0, fixed_size=tuple(fixed_size), moving_size=moving_size, spacing=(1.5, 1.5, 1.5))
    fixed, moving = nodes.addVolume("TRUS", pair.fixed), nodes.addVolume("MR", pair.moving)
    segmentation = nodes.addLabelSegmentation("MR seg", pair.moving_labels)
    model = str(save_model(Path(folder) / "untrained.pt", RegistrationModel()))
    return fixed, moving, segmentation, model, (f"a phantom (TRUS {'x'.join(map(str, fixed_size))}, MR "
                                                f"{'x'.join(map(str, moving_size))}), untrained model")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--fixed-size", type=int, nargs=3, default=None)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "Testing"))
    import slicer_bootstrap

    slicer = slicer_bootstrap.bootstrap()
    import LabelReg
    import torch
    from LabelRegLib.inference import EngineCache

    folder = tempfile.mkdtemp(prefix="labelreg-bench-")
    logic = LabelReg.LabelRegLogic()
    fixed, moving, segmentation, model, description = load_pair(slicer, logic, args.fixed_size, folder)
    settings = {"movingSegmentationNode": segmentation, "modelPath": model, "device": "cpu"}
    print(f"pair: {description}; torch {torch.__version__}, {torch.get_num_threads()} threads in this process")

    # reference: the registration in this process, model loaded
    request = logic._prepare(fixed, moving, **settings)
    engines = EngineCache()
    engines.run(request)
    reference = statistics.median(engines.run(request).seconds for _ in range(args.runs))
    print(f"reference  in-process registration (median of {args.runs}) {ms(reference)}")
    worker_figures(logic, fixed, moving, settings, reference, args.runs)
    live_figures(slicer, slicer_bootstrap, logic, fixed, moving, settings, reference, args.frames)
    logic.shutdown()
    return 0


def worker_figures(logic, fixed, moving, settings, reference, runs):
    """Worker start, first registration, and the round trip split into its steps."""
    worker = logic.worker.process
    start = time.perf_counter()
    first_outputs = logic.register(fixed, moving, **settings)
    first = time.perf_counter() - start
    print(f"worker     start (process until torch imported)  {ms(worker.startSeconds)}"
          f"   x{worker.startSeconds / reference:5.2f} reference")
    print(f"           first registration, end to end       {ms(first)}   x{first / reference:5.2f} reference"
          f"   (in the worker: {ms(first_outputs.outcome.seconds).strip()}, model loading included)")

    # round trip: the module's blocking path, split into its steps
    prepares, trips, worked, applies = [], [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        request = logic._prepare(fixed, moving, **settings)
        t1 = time.perf_counter()
        outcome = logic.worker.run(request)
        t2 = time.perf_counter()
        logic._apply(request, outcome)
        t3 = time.perf_counter()
        prepares.append(t1 - t0)
        trips.append(t2 - t1)
        worked.append(outcome.seconds)
        applies.append(t3 - t2)
    overhead = statistics.median(t - w for t, w in zip(trips, worked))
    print(f"round trip worker registration (median)          {ms(statistics.median(worked))}"
          f"   x{statistics.median(worked) / reference:5.2f} reference")
    print(f"           overhead: transfer + messages (median) {ms(overhead)}   x{overhead / reference:5.3f} reference"
          f"   (max {ms(max(t - w for t, w in zip(trips, worked))).strip()})")
    print(f"           shared by both paths: scene copy-in {ms(statistics.median(prepares)).strip()}, output nodes "
          f"{ms(statistics.median(applies)).strip()}")


def live_figures(slicer, slicer_bootstrap, logic, fixed, moving, settings, reference, frames):
    """A burst of ``frames`` TRUS updates while the event loop runs: registrations, latency."""
    sent, delivered = [], []
    prepare = logic._prepare

    def recording_prepare(*a, **k):
        sent.append(time.perf_counter())
        return prepare(*a, **k)

    logic._prepare = recording_prepare
    logic.startAutoUpdate(fixed, moving, onFinished=lambda outputs: delivered.append(time.perf_counter()),
                          **settings)
    slicer_bootstrap.runEventLoop(600, lambda: not logic.worker.busy)
    sent.clear()
    delivered.clear()
    array = slicer.util.arrayFromVolume(fixed).copy()
    burst_start = time.perf_counter()
    for i in range(frames):
        slicer.util.updateVolumeFromArray(fixed, array + i + 1)
        slicer.app.processEvents()
    last_frame = time.perf_counter()
    slicer_bootstrap.runEventLoop(600, lambda: not logic.worker.busy)
    logic.stopAutoUpdate()
    latency = delivered[-1] - last_frame
    print(f"live       burst of {frames} frames in {ms(last_frame - burst_start).strip()}: "
          f"{len(sent)} registrations "
          f"(at most 2 expected)")
    print(f"           last frame -> overlay updated          {ms(latency)}   x{latency / reference:5.2f} reference"
          f"   (first frame -> first overlay {ms(delivered[0] - burst_start).strip()})")


if __name__ == "__main__":
    sys.exit(main())

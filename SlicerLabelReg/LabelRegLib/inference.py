"""Running the registration engine for the module: loaded models kept between runs, device
choice with a CPU fallback, and a CPU retry when the GPU runs out of memory; the request and
outcome records that travel between Slicer and the worker process.

No ``slicer`` import, and no ``torch`` import at module level: :class:`EngineCache` runs in the
worker process (``registration_worker.py``) on plain :class:`labelreg.volume.Volume` inputs;
the records are also used in Slicer.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NO_GPU_NOTE = "No CUDA GPU is available: registered on the CPU instead (slower)."
OOM_NOTE = "The GPU ran out of memory: registered on the CPU instead."


@dataclass
class RegistrationRequest:
    """Everything one registration needs, snapshotted from the scene on the main thread."""

    fixed: object                       # labelreg Volume, world coordinates
    moving: object
    movingLabels: object | None = None  # Volume (C, z, y, x) on the moving grid
    fixedLabels: object | None = None   # Volume (C, z, y, x) on the fixed grid, for metrics
    segmentNames: list = field(default_factory=list)
    segmentColors: list = field(default_factory=list)
    mode: str = "deformable"
    device: str = "auto"
    modelPath: str = ""
    context: dict = field(default_factory=dict)  # node IDs and options, used on the main thread
    requestedAt: float = field(default_factory=time.perf_counter)


@dataclass
class WorkerResult:
    """The arrays and numbers of a :class:`labelreg.engine.RegistrationResult`, as they come back
    from the worker process (same attribute names; the transform object stays in the worker)."""

    affine_lps: np.ndarray                  # (4, 4) fixed -> moving, LPS
    fixed_grid: object                      # labelreg Grid of the outputs
    mode: str
    device: str
    ddf_lps: np.ndarray | None = None       # (z, y, x, 3) mm, LPS
    warped_moving: np.ndarray | None = None  # (z, y, x)
    warped_labels: np.ndarray | None = None  # (C, z, y, x) in [0, 1]
    timings: dict = field(default_factory=dict)
    initial_lps: np.ndarray | None = None
    warnings: list = field(default_factory=list)
    confidence: float | None = None         # labelreg.confidence: P(mean landmark error <= 8 mm)
    verdict: str | None = None              # "good", "check" or "doubtful"
    confidence_features: dict = field(default_factory=dict)


@dataclass
class RegistrationOutcome:
    result: object            # labelreg.engine.RegistrationResult (worker) or WorkerResult (Slicer)
    seconds: float
    device: str
    notes: list
    metrics: dict | None = None


@dataclass
class LabelRegOutputs:
    """Output nodes of one registration (what ``LabelRegLogic.register`` returns).

    ``transformNode`` is the composite fixed -> moving transform the segmentation is placed
    under: the grid transform, or the affine one in affine mode. ``latency`` (live updates) is
    the time from the TRUS image change to the updated outputs.
    """

    affineTransformNode: object
    transformNode: object
    segmentationNode: object | None
    volumeNode: object | None
    outcome: RegistrationOutcome
    latency: float | None = None
    fixedVolumeNode: object | None = None

    @property
    def summary(self) -> str:
        return formatSummary(self.outcome, self.latency)


def _isOutOfMemory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


class EngineCache:
    """Keeps loaded :class:`labelreg.engine.RegistrationEngine` objects, keyed by model file
    (path, size, modification time) and device, so live updates never re-read weights."""

    def __init__(self, maxEngines: int = 2):
        self._engines = {}
        self._maxEngines = maxEngines

    @staticmethod
    def _key(modelPath: str, device: str):
        path = Path(modelPath) if modelPath else None
        stat = path.stat() if path is not None and path.exists() else None
        return (str(path or ""), stat and stat.st_size, stat and stat.st_mtime_ns, device)

    def engine(self, modelPath: str = "", device: str = "auto"):
        """(engine, notes): ``device="cuda"`` without a GPU falls back to the CPU with a note.

        Raises LabelRegError for a missing, tampered or unreadable model file.
        """
        import torch
        from labelreg.engine import RegistrationEngine

        notes = []
        if device == "cuda" and not torch.cuda.is_available():
            notes.append(NO_GPU_NOTE)
            device = "cpu"
        key = self._key(modelPath, device)
        if key not in self._engines:
            while len(self._engines) >= self._maxEngines:
                self._engines.pop(next(iter(self._engines)))
            self._engines[key] = RegistrationEngine(modelPath or None, device=device)
        return self._engines[key], notes

    def put(self, modelPath: str, device: str, engine) -> None:
        """Use ``engine`` for this model and device (tests inject engines this way)."""
        self._engines[self._key(modelPath, device)] = engine

    def clear(self) -> None:
        self._engines.clear()

    def run(self, request: RegistrationRequest, progress=None, cancel=None) -> RegistrationOutcome:
        """Register one request; retries on the CPU when the GPU runs out of memory."""
        start = time.perf_counter()
        engine, notes = self.engine(request.modelPath, request.device)
        args = (request.fixed, request.moving, request.movingLabels)
        try:
            result = engine.register(*args, mode=request.mode, progress=progress, cancel=cancel)
        except Exception as exc:
            if getattr(engine.device, "type", str(engine.device)) != "cuda" or not _isOutOfMemory(exc):
                raise
            import torch

            torch.cuda.empty_cache()
            notes.append(OOM_NOTE)
            engine, _ = self.engine(request.modelPath, "cpu")
            result = engine.register(*args, mode=request.mode, progress=progress, cancel=cancel)
        metrics = evaluate(result.warped_labels, request.fixedLabels, result.fixed_grid)
        notes += [f"Warning: {line}" for line in result.warnings]  # inputs far from the model's training domain
        return RegistrationOutcome(result, time.perf_counter() - start, result.device, notes, metrics)


def evaluate(warpedLabels, fixedLabels, grid) -> dict | None:
    """Gland Dice (channel 0) and landmark distances (channels 1..) when both label sets exist;
    channels are matched by order, the shorter set decides how many."""
    if warpedLabels is None or fixedLabels is None:
        return None
    from labelreg.metrics import dice, landmark_tre_mm

    count = min(len(warpedLabels), len(fixedLabels.channels))
    warped, fixed = np.asarray(warpedLabels[:count]), fixedLabels.channels[:count]
    distances = [d for d in landmark_tre_mm(warped, fixed, grid) if not math.isnan(d)]
    return {"dice": dice(warped[0], fixed[0]), "landmark_mm": distances}


def formatSummary(outcome: RegistrationOutcome, latency: float | None = None) -> str:
    """One results line: time, device, the confidence's verdict, notes, Dice and landmark distances."""
    parts = [f"Registered in {outcome.seconds:.2f} s on {outcome.device.upper()}"]
    verdict = getattr(outcome.result, "verdict", None)
    if verdict is not None:
        from labelreg.choices import VERDICT_ADVICE

        advice = VERDICT_ADVICE[verdict]
        parts.append(f"{advice[0].upper()}{advice[1:]} (confidence {outcome.result.confidence:.2f})")
    if latency is not None:
        parts.append(f"live latency {latency:.2f} s")
    metrics = outcome.metrics
    if metrics:
        parts.append(f"gland Dice {metrics['dice']:.3f}")
        if metrics["landmark_mm"]:
            text = ", ".join("out of view" if math.isinf(d) else f"{d:.1f}" for d in metrics["landmark_mm"])
            parts.append(f"landmark distances {text} mm")
    return ". ".join([" · ".join(parts)] + outcome.notes)

"""Inference: register fixed/moving volumes with a trained model and return physical results.

The engine keeps the model loaded (live updates register frame after frame without
re-reading weights), runs under ``torch.inference_mode()``, picks CUDA when asked for "auto"
and available, and never modifies its inputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .domain import check_input
from .errors import LabelRegError, RegistrationCancelled
from .grid import Grid
from .model import ALIGNMENTS, MODES, ROLES, RegistrationModel
from .model_io import load_model
from .transforms import transform_points
from .volume import Volume
from .warp import sample, sample_field

DEVICES = ("auto", "cpu", "cuda")
#: refuse a fixed image whose network grid would exceed this many voxels (wrong units, huge FOV)
MAX_NETWORK_VOXELS = 256**3
#: fixed-grid voxels composed and warped at a time (bounds the temporaries to ~100 MB)
SLAB_VOXELS = 1 << 21
#: what a registration needs besides its inputs and outputs: the model, the networks' tensors, a slab
BASE_BYTES = 400 << 20

def select_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU is an error."""
    if device not in DEVICES:
        raise LabelRegError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise LabelRegError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def registration_bytes(fixed: Volume, moving: Volume, labels: Volume | None = None) -> int:
    """Memory one registration needs on top of its inputs: the normalised images, the outputs on
    the fixed grid (displacement field, warped image and labels, float32) and :data:`BASE_BYTES`."""
    channels = 0 if labels is None else labels.channels.shape[0]
    fixed_voxels, moving_voxels = (int(np.prod(v.grid.size, dtype=np.int64)) for v in (fixed, moving))
    return fixed_voxels * (4 + 16 + 4 * channels) + moving_voxels * (8 + 4 * channels) + BASE_BYTES


def available_bytes() -> int | None:
    """Memory the system can still give (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        return None


@dataclass
class RegistrationResult:
    """Outputs on the fixed image grid. Transforms map fixed LPS points to moving LPS points.

    Attributes:
        affine_lps: (4, 4) initial alignment composed with the global net's affine.
        ddf_lps: (nz, ny, nx, 3) composite displacement (affine and local), mm, LPS components.
        warped_moving: (nz, ny, nx) moving image resampled onto the fixed grid (original units).
        warped_labels: (C, nz, ny, nx) moving labels warped trilinearly (values in [0, 1]), or None.
        fixed_grid: the grid of the outputs.
        timings: seconds per stage.
        initial_lps: (4, 4) the initial alignment the networks started from.
        warnings: one line each where an input lies far from the model's training domain.
    """

    affine_lps: np.ndarray
    ddf_lps: np.ndarray
    warped_moving: np.ndarray
    warped_labels: np.ndarray | None
    fixed_grid: Grid
    mode: str
    device: str
    timings: dict = field(default_factory=dict)
    initial_lps: np.ndarray | None = None
    warnings: list = field(default_factory=list)


ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class RegistrationEngine:
    """Register MR (moving) to TRUS (fixed) with a :class:`RegistrationModel`.

    Args:
        model: a loaded model, a path to a model file, or None for the bundled model.
        device: "auto", "cpu" or "cuda".
        threads: CPU threads for torch (None leaves torch's setting).
    """

    def __init__(self, model=None, device: str = "auto", threads: int | None = None):
        if isinstance(model, RegistrationModel):
            self.model, self.metadata = model, {}
        else:
            self.model, self.metadata = load_model(model)
        self.device = select_device(device)
        if threads:
            torch.set_num_threads(int(threads))
        self.model.to(self.device).eval()

    @property
    def config(self):
        return self.model.config

    def register(self, fixed: Volume, moving: Volume, moving_labels: Volume | None = None,
                 mode: str = "deformable", initial_alignment: str | None = None,
                 progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> RegistrationResult:
        """Register one pair; see :meth:`register_batch`."""
        return self.register_batch([(fixed, moving, moving_labels)], mode, initial_alignment, progress, cancel)[0]

    def register_batch(self, pairs, mode: str = "deformable", initial_alignment: str | None = None,
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> list:
        """Register several (fixed, moving, moving_labels-or-None) pairs.

        ``initial_alignment`` is "centers", "headers", "gland" (models with gland localisers;
        default: the model's), or a (4, 4)
        fixed -> moving LPS matrix to start from (a manual or earlier alignment), used for every
        pair. Pairs whose fixed and moving grids are all identical run through the networks as
        one batch; others run one by one. ``progress(fraction, message)`` is called between stages
        and ``cancel()`` is polled there: returning True raises :class:`RegistrationCancelled`.
        """
        if mode not in MODES:
            raise LabelRegError(f"mode must be one of {MODES}, got {mode!r}")
        pairs = [tuple(p) + (None,) * (3 - len(p)) for p in pairs]
        for fixed, moving, labels in pairs:
            self._check_pair(fixed, moving, labels)
        same = all(p[0].grid == pairs[0][0].grid and p[1].grid == pairs[0][1].grid for p in pairs)
        if len(pairs) > 1 and not same:
            return [self.register_batch([p], mode, initial_alignment, progress, cancel)[0] for p in pairs]
        if initial_alignment is None:
            initial_alignment = self.config.initial_alignment
        if isinstance(initial_alignment, str):
            if initial_alignment not in ALIGNMENTS:
                raise LabelRegError(f"initial_alignment must be one of {ALIGNMENTS} or a (4, 4) matrix, "
                                    f"got {initial_alignment!r}")
            if initial_alignment == "gland" and self.model.localisers is None:
                raise LabelRegError("initial_alignment 'gland' needs a model with gland localisers; this model has "
                                    "none: use 'centers' or 'headers'")
        else:
            initial_alignment = np.asarray(initial_alignment, dtype=np.float64)
            if initial_alignment.shape != (4, 4) or not np.isfinite(initial_alignment).all():
                raise LabelRegError(f"initial_alignment must be a name or a finite (4, 4) LPS matrix, got shape "
                                    f"{initial_alignment.shape}")
        with torch.inference_mode():
            return self._run(pairs, mode, initial_alignment, progress, cancel)

    def _check_pair(self, fixed: Volume, moving: Volume, labels: Volume | None):
        for role, volume in (("fixed", fixed), ("moving", moving)):
            if volume.array.ndim != 3:
                raise LabelRegError(f"{volume.name}: the {role} image must be 3-D, got shape {volume.array.shape}")
        if labels is not None and not labels.grid.same_as(moving.grid):
            raise LabelRegError(f"{labels.name}: moving labels are not on the moving image's grid")
        need, free = registration_bytes(fixed, moving, labels), available_bytes()
        if free is not None and need > free:
            raise LabelRegError(f"{fixed.name}: registering this {fixed.grid.size} image needs about "
                                f"{need / 2**30:.1f} GB of memory and {free / 2**30:.1f} GB is free; crop or downsample "
                                "it (or close other programs)")
        net = self.model.network_grid(fixed.grid)
        if int(np.prod(net.size, dtype=np.int64)) > MAX_NETWORK_VOXELS:
            raise LabelRegError(
                f"{fixed.name}: the image covers {np.round(fixed.grid.extent_mm).tolist()} mm, which at "
                f"{self.config.grid_spacing_mm} mm is a {net.size} network grid (over {MAX_NETWORK_VOXELS} voxels); "
                "check the spacing units (mm) or crop the image"
            )

    def _normalised(self, pairs) -> tuple:
        """The pairs' images normalised, as (B, 1, ...) fixed and moving tensors, and each pair's
        warnings where an image lies far from the model's training domain."""
        domain = self.metadata.get("training_domain")
        images, warnings = {role: [] for role in ROLES}, []
        for pair in pairs:
            lines = []
            for volume, role in zip(pair[:2], ROLES):
                array = self.config.normalize(volume.array, volume.grid, role)
                field = self.config.field_box(volume.grid, role)
                lines += check_input(domain, role, volume.name, volume.grid, field, array)
                images[role].append(array)
            warnings.append(lines)
        return (*(torch.from_numpy(np.stack(images[role])[:, None]).to(self.device) for role in ROLES), warnings)

    def _run(self, pairs, mode, alignment, progress, cancel) -> list:
        timings = {}
        clock = time.perf_counter()

        def step(fraction, message, stage=None):
            nonlocal clock
            if stage:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                timings[stage] = timings.get(stage, 0.0) + now - clock
                clock = now
            if cancel is not None and cancel():
                raise RegistrationCancelled("registration cancelled")
            if progress is not None:
                progress(fraction, message)

        step(0.0, "preprocessing")
        dev = self.device
        fixed_grid, moving_grid = pairs[0][0].grid, pairs[0][1].grid
        fixed, moving, warnings = self._normalised(pairs)
        maps = None
        if self.model.uses_gland_maps(alignment, mode):
            step(0.1, "finding the gland", "preprocess")
            maps = self.model.gland_maps(fixed, fixed_grid, moving, moving_grid)
        else:
            step(0.1, "aligning", "preprocess")
        if isinstance(alignment, str):
            initial = self.model.initial_lps(fixed, fixed_grid, moving, moving_grid, alignment, gland_maps=maps)
        else:
            initial = torch.as_tensor(alignment, dtype=torch.float32, device=dev).expand(len(pairs), 4, 4)
        step(0.2, "running the networks", "alignment")

        affine, ddf_net, net_grid, _ = self.model.forward_pair(fixed, fixed_grid, moving, moving_grid, initial, mode,
                                                               gland_maps=maps)
        step(0.6, "composing the transform", "network")

        step(0.75, "warping")
        outputs, compose_s = self._warp(pairs, affine, ddf_net, net_grid)
        timings["compose"] = timings.get("compose", 0.0) + compose_s
        results = [RegistrationResult(
            affine_lps=affine[b].double().cpu().numpy(), ddf_lps=ddf, warped_moving=warped, warped_labels=labels,
            fixed_grid=fixed_grid, mode=mode, device=str(dev), timings=timings,
            initial_lps=initial[b].double().cpu().numpy(), warnings=warnings[b],
        ) for b, (ddf, warped, labels) in enumerate(outputs)]
        step(1.0, "done", "warp")
        timings["warp"] -= compose_s
        return results

    def _warp(self, pairs, affine, ddf_net, net_grid) -> tuple:
        """Compose the transform and warp the moving images and labels onto the fixed grid, a slab
        of :data:`SLAB_VOXELS` at a time, so that no full-size temporary is held. Returns (per
        pair (ddf_lps (z, y, x, 3), warped (z, y, x), warped labels (C, z, y, x) or None), the
        seconds spent composing)."""
        fixed_grid, moving_grid, dev = pairs[0][0].grid, pairs[0][1].grid, self.device
        nz, ny, nx = fixed_grid.shape_zyx
        outputs = [(np.empty((nz, ny, nx, 3), np.float32), np.empty((nz, ny, nx), np.float32),
                    None if labels is None else np.empty((labels.channels.shape[0], nz, ny, nx), np.float32))
                   for _, _, labels in pairs]
        sources = [[torch.from_numpy(np.ascontiguousarray(v.channels, dtype=np.float32))[None].to(dev)
                    for v in (moving, labels) if v is not None] for _, moving, labels in pairs]
        slab, compose_s = max(1, SLAB_VOXELS // (nx * ny)), 0.0
        for k0 in range(0, nz, slab):
            start = time.perf_counter()
            part = Grid((nx, ny, min(slab, nz - k0)), fixed_grid.spacing,
                        fixed_grid.index_to_lps[:3, :3] @ [0, 0, k0] + fixed_grid.origin, fixed_grid.direction)
            points = part.points_lps(device=dev)
            ddf_full = None if ddf_net is None else sample_field(ddf_net, net_grid, points)
            moving_points = transform_points(affine, points, ddf_full)
            compose_s += time.perf_counter() - start
            rows = slice(k0, k0 + part.size[2])
            for (ddf, warped, labels), images, where in zip(outputs, sources, moving_points):
                ddf[rows] = (where - points).cpu().numpy()
                warped[rows] = sample(images[0], moving_grid, where[None])[0, 0].cpu().numpy()
                if labels is not None:
                    labels[:, rows] = sample(images[1], moving_grid, where[None])[0].clamp(0, 1).cpu().numpy()
        return outputs, compose_s

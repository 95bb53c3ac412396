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

from . import confidence
from .choices import ALIGNMENTS, DEVICES, MODES
from .confidence import Calibration
from .domain import check_input
from .errors import LabelRegError, RegistrationCancelled
from .grid import Grid
from .model import ROLES, RegistrationModel
from .model_io import load_model
from .transforms import transform_points
from .volume import Volume
from .warp import sample, sample_field

#: refuse a fixed image whose network grid would exceed this many voxels (wrong units, huge FOV)
MAX_NETWORK_VOXELS = 256**3
#: fixed-grid voxels composed and warped at a time (bounds the temporaries to ~100 MB)
SLAB_VOXELS = 1 << 19
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


def registration_bytes(fixed: Volume, moving: Volume, labels: Volume | None = None, outputs: bool = True) -> int:
    """Memory one registration needs on top of its inputs: the normalised images, the moving
    images as float32 tensors, the outputs on the fixed grid when held in memory (displacement
    field, warped image and labels, float32) and :data:`BASE_BYTES`."""
    channels = 0 if labels is None else labels.channels.shape[0]
    fixed_voxels, moving_voxels = (int(np.prod(v.grid.size, dtype=np.int64)) for v in (fixed, moving))
    held = 16 + 4 * channels if outputs else 0
    return fixed_voxels * (4 + held) + moving_voxels * (8 + 4 * channels) + BASE_BYTES


def available_bytes() -> int | None:
    """Memory the system can still give (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class FixedToMoving:
    """The transform a registration found, fixed LPS -> moving LPS (mm): ``x -> A (x + u(x))``
    with ``u`` the local net's displacement on the network grid, sampled trilinearly (None in
    affine mode). Evaluated on any grid a slab of :data:`SLAB_VOXELS` at a time, so that no
    full-size temporary is ever held.

    Attributes:
        affine_lps: (4, 4) tensor on the engine's device.
        ddf_net_lps: (1, D, H, W, 3) tensor on ``net_grid``, mm, LPS components, or None.
        net_grid: the network grid of ``ddf_net_lps``.
    """

    affine_lps: torch.Tensor
    ddf_net_lps: torch.Tensor | None
    net_grid: Grid

    def slabs(self, grid: Grid):
        """Yield (k0, points_lps, moving_points_lps) for successive axial slabs of ``grid``:
        (z, y, x, 3) tensors of the slab's fixed points and where they land in the moving image."""
        nz, ny, nx = grid.shape_zyx
        step = max(1, SLAB_VOXELS // (nx * ny))
        for k0 in range(0, nz, step):
            part = Grid((nx, ny, min(step, nz - k0)), grid.spacing,
                        grid.index_to_lps[:3, :3] @ [0, 0, k0] + grid.origin, grid.direction)
            points = part.points_lps(device=self.affine_lps.device)
            local = None if self.ddf_net_lps is None else sample_field(self.ddf_net_lps, self.net_grid, points)
            yield k0, points, transform_points(self.affine_lps[None], points, local)[0]


@dataclass
class RegistrationResult:
    """A registration: its transform and, unless the engine was asked for the transform only,
    the outputs on the fixed image grid at full resolution. Transforms map fixed LPS points to
    moving LPS points.

    Attributes:
        affine_lps: (4, 4) initial alignment composed with the global net's affine.
        transform: the whole transform (:class:`FixedToMoving`), to evaluate on any grid.
        fixed_grid: the grid of the outputs.
        ddf_lps: (nz, ny, nx, 3) composite displacement (affine and local), mm, LPS components.
        warped_moving: (nz, ny, nx) moving image resampled onto the fixed grid (original units).
        warped_labels: (C, nz, ny, nx) moving labels warped trilinearly (values in [0, 1]), or None.
        timings: seconds per stage.
        initial_lps: (4, 4) the initial alignment the networks started from.
        warnings: one line each where an input lies far from the model's training domain.
        confidence: in [0, 1], the estimated probability that the mean landmark error is within
            8 mm (:mod:`labelreg.confidence`), or None (a model without gland localisers or without
            a calibration, or a registration started from a given matrix).
        verdict: "good", "check" or "doubtful" with ``confidence``, else None.
        confidence_features: the label-free measures the confidence is computed from.
    """

    affine_lps: np.ndarray
    transform: FixedToMoving
    fixed_grid: Grid
    mode: str
    device: str
    ddf_lps: np.ndarray | None = None
    warped_moving: np.ndarray | None = None
    warped_labels: np.ndarray | None = None
    timings: dict = field(default_factory=dict)
    initial_lps: np.ndarray | None = None
    warnings: list = field(default_factory=list)
    confidence: float | None = None
    verdict: str | None = None
    confidence_features: dict = field(default_factory=dict)

    def output_slabs(self, moving: Volume | None = None, labels: Volume | None = None, grid: Grid | None = None):
        """Yield (k0, ddf_lps, warped_moving, warped_labels) numpy slabs, axial index ``k0``
        on, of the outputs on ``grid`` (default: the fixed grid): (z, y, x, 3), (z, y, x) or
        None without ``moving``, (C, z, y, x) or None without ``labels``. How outputs of any
        size are written (``labelreg.batch``) or held (:meth:`compute_outputs`)."""
        grid = grid or self.fixed_grid
        device = self.transform.affine_lps.device
        with torch.inference_mode():
            yield from self._output_slabs(moving, labels, grid, device)

    def _output_slabs(self, moving, labels, grid, device):
        sources = [None if v is None else torch.from_numpy(np.ascontiguousarray(v.channels, np.float32))[None].to(device)
                   for v in (moving, labels)]
        for k0, points, where in self.transform.slabs(grid):
            warped = [None if v is None else sample(source, v.grid, where[None])[0]
                      for v, source in zip((moving, labels), sources)]
            yield (k0, (where - points).cpu().numpy(), None if moving is None else warped[0][0].cpu().numpy(),
                   None if labels is None else warped[1].clamp(0, 1).cpu().numpy())

    def compute_outputs(self, moving: Volume, labels: Volume | None = None) -> None:
        """Fill :attr:`ddf_lps`, :attr:`warped_moving` and :attr:`warped_labels` (full resolution)."""
        nz, ny, nx = self.fixed_grid.shape_zyx
        self.ddf_lps, self.warped_moving = np.empty((nz, ny, nx, 3), np.float32), np.empty((nz, ny, nx), np.float32)
        self.warped_labels = None if labels is None else np.empty((labels.channels.shape[0], nz, ny, nx), np.float32)
        for k0, ddf, warped, warped_labels in self.output_slabs(moving, labels):
            rows = slice(k0, k0 + ddf.shape[0])
            self.ddf_lps[rows], self.warped_moving[rows] = ddf, warped
            if labels is not None:
                self.warped_labels[:, rows] = warped_labels


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
        self.calibration = Calibration.from_dict(self.metadata["confidence"]) if "confidence" in self.metadata else None
        if threads:
            torch.set_num_threads(int(threads))
        self.model.to(self.device).eval()

    @property
    def config(self):
        return self.model.config

    def register(self, fixed: Volume, moving: Volume, moving_labels: Volume | None = None,
                 mode: str = "deformable", initial_alignment: str | None = None,
                 progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                 outputs: bool = True) -> RegistrationResult:
        """Register one pair; see :meth:`register_batch`."""
        return self.register_batch([(fixed, moving, moving_labels)], mode, initial_alignment, progress, cancel,
                                   outputs)[0]

    def register_batch(self, pairs, mode: str = "deformable", initial_alignment: str | None = None,
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                       outputs: bool = True) -> list:
        """Register several (fixed, moving, moving_labels-or-None) pairs.

        ``initial_alignment`` is "centers", "headers", "gland" (models with gland localisers;
        default: the model's), or a (4, 4)
        fixed -> moving LPS matrix to start from (a manual or earlier alignment), used for every
        pair. Pairs whose fixed and moving grids are all identical run through the networks as
        one batch; others run one by one. ``progress(fraction, message)`` is called between stages
        and ``cancel()`` is polled there: returning True raises :class:`RegistrationCancelled`.
        With ``outputs=False`` the results hold the transform only: their outputs are then
        computed, or written, a slab at a time (:meth:`RegistrationResult.output_slabs`).
        """
        if mode not in MODES:
            raise LabelRegError(f"mode must be one of {MODES}, got {mode!r}")
        pairs = [tuple(p) + (None,) * (3 - len(p)) for p in pairs]
        for fixed, moving, labels in pairs:
            self._check_pair(fixed, moving, labels, outputs)
        same = all(p[0].grid == pairs[0][0].grid and p[1].grid == pairs[0][1].grid for p in pairs)
        if len(pairs) > 1 and not same:
            return [self.register_batch([p], mode, initial_alignment, progress, cancel, outputs)[0] for p in pairs]
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
            return self._run(pairs, mode, initial_alignment, progress, cancel, outputs)

    def _check_pair(self, fixed: Volume, moving: Volume, labels: Volume | None, outputs: bool):
        for role, volume in (("fixed", fixed), ("moving", moving)):
            if volume.array.ndim != 3:
                raise LabelRegError(f"{volume.name}: the {role} image must be 3-D, got shape {volume.array.shape}")
        if labels is not None and not labels.grid.same_as(moving.grid):
            raise LabelRegError(f"{labels.name}: moving labels are not on the moving image's grid")
        need, free = registration_bytes(fixed, moving, labels, outputs), available_bytes()
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

    def _judge(self, results, maps, pairs) -> None:
        """Each result's confidence features, and with a calibration its confidence and verdict."""
        (fixed_maps, fixed_map_grid), (moving_maps, moving_map_grid) = maps
        for b, result in enumerate(results):
            result.confidence_features = confidence.features(
                result.transform, fixed_maps[b:b + 1], fixed_map_grid, moving_maps[b:b + 1], moving_map_grid,
                pairs[b][0].grid)
            if self.calibration is not None:
                result.confidence = self.calibration.score(result.confidence_features)
                result.verdict = self.calibration.verdict(result.confidence)

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
        batched = (np.stack(images[role]) if len(pairs) > 1 else images[role][0][None] for role in ROLES)
        return (*(torch.from_numpy(array[:, None]).to(self.device) for array in batched), warnings)

    def _run(self, pairs, mode, alignment, progress, cancel, outputs: bool) -> list:
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

        affine, ddf_net, net_grid, _ = self.model.forward_pair(fixed, fixed_grid, moving, moving_grid, initial, mode)
        results = [RegistrationResult(
            affine_lps=affine[b].double().cpu().numpy(),
            transform=FixedToMoving(affine[b], None if ddf_net is None else ddf_net[b:b + 1], net_grid),
            fixed_grid=fixed_grid, mode=mode, device=str(dev), timings=timings,
            initial_lps=initial[b].double().cpu().numpy(), warnings=warnings[b],
        ) for b in range(len(pairs))]
        if maps is not None:
            self._judge(results, maps, pairs)
        if not outputs:
            step(1.0, "done", "network")
            return results
        step(0.6, "warping", "network")
        for result, (_, moving_volume, labels) in zip(results, pairs):
            result.compute_outputs(moving_volume, labels)
        step(1.0, "done", "warp")
        return results

"""The registration model: global net + local net + the geometry that links them.

:meth:`RegistrationModel.forward_pair` is the forward path of evaluation, the command line
and the Slicer module; training enters it one step later, at :meth:`RegistrationModel.forward_on_grid`,
with the fixed image sampled through its augmentation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .choices import ALIGNMENTS, GLAND_TRANSLATIONS, MODES
from .grid import Grid
from .networks import GlandLocaliser, GlobalNet, LocalNet
from .overlap import overlap_translation_lps
from .transforms import affine_from_params, ddf_grid_to_lps, initial_transform, transform_points
from .warp import sample

#: 2: ModelConfig.gland_translation; a format-1 model aligns by gland centroids, and a
#: LabelReg that reads only format 1 refuses a format-2 model instead of ignoring the option.
#: 3: the networks' frame and fields of view (``frame_direction_lps``, ``fixed_field_mm``,
#: ``moving_field_mm``); older files load with the frame they were trained in (the public data
#: set's storage, :data:`RAS_AXES_LPS`) and fields that follow each image's extent, as before.
#: 4: the options only rejected research experiments used are gone (:data:`RETIRED_OPTIONS`).
#: An older file loads when it sets them to the values that changed nothing (the bundled model
#: and every model of the current recipe do); one that used them is refused (:func:`retire_options`).
FORMAT_VERSION = 4
#: index axes i, j, k along the patient's right, anterior and superior directions (as LPS
#: columns): the storage of the public MR-TRUS data set, the frame the bundled model was trained in
RAS_AXES_LPS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
ROLES = ("fixed", "moving")


#: options of model formats <= 3 that format 4 removed, with the value under which each changed
#: nothing: top-level ones, then those of each network's constructor arguments. (The global net's
#: ``keypoints``, ``keypoint_level`` and ``ridge`` were read by the keypoint head only.)
RETIRED_OPTIONS = {"local_gland_inputs": False, "localiser_spacing_mm": None}
RETIRED_NET_OPTIONS = {"global_net": {"norm": "instance", "head": "dense", "dof": "affine"},
                       "local_net": {"norm": "instance"}, "localiser": {"norm": "instance"}}
KEYPOINT_OPTIONS = ("keypoints", "keypoint_level", "ridge")


class RetiredOptionError(ValueError):
    """A model configuration uses, with an effect, an option that model format 4 removed."""

    def __init__(self, option: str, value):
        self.option, self.value = option, value
        super().__init__(f"model option {option} = {value!r} was removed in model format {FORMAT_VERSION} (only a "
                         "rejected research experiment used it): retrain with the current recipe "
                         "(LabelRegTraining/scripts/train_gland_fold.sh) or use labelreg <= 0.1")


def retire_options(values: dict) -> dict:
    """A saved model configuration without the options of :data:`RETIRED_OPTIONS` and
    :data:`RETIRED_NET_OPTIONS`, where each holds the value under which it changed nothing (a
    localiser spacing equal to the network grid's included); :class:`RetiredOptionError` for one
    that does not."""
    out = dict(values)
    grid_mm = out.get("grid_spacing_mm", ModelConfig.grid_spacing_mm)
    for option, inert in RETIRED_OPTIONS.items():
        value = out.pop(option, inert)
        if value != inert and not (option == "localiser_spacing_mm" and value == grid_mm):
            raise RetiredOptionError(option, value)
    for net in RETIRED_NET_OPTIONS:
        if isinstance(out.get(net), dict):
            out[net] = retire_net_options(net, out[net])
    return out


def retire_net_options(net: str, arguments: dict) -> dict:
    """The constructor arguments of network ``net`` ("global_net", "local_net" or "localiser")
    without the options of :data:`RETIRED_NET_OPTIONS` that hold their inert value;
    :class:`RetiredOptionError` for one that does not."""
    arguments = dict(arguments)
    for option, inert in RETIRED_NET_OPTIONS[net].items():
        value = arguments.pop(option, inert)
        if value != inert:
            raise RetiredOptionError(f"{net}.{option}", value)
    if net == "global_net":  # a dense head never read them
        arguments = {k: v for k, v in arguments.items() if k not in KEYPOINT_OPTIONS}
    return arguments


def is_gland_alignment(alignment) -> bool:
    """Whether ``alignment`` (a name from :data:`ALIGNMENTS` or a 4x4 matrix) is the learned gland alignment."""
    return isinstance(alignment, str) and alignment == "gland"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and prepare its inputs (saved in every checkpoint).

    Attributes:
        grid_spacing_mm: isotropic spacing of the network grid, built around the fixed image.
        initial_alignment: "centers" (align volume centres), "headers" (trust file headers) or
            "gland" (the predicted glands, see ``gland_translation``; needs ``localiser``).
        intensity_percentiles: each image is mapped linearly so these percentiles go to 0 and 1.
        global_net / local_net: constructor arguments of the two networks.
        localiser: constructor arguments of the two :class:`GlandLocaliser` (TRUS, MR), or None.
            They see their images at ``grid_spacing_mm`` too.
        frame_direction_lps: the axes (3x3 row-major, columns in LPS) of every grid a network sees
            an image on: the frame the model was trained in. Images stored along other axes are
            resampled into it, so that a registration depends only on the physical images.
        fixed_field_mm / moving_field_mm: the field of view (mm along the frame axes), centred on
            each image, that the networks of that role see: the training images' extent, so that
            a padded, cropped-to-the-same-content or obliquely stored image gives the networks the
            same view; None follows each image's own extent (along the frame axes).
        gland_translation: how the "gland" alignment matches the two predicted glands:
            "centroid" (the translation between their centroids) or "overlap" (the translation,
            within ``overlap_radius_mm`` of the centroid one, that maximises the soft Dice of the two
            maps in the fixed field of view: :mod:`labelreg.overlap`). Inference only: no weights.
    """

    grid_spacing_mm: float = 3.0
    initial_alignment: str = "centers"
    intensity_percentiles: tuple = (1.0, 99.0)
    global_net: dict = field(default_factory=lambda: {"base_channels": 8, "levels": 4, "pooled_size": [3, 4, 3]})
    local_net: dict = field(default_factory=lambda: {"base_channels": 16, "levels": 4})
    localiser: dict | None = None
    gland_translation: str = "centroid"
    overlap_radius_mm: float = 12.0
    frame_direction_lps: tuple = RAS_AXES_LPS
    fixed_field_mm: tuple | None = None
    moving_field_mm: tuple | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.initial_alignment not in ALIGNMENTS:
            raise ValueError(f"initial_alignment must be one of {ALIGNMENTS}")
        if self.initial_alignment == "gland" and self.localiser is None:
            raise ValueError("initial_alignment 'gland' needs a localiser (its constructor arguments, e.g. {})")
        if self.gland_translation not in GLAND_TRANSLATIONS:
            raise ValueError(f"gland_translation must be one of {GLAND_TRANSLATIONS}, got {self.gland_translation!r}")
        if not self.overlap_radius_mm > 0:
            raise ValueError(f"overlap_radius_mm must be positive, got {self.overlap_radius_mm}")
        for net in RETIRED_NET_OPTIONS:  # e.g. "norm": "instance", which every network once spelt out
            if getattr(self, net) is not None:
                setattr(self, net, retire_net_options(net, getattr(self, net)))
        self.intensity_percentiles = tuple(float(p) for p in self.intensity_percentiles)
        frame = np.asarray(self.frame_direction_lps, dtype=np.float64)
        if frame.size != 9 or not np.allclose(frame.reshape(3, 3).T @ frame.reshape(3, 3), np.eye(3), atol=1e-6):
            raise ValueError(f"frame_direction_lps must be an orthonormal 3x3 matrix (9 values), got {frame.tolist()}")
        self.frame_direction_lps = tuple(float(v) for v in frame.ravel())
        for name in ("fixed_field_mm", "moving_field_mm"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
                if len(value) != 3 or not min(value) > 0:
                    raise ValueError(f"{name} must be three positive lengths in mm, got {value}")
                setattr(self, name, value)

    @property
    def frame(self) -> np.ndarray:
        """(3, 3) the frame's axes as LPS columns."""
        return np.asarray(self.frame_direction_lps, dtype=np.float64).reshape(3, 3)

    def field_mm(self, role: str):
        """The field of view (mm along the frame axes) the networks see for ``role``, or None."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return self.fixed_field_mm if role == "fixed" else self.moving_field_mm

    def field_box(self, grid: Grid, role: str) -> Grid | None:
        """The role's field of view around an image on ``grid``, as a one-voxel grid in the frame
        (None when the field is unset: the networks then see the image's whole extent)."""
        field_mm = self.field_mm(role)
        return None if field_mm is None else Grid((1, 1, 1), field_mm, grid.center_lps, self.frame_direction_lps)

    def normalize(self, array: np.ndarray, grid: Grid, role: str) -> np.ndarray:
        """:func:`normalize_intensity` of an image of ``role`` on ``grid``, over the part of it the
        role's field of view covers (all of it when the field is unset)."""
        return normalize_intensity(array, self.intensity_percentiles, self.field_box(grid, role), grid)

    def with_fields_of(self, fixed_grid: Grid, moving_grid: Grid) -> ModelConfig:
        """A copy whose unset fields of view are the extents of these grids along the frame
        axes (training records its images' fields so inference sees the same view)."""
        out = ModelConfig.from_dict(self.to_dict())
        for role, grid in zip(ROLES, (fixed_grid, moving_grid)):
            if out.field_mm(role) is None:
                setattr(out, f"{role}_field_mm", tuple(float(v) for v in grid.extent_along_mm(out.frame)))
        return out

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The configuration saved as ``values`` (any format): keys this LabelReg does not know are
        ignored, retired ones checked by :func:`retire_options`."""
        known = {k: v for k, v in retire_options(values).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def subsample_step(voxels: int) -> int:
    """Every how many voxels along each axis image statistics are taken (about 2 M voxels)."""
    return max(1, round((voxels / 2_000_000) ** (1 / 3)))


def normalize_intensity(array: np.ndarray, percentiles=(1.0, 99.0), field: Grid | None = None,
                        grid: Grid | None = None) -> np.ndarray:
    """Map the given percentiles of ``array`` to 0 and 1 (float32, clipped to [-0.5, 1.5]).

    With ``field`` (a grid whose voxels span the region the networks see) and ``grid`` (the
    array's), the percentiles count only the voxels whose centres lie in that region, so
    that padding an image, or storing it on a larger oblique grid, leaves them unchanged."""
    step = subsample_step(array.size)
    values = array[::step, ::step, ::step]
    if field is not None and grid is not None:
        values = values[grid.voxels_inside(field, step)]
        values = values if values.size else array
    low, high = np.percentile(values, percentiles)
    if high <= low:
        low, high = float(array.min()), float(array.max())
    scale = 1.0 / max(float(high - low), 1e-6)
    out = array.astype(np.float32)  # one copy, then in place: an image of any size costs 4 bytes per voxel
    out -= np.float32(low)
    out *= np.float32(scale)
    return np.clip(out, -0.5, 1.5, out=out)


class RegistrationModel(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        self.global_net = GlobalNet(**self.config.global_net)
        self.local_net = LocalNet(**self.config.local_net)
        self.localisers = None if self.config.localiser is None else nn.ModuleDict(
            {"fixed": GlandLocaliser(**self.config.localiser), "moving": GlandLocaliser(**self.config.localiser)})

    @property
    def grid_multiple(self) -> int:
        return max(self.global_net.multiple, self.local_net.multiple)

    def frame_grid(self, grid: Grid, role: str, spacing_mm: float, multiple: int = 1) -> Grid:
        """A grid in the model's frame around an image of ``role`` ("fixed" or "moving") on
        ``grid``: axes ``frame_direction_lps``, centred on the image, covering the role's field of
        view (:meth:`ModelConfig.field_mm`; the image's extent when unset) at ``spacing_mm``, each
        size rounded up to a multiple of ``multiple``. Every grid a network sees is one of these."""
        return grid.resampled(spacing_mm, multiple, self.config.frame, self.config.field_mm(role))

    def network_grid(self, fixed_grid: Grid) -> Grid:
        """The grid the registration networks see: around the fixed image, at ``grid_spacing_mm``."""
        return self.frame_grid(fixed_grid, "fixed", self.config.grid_spacing_mm, self.grid_multiple)

    def localiser_grid(self, grid: Grid, role: str) -> Grid:
        """The grid the gland localiser of ``role`` sees its image on (training and inference)."""
        return self.frame_grid(grid, role, self.config.grid_spacing_mm, self.localisers[role].multiple)

    def uses_gland_maps(self, alignment, mode: str) -> bool:
        """Whether registering in ``mode`` from ``alignment`` runs the localisers: only the gland
        alignment does, whatever the mode (the networks see the images only)."""
        return is_gland_alignment(alignment)

    def gland_maps(self, fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid) -> tuple:
        """The gland probabilities the two localisers predict, each on its :meth:`localiser_grid`: ((fixed (B, 1, ...), its Grid), (moving (B, 1, ...), its Grid)). No gradients."""
        if self.localisers is None:
            raise ValueError("this model has no gland localiser: use the 'centers' or 'headers' alignment")
        with torch.no_grad():
            return tuple(gland_probability(self.localisers[role], image, grid, self.localiser_grid(grid, role))
                         for role, image, grid in (("fixed", fixed, fixed_grid), ("moving", moving, moving_grid)))

    def initial_lps(self, fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid,
                    alignment: str | None = None, views_lps: tuple | None = None,
                    gland_maps: tuple | None = None) -> torch.Tensor:
        """(B, 4, 4) fixed -> moving LPS transform that starts the registration.

        ``alignment`` (default: the model's) is one of :data:`ALIGNMENTS`. For "gland" each
        localiser segments its (normalised) image on its :meth:`localiser_grid`, and the
        translation takes the predicted TRUS gland to the predicted MR one (centroid to centroid,
        or best overlap: ``config.gland_translation``); a pair
        where either prediction is empty falls back to the volume centres. ``gland_maps``: the
        :meth:`gland_maps` of these images, when already computed.

        ``views_lps`` (training augmentation): (B, 4, 4) affines (r_fixed, r_moving) through which
        the networks see the images (the fixed at ``r_fixed x``, the moving at ``r_moving y``).
        The gland translation is then the one between the glands as seen,
        ``r_moving^-1 c_moving - r_fixed^-1 c_fixed``, i.e. what the localisers would give on the
        augmented pair (they are close to equivariant), as at inference.
        """
        alignment = alignment or self.config.initial_alignment
        if alignment not in ALIGNMENTS:
            raise ValueError(f"initial alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        base = "centers" if alignment == "gland" else alignment
        out = torch.as_tensor(initial_transform(fixed_grid, moving_grid, base), dtype=fixed.dtype, device=fixed.device)
        out = out.repeat(fixed.shape[0], 1, 1)
        if alignment != "gland":
            return out
        fixed_c, moving_c, found = self.gland_centroids_lps(fixed, fixed_grid, moving, moving_grid, gland_maps)
        if views_lps is not None:
            fixed_c, moving_c = (transform_points(torch.linalg.inv(view), c[:, None, None, None])[:, 0, 0, 0]
                                 for view, c in zip(views_lps, (fixed_c, moving_c)))
        out[:, :3, 3] = torch.where(found[:, None], moving_c - fixed_c, out[:, :3, 3])
        return out

    def gland_centroids_lps(self, fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid,
                            gland_maps: tuple | None = None):
        """Corresponding points of the two predicted glands: ((B, 3) fixed LPS, (B, 3) moving LPS,
        (B,) bool: both predictions are non-empty). The fixed point is the TRUS gland's centroid;
        the moving one is the MR gland's centroid, or with ``gland_translation`` "overlap" the
        fixed centroid moved by the best-overlap translation."""
        (fixed_p, fixed_g), (moving_p, moving_g) = gland_maps or self.gland_maps(fixed, fixed_grid, moving, moving_grid)
        fixed_c, fixed_found = probability_centroid_lps(fixed_p, fixed_g)
        moving_c, moving_found = probability_centroid_lps(moving_p, moving_g)
        if self.config.gland_translation == "overlap":
            moving_c = fixed_c + overlap_translation_lps(fixed_p, fixed_g, moving_p, moving_g, moving_c - fixed_c,
                                                         self.config.overlap_radius_mm)
        return fixed_c, moving_c, fixed_found & moving_found

    def forward_pair(self, fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid,
                     initial_lps: torch.Tensor, mode: str = "deformable"):
        """Register a batch of pairs.

        Args:
            fixed: (B, 1, nz, ny, nx) normalised fixed images on ``fixed_grid``.
            moving: (B, 1, mz, my, mx) normalised moving images on ``moving_grid``.
            initial_lps: (B, 4, 4) fixed -> moving initial transform.
            mode: "affine" (global net only), "deformable" (global then local) or "local"
                (local net after the initial transform only).

        Returns:
            (affine_lps (B, 4, 4), ddf_lps (B, D, H, W, 3) or None, net_grid, fixed_net) where
            the moving point of network-grid point x is ``affine_lps (x + ddf_lps(x))``.
        """
        net_grid = self.network_grid(fixed_grid)
        fixed_net = sample(fixed, fixed_grid, net_grid.points_lps(dtype=fixed.dtype, device=fixed.device))
        return self.forward_on_grid(fixed_net, net_grid, moving, moving_grid, initial_lps, mode)

    def forward_on_grid(self, fixed_net: torch.Tensor, net_grid: Grid, moving: torch.Tensor, moving_grid: Grid,
                        initial_lps: torch.Tensor, mode: str):
        """:meth:`forward_pair` from the fixed image as the networks see it: ``fixed_net``
        (B, 1, D, H, W) on ``net_grid`` (:meth:`network_grid`). Training enters here, with the
        fixed image sampled through its augmentation; the networks and the moving side are the
        same code."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        points = net_grid.points_lps(dtype=fixed_net.dtype, device=fixed_net.device)
        affine_lps = initial_lps.to(fixed_net.dtype)
        if mode != "local":
            moving_net = sample(moving, moving_grid, transform_points(affine_lps, points))
            params = self.global_net(torch.cat([fixed_net, moving_net], dim=1))
            affine_lps = affine_lps @ affine_from_params(params, net_grid)
        if mode == "affine":
            return affine_lps, None, net_grid, fixed_net
        moving_net = sample(moving, moving_grid, transform_points(affine_lps, points))
        ddf_grid = self.local_net(torch.cat([fixed_net, moving_net], dim=1))
        return affine_lps, ddf_grid_to_lps(ddf_grid, net_grid), net_grid, fixed_net


def gland_probability(localiser: GlandLocaliser, image: torch.Tensor, grid: Grid, localiser_grid: Grid):
    """The gland probability ``localiser`` predicts in ``image`` (B, 1, z, y, x) on ``grid``,
    seen on ``localiser_grid`` (:meth:`RegistrationModel.localiser_grid`): (B, 1, ...) probabilities."""
    points = localiser_grid.points_lps(dtype=image.dtype, device=image.device)
    return torch.sigmoid(localiser(sample(image, grid, points))), localiser_grid


def probability_centroid_lps(probability: torch.Tensor, grid: Grid):
    """Centroid (LPS mm) of (B, 1, ...) gland probabilities on ``grid``: the probability-weighted
    centroid of the voxels above 0.5. Returns ((B, 3) centroids, (B,) bool: a voxel above 0.5)."""
    p = probability[:, 0]
    weights = p * (p > 0.5)
    mass = weights.flatten(1).sum(1)
    points = grid.points_lps(dtype=p.dtype, device=p.device)
    centroid = torch.einsum("bzyx,zyxc->bc", weights, points) / mass.clamp_min(1e-12)[:, None]
    return centroid, mass > 0

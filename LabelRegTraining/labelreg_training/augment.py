"""On-the-fly augmentation with torch, expressed as changes to where images are sampled.

The fixed image and its labels are sampled at ``R_f(x) + w(x)`` (a random affine about the
fixed centre plus a mild smooth deformation); the moving image and its labels are sampled
through a random affine ``R_m`` about the moving centre, composed into the initial transform.
Both images get a random gamma and a little noise. Optionally a pair is mirrored across the
patients' left-right plane (both images and their labels alike, so the pair stays a true pair of
another, mirror-image patient). Every draw comes from the generator it is given, so a step is
reproducible from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    rotation_deg: float = 8.0
    scale: float = 0.06
    translation_mm: float = 4.0
    deformation_mm: float = 1.5
    deformation_points: int = 4
    gamma: float = 0.25
    noise: float = 0.03
    #: random misalignment composed *after* the global net (local and joint stages): the frozen
    #: global net fits its training pairs far better than unseen ones, so without it the local
    #: net only ever sees the small residuals of training pairs. 0 switches it off.
    residual_rotation_deg: float = 0.0
    residual_scale: float = 0.0
    residual_translation_mm: float = 0.0
    #: probability that a pair is mirrored (registration stages). 0 switches it off and draws nothing.
    mirror: float = 0.0
    #: the LPS axis that runs left-right in the patients (0: x, 1: y, 2: z). On the MR-TRUS pairs
    #: it is the headers' y axis: the glands are most mirror-symmetric across it (mean Dice of a
    #: gland with its mirror image, TRUS / MR: y 0.903 / 0.941, x 0.814 / 0.862, z 0.865 / 0.840;
    #: ``LabelRegTraining/scripts/mirror_symmetry.py``), and the MR shows the rectum along x.
    mirror_axis_lps: int = 1
    #: probability that the TRUS localiser sees its volume end inside the gland (localiser stage):
    #: 16 of the 81 TRUS glands are cut by the field of view, and there the localiser fails
    #: (docs/experiments.md). 0 switches it off and draws nothing.
    fov_cut: float = 0.0

    def __post_init__(self):
        for name in ("mirror", "fov_cut"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} is a probability in [0, 1], got {getattr(self, name)!r}")
        if self.mirror_axis_lps not in (0, 1, 2):
            raise ValueError(f"augment mirror_axis_lps must be 0, 1 or 2 (LPS x, y, z), got {self.mirror_axis_lps!r}")

    @property
    def residual(self) -> AugmentConfig:
        """The misalignment after the global net, as a config for :func:`random_affine`."""
        return AugmentConfig(rotation_deg=self.residual_rotation_deg, scale=self.residual_scale,
                             translation_mm=self.residual_translation_mm)

    @property
    def has_residual(self) -> bool:
        return any((self.residual_rotation_deg, self.residual_scale, self.residual_translation_mm))


def random_affine(batch: int, centre, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(B, 4, 4) random rotations (small angles about random axes), anisotropic scaling and
    translation about ``centre`` (LPS mm)."""
    def uniform(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1

    angles = uniform(batch, 3) * torch.pi * cfg.rotation_deg / 180
    skew = torch.zeros(batch, 3, 3, dtype=torch.float64)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -angles[:, 2], angles[:, 1], -angles[:, 0]
    rotation = torch.linalg.matrix_exp(skew - skew.transpose(1, 2))
    linear = rotation @ torch.diag_embed(1 + cfg.scale * uniform(batch, 3))
    centre = torch.as_tensor(centre, dtype=torch.float64)
    out = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    out[:, :3, :3] = linear
    out[:, :3, 3] = centre + cfg.translation_mm * uniform(batch, 3) - (linear @ centre)
    return out.float()


def random_mirrors(batch: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(B,) bool: which pairs of the batch are mirrored (probability ``cfg.mirror``)."""
    return torch.rand(batch, generator=gen) < cfg.mirror


def mirror_lps(flip: torch.Tensor, centre, axis: int) -> torch.Tensor:
    """(B, 4, 4) reflection across the plane through ``centre`` (LPS mm) normal to LPS ``axis``
    where ``flip`` is true, identity elsewhere."""
    out = torch.eye(4).repeat(len(flip), 1, 1)
    out[flip, axis, axis] = -1.0
    out[flip, axis, 3] = 2.0 * float(torch.as_tensor(centre, dtype=torch.float64)[axis])
    return out


def cut_field_of_view(image: torch.Tensor, gland: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator):
    """End the volume inside the gland, as the TRUS sweep does in some pairs: for each case, with
    probability ``cfg.fov_cut``, image and gland map (B, 1, D, H, W) are zeroed beyond a plane of
    array axis 0 (the slice axis) at one end, drawn at random, that keeps 60-95% of the gland's
    slices. Returns new tensors; with ``fov_cut`` 0 the inputs themselves, and nothing is drawn."""
    if not cfg.fov_cut:
        return image, gland
    # cut or not, which end, how much is kept; in float64, on the images' device (no sync per case)
    cut, end, keep = torch.rand(image.shape[0], 3, generator=gen).double().to(gland.device).unbind(1)
    occupied = gland[:, 0].flatten(2).amax(2) > 0.5  # (B, D): slices holding gland
    depth = occupied.shape[1]
    index = torch.arange(depth, device=gland.device)
    first = torch.where(occupied, index, depth).amin(1)
    last = torch.where(occupied, index, -1).amax(1)
    kept = ((0.6 + 0.35 * keep) * (last - first + 1)).round().clamp(min=1).long()
    beyond = torch.where((end < 0.5)[:, None], index >= (first + kept)[:, None], index < (last + 1 - kept)[:, None])
    mask = (beyond & ((cut < cfg.fov_cut) & occupied.any(1))[:, None])[:, None, :, None, None]
    return image.masked_fill(mask, 0), gland.masked_fill(mask, 0)


def smooth_displacement(batch: int, shape, cfg: AugmentConfig, gen: torch.Generator, device=None) -> torch.Tensor:
    """(B, D, H, W, 3) smooth random displacement in mm (coarse control points drawn from
    ``gen``, upsampled on ``device``)."""
    n = cfg.deformation_points
    coarse = (torch.randn(batch, 3, n, n, n, generator=gen) * cfg.deformation_mm).to(device)
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True).permute(0, 2, 3, 4, 1)


def intensity(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random gamma on the [0, 1] range and Gaussian noise, per sample; (B, 1, ...). The noise
    is drawn where the images are, from a generator seeded by ``gen``."""
    b = images.shape[0]
    shape = (b,) + (1,) * (images.dim() - 1)
    gamma = torch.exp(cfg.gamma * (torch.rand(shape, generator=gen) * 2 - 1)).to(images.device, images.dtype)
    noise_gen = torch.Generator(images.device).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
    out = images.clamp(min=0) ** gamma
    return out + cfg.noise * torch.randn(images.shape, generator=noise_gen, device=images.device, dtype=images.dtype)

"""On-the-fly augmentation with torch, expressed as changes to where images are sampled.

The fixed image and its labels are sampled at ``R_f(x) + w(x)`` (a random affine about the
fixed centre plus a mild smooth deformation); the moving image and its labels are sampled
through a random affine ``R_m`` about the moving centre, composed into the initial transform.
Both images get a random gamma and a little noise. Every draw comes from the generator it is
given, so a step is reproducible from its seed.
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

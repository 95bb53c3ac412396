"""Synthetic MR (moving) / TRUS (fixed) prostate phantoms with an exactly known transform.

The anatomy (gland ellipsoid, landmark spheres, a bladder) is defined analytically in the
MOVING physical frame (LPS mm). Moving labels and the MR-like image are that anatomy
evaluated at the moving voxel centres; fixed labels and the US-like image are the same
anatomy evaluated at ``T(x)`` for every fixed voxel centre ``x``, where ``T`` (fixed ->
moving) is the true transform. Labels are therefore exact at every voxel of both grids and
``true_ddf_lps`` is exact: ``x_moving = x_fixed + true_ddf_lps(x_fixed)``.

The moving and fixed volumes are centred a few centimetres apart, and the truth is the
centre alignment plus a small rotation/scale/translation and a smooth local bump, so a
registration starting from "centers" alignment is ~5-10 mm off.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .grid import Grid
from .transforms import transform_points
from .volume import Volume

FIXED_CENTRE = np.array([-12.0, 25.0, -40.0])   # LPS mm
MOVING_OFFSET = np.array([35.0, -20.0, 30.0])   # moving centre - fixed centre, LPS mm
GLAND_SEMI_AXES = np.array([21.5, 26.5, 22.5])  # mm, ~15k voxels at 1.5 mm
LANDMARK_RADIUS = (2.8, 3.6)                     # mm, ~20-100 voxels at 1.5 mm


@dataclass
class PhantomPair:
    fixed: Volume
    moving: Volume
    fixed_labels: Volume    # (C, z, y, x) 0/1: channel 0 gland, 1.. landmarks
    moving_labels: Volume
    true_ddf_lps: np.ndarray  # (z, y, x, 3) on the fixed grid, fixed -> moving, LPS mm
    true_affine_lps: np.ndarray  # 4x4 affine part of the truth (applied after the local bump)
    local_ddf_lps: np.ndarray    # (z, y, x, 3) the bump u: truth is x -> A (x + u(x))


def rotation_matrix(axis, angle_rad: float) -> np.ndarray:
    """Rotation about ``axis`` (any non-zero 3-vector) by ``angle_rad`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def centred_grid(size, spacing, direction, centre) -> Grid:
    """A grid of ``size`` (x, y, z) whose voxel-lattice centre is at ``centre`` (LPS)."""
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    half = d @ (np.asarray(spacing, dtype=np.float64) * (np.asarray(size) - 1) / 2.0)
    return Grid(size, spacing, tuple(np.asarray(centre) - half), tuple(d.ravel()))


class _Anatomy:
    """Analytic anatomy and appearance in the moving physical frame."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, n_landmarks: int):
        self.gland_rot = rotation_matrix(rng.normal(size=3), rng.uniform(-0.3, 0.3))
        self.gland_centre = centre + rng.uniform(-3, 3, 3)
        self.bladder_centre = self.gland_centre + self.gland_rot @ np.array([0.0, -34.0, 6.0])
        self.landmarks = []
        for _ in range(n_landmarks):  # inside the gland, up to ~75 % of the way to the capsule
            u = rng.normal(size=3)
            u *= rng.uniform(0.0, 0.75) / np.linalg.norm(u)
            self.landmarks.append((self.gland_centre + self.gland_rot @ (u * GLAND_SEMI_AXES),
                                   rng.uniform(*LANDMARK_RADIUS)))
        self.waves = [(rng.normal(size=3) * 2 * np.pi / rng.uniform(8, 25), rng.uniform(0, 2 * np.pi))
                      for _ in range(6)]

    def labels(self, p: np.ndarray) -> np.ndarray:
        """(C, ...) 0/1 channels at points p (..., 3)."""
        q = (p - self.gland_centre) @ self.gland_rot / GLAND_SEMI_AXES
        out = [np.sum(q * q, axis=-1) <= 1.0]
        out += [np.sum((p - c) ** 2, axis=-1) <= r * r for c, r in self.landmarks]
        return np.stack(out).astype(np.float32)

    def bladder(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.bladder_centre) / np.array([22.0, 14.0, 18.0])
        return np.clip(1.5 - 1.5 * np.sqrt(np.sum(q * q, axis=-1)), 0, 1)  # soft edge

    def texture(self, p: np.ndarray) -> np.ndarray:
        """Smooth texture in [-1, 1] (fixed to the anatomy, so it moves with it)."""
        return sum(np.cos(p @ k + phase) for k, phase in self.waves) / len(self.waves)

    def mr(self, p, labels):
        gland, bladder, tex = labels[0], self.bladder(p), self.texture(p)
        img = 70 + 12 * tex + gland * (75 + 25 * tex) + 20 * labels[1:].sum(0)
        return img * (1 - bladder) + 220 * bladder

    def us(self, p, labels):
        gland, bladder, tex = labels[0], self.bladder(p), self.texture(p)
        img = 110 + 20 * tex - gland * (55 + 10 * tex) + 35 * labels[1:].sum(0)
        return img * (1 - bladder) + 8 * bladder


def _affine(linear, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, translation
    return out


def make_pair(seed=0, fixed_size=(40, 48, 36), moving_size=(48, 48, 44), spacing=(1.5, 1.5, 1.5),
              direction=None, moving_spacing=None, n_landmarks=3, affine_lps=None,
              displacement=True, noise=True, moving_direction=None) -> PhantomPair:
    """A deterministic synthetic MR/TRUS pair; see the module docstring.

    Args:
        fixed_size, moving_size: voxel counts (x, y, z).
        spacing: fixed spacing (mm); ``moving_spacing`` defaults to it.
        direction: 3x3 LPS direction of the fixed grid (default identity);
            ``moving_direction`` defaults to it.
        affine_lps: 4x4 true fixed -> moving affine; default: centre alignment + a random
            small rotation (<= 6 deg), scaling (0.95-1.05) and translation (4-7 mm) about the
            fixed centre.
        displacement: add a smooth Gaussian bump (~3 mm) acting before the affine.
        noise: add Rician-like noise to the MR and multiplicative speckle to the US.
    """
    rng = np.random.default_rng(seed)
    moving_direction = direction if moving_direction is None else moving_direction
    fixed_grid = centred_grid(fixed_size, spacing, direction, FIXED_CENTRE)
    moving_grid = centred_grid(moving_size, spacing if moving_spacing is None else moving_spacing,
                               moving_direction, FIXED_CENTRE + MOVING_OFFSET)
    c_f, c_m = fixed_grid.center_lps, moving_grid.center_lps
    if affine_lps is None:
        rot = rotation_matrix(rng.normal(size=3), np.deg2rad(rng.uniform(-6, 6)))
        linear = rot @ np.diag(rng.uniform(0.95, 1.05, 3))
        t = rng.normal(size=3)
        t *= rng.uniform(4, 7) / np.linalg.norm(t)
        affine_lps = _affine(linear, c_m + t - linear @ c_f)
    affine_lps = np.asarray(affine_lps, dtype=np.float64)
    anatomy = _Anatomy(rng, c_m, n_landmarks)

    points = fixed_grid.points_lps(dtype=torch.float64)
    local = torch.zeros_like(points)
    if displacement:
        centre = np.linalg.solve(affine_lps[:3, :3], anatomy.gland_centre - affine_lps[:3, 3])
        centre = torch.as_tensor(centre + rng.uniform(-8, 8, 3))
        amplitude = rng.normal(size=3)
        amplitude = torch.as_tensor(amplitude * rng.uniform(2.5, 3.5) / np.linalg.norm(amplitude))
        weight = torch.exp(-((points - centre) ** 2).sum(-1, keepdim=True) / (2 * 12.0**2))
        local = weight * amplitude
    mapped = transform_points(torch.as_tensor(affine_lps)[None], points, local[None])[0]
    true_ddf = (mapped - points).numpy().astype(np.float32)
    p_fixed, p_moving = mapped.numpy(), moving_grid.points_lps(dtype=torch.float64).numpy()

    fixed_labels, moving_labels = anatomy.labels(p_fixed), anatomy.labels(p_moving)
    mr, us = anatomy.mr(p_moving, moving_labels), anatomy.us(p_fixed, fixed_labels)
    depth = np.arange(fixed_grid.size[1], dtype=np.float64)[None, :, None] * fixed_grid.spacing[1]
    us = us * np.exp(-0.006 * depth)  # attenuation along the fixed j axis (probe at j = 0)
    if noise:
        mr = np.hypot(mr + rng.normal(0, 6, mr.shape), rng.normal(0, 6, mr.shape))
        us = us * (0.4 + 0.6 * rng.rayleigh(np.sqrt(2 / np.pi), us.shape)) + rng.normal(0, 3, us.shape)
    as_image = lambda a: np.clip(a, 0, 255).astype(np.float32)
    return PhantomPair(
        fixed=Volume(as_image(us), fixed_grid, f"phantom{seed}_fixed"),
        moving=Volume(as_image(mr), moving_grid, f"phantom{seed}_moving"),
        fixed_labels=Volume(fixed_labels, fixed_grid, f"phantom{seed}_fixed_labels"),
        moving_labels=Volume(moving_labels, moving_grid, f"phantom{seed}_moving_labels"),
        true_ddf_lps=true_ddf,
        true_affine_lps=affine_lps,
        local_ddf_lps=local.numpy().astype(np.float32),
    )


def write_pair(pair: PhantomPair, folder, name: str = "case000") -> dict:
    """Write the public dataset layout ``fixed_images/ moving_images/ fixed_labels/
    moving_labels/`` (``<name>.nii.gz`` in each); returns {folder name: path}."""
    from .io import write_image, write_labels  # SimpleITK only when writing

    folder = Path(folder)
    return {
        "fixed_images": write_image(folder / "fixed_images" / f"{name}.nii.gz", pair.fixed.array, pair.fixed.grid),
        "moving_images": write_image(folder / "moving_images" / f"{name}.nii.gz", pair.moving.array, pair.moving.grid),
        "fixed_labels": write_labels(folder / "fixed_labels" / f"{name}.nii.gz",
                                     pair.fixed_labels.array, pair.fixed_labels.grid),
        "moving_labels": write_labels(folder / "moving_labels" / f"{name}.nii.gz",
                                      pair.moving_labels.array, pair.moving_labels.grid),
    }

"""Image grids in physical space (LPS, millimetres).

A :class:`Grid` is the geometry of an ITK image: ``size`` voxels along the
index axes (i, j, k), ``spacing`` in mm, ``origin`` (the centre of voxel 0) and
``direction`` (3x3, columns are the directions of the i, j, k axes) in LPS.

Arrays follow SimpleITK's numpy order: a volume of size (nx, ny, nz) is an
array of shape (nz, ny, nx), so ``array[k, j, i]`` is voxel (i, j, k).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


def _as_tuple(values, n: int, name: str) -> tuple:
    values = tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())
    if len(values) != n:
        raise ValueError(f"Grid {name} needs {n} values, got {len(values)}")
    return values


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3-D image in LPS millimetres.

    Attributes:
        size: voxel counts along (i, j, k), i.e. (nx, ny, nz).
        spacing: voxel size in mm along (i, j, k).
        origin: LPS position (mm) of the centre of voxel (0, 0, 0).
        direction: row-major 3x3 matrix; column ``a`` is the LPS unit vector of index axis ``a``.
    """

    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        size = tuple(int(s) for s in self.size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"Grid size must be three positive integers, got {self.size}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", _as_tuple(self.spacing, 3, "spacing"))
        object.__setattr__(self, "origin", _as_tuple(self.origin, 3, "origin"))
        object.__setattr__(self, "direction", _as_tuple(self.direction, 9, "direction"))
        if min(self.spacing) <= 0:
            raise ValueError(f"Grid spacing must be positive, got {self.spacing}")
        d = self.direction_matrix
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError(f"Grid direction must be orthonormal, got {d.tolist()}")

    # ----------------------------------------------------------------- basics
    @property
    def shape_zyx(self) -> tuple:
        """numpy / torch array shape (nz, ny, nx)."""
        return self.size[::-1]

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def index_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping a continuous index (i, j, k, 1) to an LPS point (mm)."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    @property
    def lps_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_lps)

    @property
    def center_lps(self) -> np.ndarray:
        """LPS position of the geometric centre of the voxel lattice."""
        centre_index = (np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0
        return self.index_to_lps[:3, :3] @ centre_index + self.index_to_lps[:3, 3]

    @property
    def extent_mm(self) -> np.ndarray:
        """Physical length covered by the voxels along (i, j, k)."""
        return np.asarray(self.size, dtype=np.float64) * np.asarray(self.spacing)

    def same_as(self, other: Grid, tol: float = 1e-3) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * max(self.spacing))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    # ------------------------------------------------------------ conversions
    @classmethod
    def from_sitk(cls, image) -> Grid:
        """Geometry of a SimpleITK image (a 4-D image gives its first three axes)."""
        dim = image.GetDimension()
        direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3]
        return cls(image.GetSize()[:3], image.GetSpacing()[:3], image.GetOrigin()[:3], direction.ravel())

    def apply_to_sitk(self, image) -> None:
        """Copy this geometry onto a 3-D SimpleITK image (scalar or vector)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def points_lps(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """LPS coordinates of every voxel centre, shape (nz, ny, nx, 3), last axis (x, y, z)."""
        axes = [torch.arange(n, dtype=torch.float64, device=device) for n in self.shape_zyx]
        k, j, i = torch.meshgrid(*axes, indexing="ij")
        ijk = torch.stack([i, j, k], dim=-1)
        m = torch.as_tensor(self.index_to_lps, dtype=torch.float64, device=device)
        return (ijk @ m[:3, :3].T + m[:3, 3]).to(dtype)

    def extent_along_mm(self, direction) -> np.ndarray:
        """Physical length covered by the voxels (edge to edge) along the three unit axes that
        are the columns of ``direction`` (3x3, LPS): this grid's bounding box in those axes."""
        axes = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in self.size], indexing="ij")).reshape(3, -1)
        along = axes.T @ (self.index_to_lps[:3, :3] @ corners)
        return along.max(axis=1) - along.min(axis=1)

    def resampled(self, spacing_mm, multiple: int = 1, direction=None, extent_mm=None) -> Grid:
        """A grid with the same centre, ``spacing_mm`` (one value: isotropic, or one per new
        axis) and index axes ``direction``
        (3x3, columns in LPS; default: this grid's), covering ``extent_mm`` along those axes
        (default: this grid's whole extent along them), each size rounded up to a multiple of
        ``multiple``.

        How every network grid is built (:meth:`labelreg.model.RegistrationModel.frame_grid`):
        with the model's frame as ``direction``, the result depends only on the image's physical
        position, never on the order or sign of its stored axes.
        """
        spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
        if spacing.min() <= 0:
            raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
        direction = self.direction_matrix if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
        extent = self.extent_along_mm(direction) if extent_mm is None else np.asarray(extent_mm, dtype=np.float64)
        n = np.ceil(extent / spacing - 1e-6).astype(int)
        n = (np.ceil(n / multiple) * multiple).astype(int)
        origin = self.center_lps - direction @ (spacing * (n - 1) / 2.0)
        return Grid(tuple(n), tuple(spacing), tuple(origin), tuple(direction.ravel()))

    def voxels_inside(self, box: Grid, step: int = 1) -> np.ndarray:
        """Read-only mask, shaped like ``array[::step, ::step, ::step]`` of an array on this grid,
        of the voxels whose centres lie within the voxels of ``box`` (edge to edge, 1 um
        tolerance). Cached: live frames on one grid compute it once."""
        return _voxels_inside(self, box, int(step))

    def describe(self) -> str:
        return (
            f"size {self.size}, spacing {tuple(round(s, 4) for s in self.spacing)} mm, "
            f"origin {tuple(round(o, 3) for o in self.origin)}"
        )


@lru_cache(maxsize=16)
def _voxels_inside(grid: Grid, box: Grid, step: int) -> np.ndarray:
    to_box = box.lps_to_index @ grid.index_to_lps
    ijk = np.meshgrid(*[np.arange(0, n, step, dtype=np.float64) for n in grid.size], indexing="ij")  # (i, j, k)
    inside = np.ones(ijk[0].shape, dtype=bool)
    for row in range(3):
        coordinate = sum(to_box[row, a] * ijk[a] for a in range(3)) + to_box[row, 3]
        tolerance = 1e-3 / box.spacing[row]
        inside &= (coordinate >= -0.5 - tolerance) & (coordinate <= box.size[row] - 0.5 + tolerance)
    inside = np.ascontiguousarray(inside.transpose(2, 1, 0))
    inside.setflags(write=False)
    return inside

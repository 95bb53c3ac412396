"""A numpy array together with its physical grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import Grid


@dataclass
class Volume:
    """Image or label data on a :class:`~labelreg.grid.Grid`.

    Attributes:
        array: (nz, ny, nx) for an image, (C, nz, ny, nx) for label channels.
        grid: geometry of the last three axes.
        name: where it came from (a path or a node name), used in error messages.
    """

    array: np.ndarray
    grid: Grid
    name: str = "volume"

    def __post_init__(self):
        if self.array.ndim not in (3, 4):
            raise ValueError(f"{self.name}: expected a 3-D array or (C, z, y, x) channels, got {self.array.shape}")
        if tuple(self.array.shape[-3:]) != self.grid.shape_zyx:
            raise ValueError(f"{self.name}: array shape {self.array.shape} does not match grid {self.grid.shape_zyx}")

    @property
    def channels(self) -> np.ndarray:
        """(C, nz, ny, nx) view (a 3-D image is one channel)."""
        return self.array if self.array.ndim == 4 else self.array[None]

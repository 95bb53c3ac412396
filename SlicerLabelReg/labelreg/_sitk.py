"""SimpleITK, where it is installed. File I/O and the HD95 metric need it; the networks, the
engine and training on a cached data set do not (a GPU machine without SimpleITK can train)."""
from __future__ import annotations

from .errors import LabelRegError

try:
    import SimpleITK as sitk
    available = True
except ImportError:  # pragma: no cover - exercised only where SimpleITK is absent
    available = False

    class _Missing:
        def __getattr__(self, name):
            raise LabelRegError(
                f"SimpleITK is needed for this (SimpleITK.{name}) but is not installed: pip install SimpleITK")

    sitk = _Missing()

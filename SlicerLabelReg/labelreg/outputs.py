"""Output folders: one run's outputs never mix with another's, and a folder that cannot be
written is found before the (slow) registration, not after it."""
from __future__ import annotations

import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from .errors import LabelRegError

#: files ``labelreg register`` and ``labelreg demo`` write (batch.register_to_folder), the
#: batch's table, evaluation's metrics and the Slicer batch script's ``<MR name>-<kind>`` files
OUTPUT_FILES = ("warped_moving.nii.gz", "warped_labels.nii.gz", "displacement.nii.gz", "affine.tfm", "qc.png",
                "registrations.csv", "metrics.csv", "*-affine.h5", "*-deformable.h5", "*-registered.seg.nrrd",
                "*-resampled.nrrd")
#: folders of .nii.gz files we write: {name: its subfolders} (``labelreg batch``; the demo's
#: phantom pair in ``inputs/``, in the public data layout)
OUTPUT_FOLDERS = {"warped_labels": {}, "warped_moving": {}, "ddf": {},
                  "inputs": {"fixed_images": {}, "moving_images": {}, "fixed_labels": {}, "moving_labels": {}}}


def _ours(entry: Path, folders: dict = OUTPUT_FOLDERS) -> bool:
    """Whether ``entry`` is something our tools write (a folder only if all its files are)."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return entry.name in folders and all(
            _ours(child, folders[entry.name]) if child.is_dir() else child.name.endswith(".nii.gz")
            for child in entry.iterdir())
    return any(fnmatch(entry.name, pattern) for pattern in OUTPUT_FILES)


def _listing(entries: list) -> str:
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:4]]
    return ", ".join(names) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")


def prepare_output_dir(path, overwrite: bool = False) -> Path:
    """Create ``path`` if needed and check that it can be written; call before registering.

    A folder holding a previous run's outputs is refused, or with ``overwrite`` emptied of
    them; a folder holding anything our tools do not write is refused either way (nothing of
    the user's is ever deleted). Raises :class:`LabelRegError` naming the folder.
    """
    path = Path(path)
    if path.is_file():
        raise LabelRegError(f"{path}: is a file; give a folder for the outputs")
    entries = sorted(path.iterdir()) if path.is_dir() else []
    foreign = [e for e in entries if not _ours(e)]
    if foreign:
        raise LabelRegError(f"{path}: holds {_listing(foreign)}, not written by labelreg; "
                            "choose an empty output folder")
    if entries and not overwrite:
        raise LabelRegError(f"{path}: not empty (holds {_listing(entries)} from an earlier run); "
                            "choose an empty output folder or pass --overwrite to replace them")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".labelreg-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
        for entry in entries:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except PermissionError:
        raise LabelRegError(f"{path}: cannot write here (permission denied); choose another output folder") from None
    except OSError as exc:
        raise LabelRegError(f"{path}: cannot write here ({exc.strerror or exc}); choose another output folder") from None
    return path

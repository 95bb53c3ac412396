"""Reading and writing images, labels and transforms with SimpleITK, with checks that give
one clear message per bad input, and atomic writes (a file appears whole or not at all)."""
from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import nifti
from ._sitk import sitk
from .errors import LabelRegError
from .grid import Grid
from .volume import Volume

#: refuse images with more voxels than this before reading them (512^3 x 2)
MAX_VOXELS = 2 * 512**3
MAX_CHANNELS = 64


def _read_header(path: Path):
    if not path.exists():
        raise LabelRegError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise LabelRegError(f"{path}: is not a file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise LabelRegError(f"{path}: cannot be read as an image (NIfTI, NRRD, MHA, ...): {first}") from None
    size = reader.GetSize()
    if int(np.prod(size, dtype=np.int64)) * max(1, reader.GetNumberOfComponents()) > MAX_VOXELS:
        raise LabelRegError(
            f"{path}: size {size} is too large (over {MAX_VOXELS} voxels); crop or downsample it first"
        )
    check_nifti_file(path)
    return reader


class _NiftiLayout(NamedTuple):
    """Where a single-file NIfTI-1/2 keeps its voxels, from its header."""

    offset: int  # vox_offset, bytes
    voxels: int  # product of the dimensions
    bitpix: int
    datatype: int  # NIFTI_TYPE_* code
    endian: str  # "<" or ">"

    @property
    def size(self) -> int:
        """vox_offset + data bytes: the smallest complete (uncompressed) file."""
        return self.offset + self.voxels * self.bitpix // 8


#: floating NIFTI_TYPE_* codes -> numpy type (ITK reads their NaN and inf as 0)
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8", 32: "c8", 1792: "c16"}
_CHUNK_BYTES = 1 << 22


def _nifti_layout(head: bytes) -> _NiftiLayout | None:
    """The data layout of a single-file NIfTI-1/2 header, or None if not applicable."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            dims = struct.unpack(endian + "8q", head[16:80])
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or min(dims[1:dims[0] + 1]) < 1:
            return None
        voxels = int(np.prod(dims[1:dims[0] + 1], dtype=np.int64))
        return _NiftiLayout(int(offset), voxels, int(bitpix), int(datatype), endian)
    return None


def check_nifti_file(path) -> None:
    """The checks ITK's NIfTI reader (also Slicer's) skips: a truncated single-file .nii/.nii.gz
    is filled with zeros, and NaN or infinite voxels of a floating-point file are read as 0.
    Other files are left alone; integer NIfTI files cost one header read (plus the gzip trailer)."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            layout = _nifti_layout(f.read(540))
        if layout is None:
            return
        _check_nifti_complete(path, layout)
        if layout.datatype in _NIFTI_FLOAT_TYPES:
            _check_nifti_finite(path, layout, opener)
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise LabelRegError(f"{path}: the file is damaged or truncated ({exc})") from None


def _check_nifti_complete(path: Path, layout: _NiftiLayout) -> None:
    """Compare the data size in the header with the (uncompressed) file size."""
    if path.name.lower().endswith(".gz"):  # the gzip trailer holds the size mod 2**32; count only if it disagrees
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if struct.unpack("<I", f.read(4))[0] == layout.size % 2**32:
                return
        actual = 0
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
                actual += len(chunk)
    else:
        actual = path.stat().st_size
    if actual < layout.size:
        raise LabelRegError(
            f"{path}: the file is truncated ({actual} of {layout.size} bytes); copy or export it again"
        )


def _check_nifti_finite(path: Path, layout: _NiftiLayout, opener) -> None:
    """Stream the raw voxels (a few MB at a time) and refuse NaN or infinite values."""
    dtype = np.dtype(layout.endian + _NIFTI_FLOAT_TYPES[layout.datatype])
    remaining, bad = layout.voxels * dtype.itemsize, 0
    with opener(path, "rb") as f:
        f.seek(layout.offset)
        while remaining > 0:
            chunk = f.read(min(remaining, _CHUNK_BYTES))  # a multiple of every item size
            if not chunk:
                break
            remaining -= len(chunk)
            values = np.frombuffer(chunk, dtype, len(chunk) // dtype.itemsize)
            bad += values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise LabelRegError(
            f"{path}: contains NaN or infinite values ({bad} of {layout.voxels} voxels, which ITK would read "
            "as 0); fix or mask them first"
        )


def _read_pixels(reader, path: Path) -> sitk.Image:
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise LabelRegError(f"{path}: the file is damaged or truncated: {str(exc).strip().splitlines()[-1]}") from None


def read_image(path, role: str = "image") -> Volume:
    """Read a 3-D scalar image as float32; refuse 2-D/4-D, vector, NaN or constant images."""
    path = Path(path)
    reader = _read_header(path)
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 and size[3] == 1:
        dim = 3
    if dim != 3:
        raise LabelRegError(f"{path}: the {role} must be a 3-D volume, this file is {dim}-D with size {size}")
    if reader.GetNumberOfComponents() != 1:
        raise LabelRegError(f"{path}: the {role} must be a scalar (grey-level) volume, not a vector/RGB image")
    image = _read_pixels(reader, path)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    check_image_array(array, f"{path} ({role})")
    return Volume(array, Grid.from_sitk(image), str(path))


def check_image_array(array: np.ndarray, name: str) -> None:
    """Refuse arrays the networks cannot use: non-finite values or no contrast."""
    if min(array.shape) < 2:
        raise LabelRegError(f"{name}: size {array.shape[::-1]} is degenerate; need at least 2 voxels per axis")
    if not np.isfinite(array).all():
        raise LabelRegError(f"{name}: contains NaN or infinite values; fix or mask them first")
    if float(array.max()) - float(array.min()) <= 0:
        raise LabelRegError(f"{name}: is constant (every voxel {float(array.flat[0])}); is it the right file?")


def read_labels(path, reference: Grid, role: str = "labels") -> Volume:
    """Read labels as float32 (C, z, y, x) in [0, 1].

    A 3-D file is one channel (a label map with values 1..N becomes N one-hot channels);
    a 4-D file (x, y, z, C) keeps its channels in order. The grid must match ``reference``.
    """
    path = Path(path)
    reader = _read_header(path)
    image = _read_pixels(reader, path)
    dim = image.GetDimension()
    if dim not in (3, 4) or image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelRegError(f"{path}: {role} must be a 3-D label map or a 4-D (x, y, z, channel) image")
    grid = Grid.from_sitk(image)
    if not grid.same_as(reference):
        raise LabelRegError(
            f"{path}: {role} grid ({grid.describe()}) does not match its image ({reference.describe()}); "
            "labels must be on the same voxels as the image they belong to"
        )
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if not np.isfinite(array).all():
        raise LabelRegError(f"{path}: {role} contain NaN or infinite values")
    if dim == 3:
        values = np.unique(array)
        if values.min() < 0:
            raise LabelRegError(f"{path}: {role} contain negative values")
        if np.all(np.isin(values, np.round(values))) and values.max() > 1:
            array = np.stack([(array == v).astype(np.float32) for v in values[values > 0]])
        else:
            array = array[None]
    if array.shape[0] > MAX_CHANNELS:
        raise LabelRegError(f"{path}: {array.shape[0]} label channels; at most {MAX_CHANNELS} are supported")
    if array.min() < 0 or array.max() > 1:
        raise LabelRegError(f"{path}: {role} values must lie in [0, 1] (one channel per label)")
    empty = [c for c in range(array.shape[0]) if not array[c].any()]
    if empty:
        raise LabelRegError(f"{path}: label channel(s) {empty} are empty; remove them or fix the segmentation")
    return Volume(array, grid, str(path))


def read_label_channels(path, role: str = "labels") -> Volume:
    """Labels for evaluation: like :func:`read_labels` but any grid and empty channels allowed
    (a landmark warped out of view is empty)."""
    path = Path(path)
    image = _read_pixels(_read_header(path), path)
    if image.GetDimension() not in (3, 4) or image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelRegError(f"{path}: {role} must be a 3-D label map or a 4-D (x, y, z, channel) image")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array = array[None] if array.ndim == 3 else array
    if not np.isfinite(array).all() or array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise LabelRegError(f"{path}: {role} values must be finite and lie in [0, 1] (one channel per label)")
    return Volume(array, Grid.from_sitk(image), str(path))


def read_displacement(path) -> tuple:
    """A displacement field file (as :func:`write_displacement` writes it): ((z, y, x, 3) float64
    LPS mm, its Grid)."""
    path = Path(path)
    reader = _read_header(path)
    image = _read_pixels(reader, path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise LabelRegError(f"{path}: a displacement field must be a 3-D image of 3-vectors")
    return sitk.GetArrayFromImage(image).astype(np.float64), Grid.from_sitk(image)


# ------------------------------------------------------------------ writing
class AtomicFile:
    """``with AtomicFile(p) as tmp: write(tmp)`` writes to a temporary file beside ``p`` with
    the same suffix, then renames it over ``p``; on error the temporary file is removed.
    A failure to write (OSError, or SimpleITK's RuntimeError) becomes a :class:`LabelRegError`
    naming ``p``, never the temporary file."""

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = None

    def _error(self, exc) -> LabelRegError:
        lines = str(exc).strip().splitlines()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (lines or [type(exc).__name__])[-1]
        reason = reason.replace(self.tmp, str(self.path)) if self.tmp else reason
        return LabelRegError(f"{self.path}: cannot be written ({reason}); check the folder's permissions and free space")

    def __enter__(self) -> str:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            suffix = "".join(self.path.suffixes) or ".tmp"
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name.split('.')[0]}-", suffix=suffix,
                                            dir=self.path.parent)
            os.close(fd)
        except OSError as exc:
            raise self._error(exc) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
                os.replace(self.tmp, self.path)
                return False
            except OSError as error:
                exc = error
        try:
            os.remove(self.tmp)
        except OSError:
            pass  # already gone, or the folder became unwritable: the error below says why
        if isinstance(exc, (OSError, RuntimeError)):
            raise self._error(exc) from exc
        return False


class SlabWriter:
    """A NIfTI output written a slab at a time, so that it never sits whole in memory:
    ``with SlabWriter(path, grid, dtype, kind, channels) as out: out.write(k0, slab)`` writes
    slabs starting at axial index ``k0``: (z, y, x) for a "scalar" image, (C, z, y, x) for
    "channels", (z, y, x, C) for a "vector" image (the layouts of :func:`read_image`,
    :func:`read_labels` and ``RegistrationResult.ddf_lps``; see :func:`labelreg.nifti.header`)."""

    def __init__(self, path, grid: Grid, dtype=np.float32, kind: str = "scalar", channels: int = 1):
        self.path, self.grid, self.dtype = Path(path), grid, np.dtype(dtype).newbyteorder("<")
        self.kind, self.channels = kind, channels
        self.atomic, self.raw = AtomicFile(path), None

    def __enter__(self):
        self.tmp = self.atomic.__enter__()
        self.compress = self.tmp.lower().endswith(".gz")
        try:
            self.raw_path = self.tmp + ".raw" if self.compress else self.tmp
            self.raw = open(self.raw_path, "wb")
            self.raw.write(nifti.header(self.grid, self.dtype, self.kind, self.channels))
            self.raw.truncate(nifti.VOX_OFFSET + self.channels * int(np.prod(self.grid.size)) * self.dtype.itemsize)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def write(self, k0: int, slab: np.ndarray) -> None:
        """Place ``slab`` (see the class) at axial index ``k0`` of every channel."""
        slab = np.asarray(slab)
        if self.kind == "vector":
            slab = np.moveaxis(slab, -1, 0)
        elif self.kind == "scalar":
            slab = slab[None]
        nz, ny, nx = self.grid.shape_zyx
        if slab.shape[0] != self.channels or slab.shape[2:] != (ny, nx) or k0 + slab.shape[1] > nz:
            raise ValueError(f"{self.path}: slab of shape {slab.shape} at k={k0} does not fit {self.channels} channels "
                             f"of {self.grid.shape_zyx}")
        for c in range(self.channels):
            self.raw.seek(nifti.VOX_OFFSET + ((c * nz + k0) * ny * nx) * self.dtype.itemsize)
            self.raw.write(np.ascontiguousarray(slab[c], dtype=self.dtype).tobytes())

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._abort(exc)
            return False
        try:
            self.raw.close()
            if self.compress:
                nifti.gzip_file(self.raw_path, self.tmp)
                os.remove(self.raw_path)
        except BaseException as error:
            self._abort(error)
            raise
        return self.atomic.__exit__(None, None, None)

    def _abort(self, exc) -> None:
        """Remove every temporary file; an OSError becomes the message naming ``path``."""
        if self.raw is not None:
            self.raw.close()
        if self.compress and os.path.exists(self.raw_path):
            os.remove(self.raw_path)
        self.atomic.__exit__(type(exc), exc, None)


def _write(image: sitk.Image, path) -> Path:
    with AtomicFile(path) as tmp:
        sitk.WriteImage(image, tmp, useCompression=True)
    return Path(path)


def write_image(path, array: np.ndarray, grid: Grid) -> Path:
    """Write a (z, y, x) array on ``grid``, in its own pixel type."""
    if nifti.is_nifti(path):
        with SlabWriter(path, grid, array.dtype) as out:
            out.write(0, array)
        return Path(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    grid.apply_to_sitk(image)
    return _write(image, path)


def write_labels(path, channels: np.ndarray, grid: Grid) -> Path:
    """Write (C, z, y, x) label channels as a 4-D (x, y, z, C) float32 image like the input
    labels (a single channel is written 4-D too, so the channel count is kept)."""
    with labels_writer(path, grid, channels.shape[0]) as out:
        out.write(0, channels)
    return Path(path)


def labels_writer(path, grid: Grid, channels: int) -> SlabWriter:
    """A :class:`SlabWriter` for ``channels`` label channels (NIfTI only)."""
    _check_nifti_output(path)
    return SlabWriter(path, grid, np.float32, "channels", channels)


def write_displacement(path, ddf_lps: np.ndarray, grid: Grid) -> Path:
    """Write a (z, y, x, 3) LPS displacement field (fixed -> moving, mm) as a float64 vector
    image that ``SimpleITK.DisplacementFieldTransform`` (and Slicer) apply directly."""
    with displacement_writer(path, grid) as out:
        out.write(0, ddf_lps)
    return Path(path)


def displacement_writer(path, grid: Grid) -> SlabWriter:
    """A :class:`SlabWriter` for a displacement field (NIfTI only)."""
    _check_nifti_output(path)
    return SlabWriter(path, grid, np.float64, "vector", 3)


def _check_nifti_output(path) -> None:
    if not nifti.is_nifti(path):
        raise LabelRegError(f"{path}: labels and displacement fields are written as NIfTI; name it .nii.gz or .nii")


def affine_to_sitk(affine_lps: np.ndarray) -> sitk.AffineTransform:
    affine_lps = np.asarray(affine_lps, dtype=np.float64)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(affine_lps[:3, :3].ravel().tolist())
    transform.SetTranslation(affine_lps[:3, 3].tolist())
    return transform


def write_affine(path, affine_lps: np.ndarray) -> Path:
    """Write a 4x4 LPS fixed -> moving matrix as an ITK transform file (.tfm / .h5 / .txt)."""
    with AtomicFile(path) as tmp:
        sitk.WriteTransform(affine_to_sitk(affine_lps), tmp)
    return Path(path)

"""The NIfTI-1 format as our outputs use it: the header SimpleITK writes for the same image
(geometry in qform and sform, RAS as NIfTI requires) for a scalar volume, a 4-D stack of label
channels (x, y, z, C) or a vector image (a displacement field, intent "vector"), and chunked
gzip compression. NIfTI stores channels and vector components as the slowest axis, after x, y
and z; :class:`labelreg.io.SlabWriter` writes slabs at their place in every channel."""
from __future__ import annotations

import zlib

import numpy as np

from .grid import Grid

HEADER = np.dtype([
    ("sizeof_hdr", "<i4"), ("data_type", "S10"), ("db_name", "S18"), ("extents", "<i4"),
    ("session_error", "<i2"), ("regular", "S1"), ("dim_info", "u1"), ("dim", "<i2", 8),
    ("intent_p", "<f4", 3), ("intent_code", "<i2"), ("datatype", "<i2"), ("bitpix", "<i2"),
    ("slice_start", "<i2"), ("pixdim", "<f4", 8), ("vox_offset", "<f4"), ("scl_slope", "<f4"),
    ("scl_inter", "<f4"), ("slice_end", "<i2"), ("slice_code", "u1"), ("xyzt_units", "u1"),
    ("cal_max", "<f4"), ("cal_min", "<f4"), ("slice_duration", "<f4"), ("toffset", "<f4"),
    ("glmax", "<i4"), ("glmin", "<i4"), ("descrip", "S80"), ("aux_file", "S24"),
    ("qform_code", "<i2"), ("sform_code", "<i2"), ("quatern", "<f4", 3), ("qoffset", "<f4", 3),
    ("srow", "<f4", (3, 4)), ("intent_name", "S16"), ("magic", "S4"),
])
VOX_OFFSET = 352  # the 348-byte header and 4 bytes saying "no extensions"
DATATYPES = {np.dtype(t): code for t, code in (("u1", 2), ("<i2", 4), ("<i4", 8), ("<f4", 16), ("<f8", 64),
                                                  ("i1", 256), ("<u2", 512), ("<u4", 768),
                                                  ("<i8", 1024), ("<u8", 1280))}
INTENT_VECTOR = 1007
KINDS = ("scalar", "channels", "vector")
UNITS_MM_S = 2 | 8
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
CHUNK_BYTES = 16 << 20


def is_nifti(path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def quaternion(rotation: np.ndarray) -> tuple:
    """NIfTI's (b, c, d, qfac) of a 3x3 orthonormal matrix (``nifti_mat44_to_quatern``)."""
    r = np.array(rotation, dtype=np.float64)
    qfac = 1.0 if np.linalg.det(r) > 0 else -1.0
    r[:, 2] *= qfac
    a = r.trace() + 1.0
    if a > 0.5:
        a = 0.5 * np.sqrt(a)
        b, c, d = 0.25 * (r[2, 1] - r[1, 2]) / a, 0.25 * (r[0, 2] - r[2, 0]) / a, 0.25 * (r[1, 0] - r[0, 1]) / a
    else:
        xd, yd, zd = 1 + r[0, 0] - (r[1, 1] + r[2, 2]), 1 + r[1, 1] - (r[0, 0] + r[2, 2]), 1 + r[2, 2] - (r[0, 0] + r[1, 1])
        if xd > 1.0:
            b = 0.5 * np.sqrt(xd)
            c, d, a = 0.25 * (r[0, 1] + r[1, 0]) / b, 0.25 * (r[0, 2] + r[2, 0]) / b, 0.25 * (r[2, 1] - r[1, 2]) / b
        elif yd > 1.0:
            c = 0.5 * np.sqrt(yd)
            b, d, a = 0.25 * (r[0, 1] + r[1, 0]) / c, 0.25 * (r[1, 2] + r[2, 1]) / c, 0.25 * (r[0, 2] - r[2, 0]) / c
        else:
            d = 0.5 * np.sqrt(zd)
            b, c, a = 0.25 * (r[0, 2] + r[2, 0]) / d, 0.25 * (r[1, 2] + r[2, 1]) / d, 0.25 * (r[1, 0] - r[0, 1]) / d
        if a < 0:
            b, c, d = -b, -c, -d
    return b, c, d, qfac


def header(grid: Grid, dtype, kind: str = "scalar", channels: int = 1) -> bytes:
    """The 352 bytes before the voxels of a ``kind`` of image: "scalar" (3-D), "channels" (4-D,
    x, y, z, C: label channels, 4-D even when C is 1) or "vector" (3-D, ``channels``-vectors:
    dim 5, intent "vector")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    h = np.zeros((), HEADER)
    dims = [3, *grid.size, 1, 1, 1, 1]
    vector = kind == "vector"
    if vector:
        dims[0], dims[5] = 5, channels
    elif kind == "channels":
        dims[0], dims[4] = 4, channels
    h["sizeof_hdr"], h["regular"], h["dim"] = 348, b"r", dims
    h["intent_code"] = INTENT_VECTOR if vector else 0
    h["datatype"], h["bitpix"] = DATATYPES[np.dtype(dtype)], np.dtype(dtype).itemsize * 8
    b, c, d, qfac = quaternion(LPS_TO_RAS @ grid.direction_matrix)
    h["pixdim"] = [qfac, *grid.spacing, 1.0 if dims[0] == 4 else 0.0, 0, 0, 0]
    h["vox_offset"], h["scl_slope"], h["xyzt_units"] = VOX_OFFSET, 1.0, UNITS_MM_S
    h["qform_code"] = h["sform_code"] = 1  # scanner coordinates
    origin_ras = LPS_TO_RAS @ np.asarray(grid.origin)
    h["quatern"], h["qoffset"] = (b, c, d), origin_ras
    h["srow"] = np.hstack([LPS_TO_RAS @ grid.index_to_lps[:3, :3], origin_ras[:, None]])
    h["magic"] = b"n+1"
    return h.tobytes() + b"\0\0\0\0"


def gzip_file(source: str, target: str) -> None:
    """Compress ``source`` into the gzip file ``target`` in chunks (zlib level 1: the size
    SimpleITK's writer gives, in about half its time)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK_BYTES):
            dst.write(packer.compress(chunk))
        dst.write(packer.flush())

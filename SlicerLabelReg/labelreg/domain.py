"""The inputs a model was trained on, and how far a new input lies from them.

A model's metadata records its training domain (:func:`describe_domain`): for each role
("fixed" TRUS, "moving" MR) the voxel spacings and physical extents of the training images,
the field of view its networks see, and the range of the mean normalised intensity, plus the
frame the anatomy was seen in. :func:`check_input` compares one input with it: an input the
networks were not made for registers with a one-line warning (shown by the command line, the
batch CSV and the Slicer results line); one for which a result would be meaningless (a field of
view in the wrong units, say) is refused.
"""
from __future__ import annotations

import numpy as np

from .errors import LabelRegError
from .grid import Grid
from .model import subsample_step

#: spacings this many times finer or coarser than the training images' get a warning
SPACING_FACTOR = 4.0
#: an image covering less than this share of the networks' field of view gets a warning
MIN_FIELD_COVERED = 0.5
#: an image with less than this share of its volume inside the field gets a warning (the
#: networks see only the central field; 1/8: twice the field along every axis)
MIN_IMAGE_SEEN = 0.125
#: beyond this factor (either way) along any axis the image's units are wrong: refused
ABSURD_FACTOR = 20.0


def mean_in_field(normalised: np.ndarray, grid: Grid, field: Grid | None) -> float:
    """Mean of a normalised image over its voxels inside ``field`` (all of them without one)."""
    step = subsample_step(normalised.size)
    values = normalised[::step, ::step, ::step]
    inside = values if field is None else values[grid.voxels_inside(field, step)]
    return float((inside if inside.size else values).mean())


def describe_domain(config, fixed: list, moving: list) -> dict:
    """The training domain of ``config`` (a :class:`~labelreg.model.ModelConfig`) from the
    training images: ``fixed`` and ``moving`` are lists of (array, Grid) pairs."""
    out = {"frame_direction_lps": list(config.frame_direction_lps),
           "frame": "index axes along the patient's right, anterior and superior (RAS)"
           if np.allclose(config.frame_direction_lps, (-1, 0, 0, 0, -1, 0, 0, 0, 1)) else "see frame_direction_lps"}
    for role, images in (("fixed", fixed), ("moving", moving)):
        spacings = np.array([grid.spacing for _, grid in images])
        extents = np.array([grid.extent_along_mm(config.frame) for _, grid in images])
        means = [mean_in_field(config.normalize(array, grid, role), grid, config.field_box(grid, role))
                 for array, grid in images]
        out[role] = {"spacing_mm": [float(spacings.min()), float(spacings.max())],
                     "extent_mm": [extents.min(axis=0).tolist(), extents.max(axis=0).tolist()],
                     "field_mm": list(config.field_mm(role) or extents.max(axis=0)),
                     "normalised_mean": [min(means), max(means)], "images": len(images)}
    return out


def check_input(domain: dict | None, role: str, name: str, grid: Grid, field: Grid | None,
                normalised: np.ndarray) -> list:
    """One-line warnings for an image of ``role`` on ``grid`` far from the training ``domain``
    (none when the model records no domain); raises :class:`LabelRegError` where a result would
    be meaningless. ``field``: the networks' field of view around the image (a one-voxel grid,
    :meth:`~labelreg.model.ModelConfig.field_box`); ``normalised``: the image normalised as the
    networks see it."""
    if not domain or role not in domain or field is None:
        return []
    known, warnings = domain[role], []
    kind = "TRUS" if role == "fixed" else "MR"
    extent = grid.extent_along_mm(field.direction_matrix)
    field_mm = np.asarray(field.spacing)
    described = f"covers {np.round(extent, 1).tolist()} mm"
    if (extent / field_mm).max() > ABSURD_FACTOR or (extent / field_mm).max() < 1 / ABSURD_FACTOR:
        raise LabelRegError(f"{name}: the {kind} {described}, not a prostate {kind} field of view (the model was "
                            f"trained on {np.round(field_mm, 1).tolist()} mm); check the spacing units (mm) in the "
                            "file header")
    step = max(1.0, float(field_mm.min()) / 8)  # the field seen at a few mm, to measure how much the image fills
    covered = field.resampled(step, direction=field.direction_matrix, extent_mm=field_mm).voxels_inside(grid).mean()
    seen = grid.voxels_inside(field, subsample_step(int(np.prod(grid.size)) * 10)).mean()
    if covered < MIN_FIELD_COVERED:
        warnings.append(f"{name}: the {kind} fills only {covered:.0%} of the {np.round(field_mm, 1).tolist()} mm "
                        "field of view the model was trained on; check the result")
    elif seen < MIN_IMAGE_SEEN:
        warnings.append(f"{name}: the {kind} {described}; the networks see its central "
                        f"{np.round(field_mm, 1).tolist()} mm, as in training: crop it around the prostate if the "
                        "gland is off-centre")
    low, high = known["spacing_mm"]
    if min(grid.spacing) * SPACING_FACTOR < low or max(grid.spacing) > high * SPACING_FACTOR:
        warnings.append(f"{name}: voxel spacing {np.round(grid.spacing, 3).tolist()} mm is far from the training "
                        f"images' {low:g}-{high:g} mm; check the result")
    lo, hi = known["normalised_mean"]
    margin, normalised_mean = max(0.1, 0.25 * (hi - lo)), mean_in_field(normalised, grid, field)
    if not lo - margin <= normalised_mean <= hi + margin:
        warnings.append(f"{name}: its intensities are unlike the training {kind} images' (normalised mean "
                        f"{normalised_mean:.2f}, training {lo:.2f}-{hi:.2f}); is it a {kind} image?")
    return warnings

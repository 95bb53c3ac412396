"""Classical baseline with elastix (``itk-elastix``, optional): its default multi-resolution
Mattes mutual information affine, initialised at the volume centres like the networks, then
its default B-spline (16 mm final grid) with the bending-energy penalty.

The result comes back as a SimpleITK displacement-field transform on the fixed grid, so the
labels are warped and scored exactly like the SimpleITK baseline's."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from labelreg._sitk import sitk
from labelreg.errors import LabelRegError


def _itk():
    try:
        import itk
        itk.ElastixRegistrationMethod  # noqa: B018 - the lazy module raises here if elastix is absent
    except (ImportError, AttributeError) as exc:
        raise LabelRegError("The elastix baseline needs itk-elastix: pip install itk-elastix") from exc
    return itk


def parameter_maps(itk, grid_spacing_mm: float = 16.0, iterations: int = 256, bspline: bool = True):
    params = itk.ParameterObject.New()
    affine = params.GetDefaultParameterMap("affine", 3)
    affine["AutomaticTransformInitialization"] = ["true"]
    affine["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
    for p in (affine, params.GetDefaultParameterMap("bspline", 3, grid_spacing_mm)) if bspline else (affine,):
        p["MaximumNumberOfIterations"] = [str(iterations)]
        p["WriteResultImage"] = ["false"]
        params.AddParameterMap(p)
    return params


def register_pair_elastix(fixed_path: Path, moving_path: Path, threads: int = 1,
                          grid_spacing_mm: float = 16.0, iterations: int = 256, bspline: bool = True) -> sitk.Transform:
    """Affine + B-spline by mutual information; returns a fixed-to-moving transform in LPS mm."""
    itk = _itk()
    fixed = itk.imread(str(fixed_path), itk.F)
    moving = itk.imread(str(moving_path), itk.F)
    params = parameter_maps(itk, grid_spacing_mm, iterations, bspline)
    method = itk.ElastixRegistrationMethod.New(fixed, moving)
    method.SetParameterObject(params)
    method.SetNumberOfThreads(threads)
    method.SetLogToConsole(False)
    method.UpdateLargestPossibleRegion()
    with tempfile.TemporaryDirectory() as scratch:  # transformix writes its field to disk too; not into the cwd
        transformix = itk.TransformixFilter.New(moving)
        transformix.SetTransformParameterObject(method.GetTransformParameterObject())
        transformix.SetComputeDeformationField(True)
        transformix.SetOutputDirectory(scratch)
        transformix.SetLogToConsole(False)
        transformix.UpdateLargestPossibleRegion()
        field = transformix.GetOutputDeformationField()
    size = tuple(int(n) for n in itk.size(fixed))
    ddf_mm = np.asarray(itk.array_from_image(field), dtype=np.float64)  # (z, y, x, 3), LPS mm
    if ddf_mm.shape[:3] != size[::-1]:
        raise LabelRegError(f"elastix returned a {ddf_mm.shape[:3]} field for a {size} fixed image")
    image = sitk.GetImageFromArray(ddf_mm, isVector=True)  # on the fixed grid, as transformix computed it
    image.SetSpacing(tuple(field.GetSpacing()))
    image.SetOrigin(tuple(field.GetOrigin()))
    image.SetDirection(itk.array_from_matrix(field.GetDirection()).ravel().tolist())
    return sitk.DisplacementFieldTransform(image)

"""Classical baseline on the same validation pairs: SimpleITK Mattes mutual information,
affine (initialised by volume centres, like the networks) followed by a B-spline, multi-resolution.
The labels are warped with the resulting transform and scored with the same metrics."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from labelreg.metrics import evaluate_pair, format_metrics, summarize

from .data import case_names, kfold_by_subject, read_subjects, resolve_data_dir


def _method(transform, fixed, iterations: int, shrink=(4, 2, 1), smooth=(2, 1, 0), bspline=False):
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    if bspline:
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations)
    else:
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                     gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(transform, inPlace=True)
    return reg


def register_pair(fixed: sitk.Image, moving: sitk.Image, mesh: int = 5, iterations: int = 100) -> sitk.Transform:
    """Affine then B-spline (on top of the affine), both by mutual information."""
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    affine = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                               sitk.CenteredTransformInitializerFilter.GEOMETRY)
    affine = sitk.AffineTransform(affine)
    _method(affine, fixed, iterations).Execute(fixed, moving)
    bspline = sitk.BSplineTransformInitializer(fixed, [mesh] * 3, order=3)
    reg = _method(bspline, fixed, iterations, shrink=(2, 1), smooth=(1, 0), bspline=True)
    reg.SetMovingInitialTransform(affine)
    reg.Execute(fixed, moving)
    return sitk.CompositeTransform([affine, bspline])


def run_baseline(args) -> int:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    data_dir = resolve_data_dir(args.data)
    names = case_names(data_dir)
    if args.folds > 1:
        _, names = kfold_by_subject(read_subjects(data_dir, names), args.folds, args.fold, args.seed)
    if args.limit:
        names = names[: args.limit]
    from labelreg.grid import Grid
    rows = []
    for n in names:
        fixed = sitk.ReadImage(str(data_dir / "fixed_images" / f"{n}.nii.gz"))
        moving = sitk.ReadImage(str(data_dir / "moving_images" / f"{n}.nii.gz"))
        fixed_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "fixed_labels" / f"{n}.nii.gz")))
        moving_labels = sitk.ReadImage(str(data_dir / "moving_labels" / f"{n}.nii.gz"))
        start = time.perf_counter()
        transform = register_pair(fixed, moving)
        seconds = time.perf_counter() - start
        warped = []
        for c in range(moving_labels.GetSize()[3]):
            channel = sitk.Extract(moving_labels, list(moving_labels.GetSize()[:3]) + [0], [0, 0, 0, c])
            warped.append(sitk.GetArrayFromImage(sitk.Resample(channel, fixed, transform, sitk.sitkLinear, 0.0)))
        ddf = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection()))
        row = evaluate_pair(np.stack(warped), fixed_labels, Grid.from_sitk(fixed), ddf)
        rows.append({"case": n, "seconds": seconds, **row})
        print(f"{n}: {format_metrics(row)}, {seconds:.1f} s", flush=True)
    summary = summarize(rows)
    summary["seconds_per_pair"] = float(np.mean([r["seconds"] for r in rows]))
    print(f"SimpleITK MI affine + B-spline on {len(rows)} cases: {format_metrics(summary)}, "
          f"{summary['seconds_per_pair']:.1f} s/pair ({args.threads} threads)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"mode": "simpleitk-mi-affine-bspline", "fold": args.fold,
                                               "summary": summary, "rows": rows}, indent=2, default=float))
    return 0

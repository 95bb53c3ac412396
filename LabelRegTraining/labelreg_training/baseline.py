"""Classical baselines on the same validation pairs: SimpleITK Mattes mutual information,
rigid or affine (initialised by volume centres, like the networks) followed by a B-spline,
multi-resolution; or elastix's defaults (``--method elastix``, see ``elastix_baseline``).
The labels are warped with the resulting transform and scored with the same metrics."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from labelreg.metrics import evaluate_pair, format_metrics, summarize

from .data import validation_cases
from .elastix_baseline import register_pair_elastix


def _method(transform, fixed, iterations: int, shrink=(4, 2, 1), smooth=(2, 1, 0), bspline=False):
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    # steps bounded in mm (scales from physical shift): at most 1 mm per iteration, 0.5 mm for the B-spline,
    # which has no smoothness penalty in SimpleITK and otherwise folds while matching speckle
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=0.5 if bspline else 1.0, minStep=1e-3,
                                                 numberOfIterations=iterations, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(transform, inPlace=True)
    return reg


def register_pair(fixed: sitk.Image, moving: sitk.Image, linear: str = "rigid", mesh: int = 3,
                  iterations: int = 200, bspline_iterations: int = 30) -> sitk.Transform:
    """A linear stage (``"rigid"``: Euler 3-D, or ``"affine"``), initialised by volume centres,
    then a B-spline on top of it; both by mutual information, multi-resolution.

    Plain MI affine registration of these MR/TRUS pairs often degenerates (scales of 1.8 and
    0.03 were seen); the rigid stage is the constrained affine that behaves."""
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    start = sitk.Euler3DTransform() if linear == "rigid" else sitk.AffineTransform(3)
    init = sitk.CenteredTransformInitializer(fixed, moving, start, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    transform = sitk.Euler3DTransform(init) if linear == "rigid" else sitk.AffineTransform(init)
    _method(transform, fixed, iterations).Execute(fixed, moving)
    if not bspline_iterations:
        return transform
    bspline = sitk.BSplineTransformInitializer(fixed, [mesh] * 3, order=3)
    reg = _method(bspline, fixed, bspline_iterations, shrink=(2, 1), smooth=(1, 0), bspline=True)
    reg.SetMovingInitialTransform(transform)
    reg.Execute(fixed, moving)
    return sitk.CompositeTransform([transform, bspline])


def run_baseline(args) -> int:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    data_dir, names = validation_cases(args.data, args.folds, args.fold, args.seed)
    if args.limit:
        names = names[: args.limit]
    from labelreg.grid import Grid
    rows = []
    for n in names:
        fixed_path, moving_path = data_dir / "fixed_images" / f"{n}.nii.gz", data_dir / "moving_images" / f"{n}.nii.gz"
        fixed = sitk.ReadImage(str(fixed_path))
        moving = sitk.ReadImage(str(moving_path)) if args.method == "simpleitk" else None  # elastix reads its own
        fixed_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "fixed_labels" / f"{n}.nii.gz")))
        moving_labels = sitk.ReadImage(str(data_dir / "moving_labels" / f"{n}.nii.gz"))
        start, cpu_start = time.perf_counter(), time.process_time()
        if args.method == "elastix":
            transform = register_pair_elastix(fixed_path, moving_path, args.threads)
        else:
            transform = register_pair(fixed, moving, args.linear)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        warped = []
        for c in range(moving_labels.GetSize()[3]):
            channel = sitk.Extract(moving_labels, list(moving_labels.GetSize()[:3]) + [0], [0, 0, 0, c])
            warped.append(sitk.GetArrayFromImage(sitk.Resample(channel, fixed, transform, sitk.sitkLinear, 0.0)))
        ddf = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection()))
        row = evaluate_pair(np.stack(warped), fixed_labels, Grid.from_sitk(fixed), ddf)
        rows.append({"case": n, "seconds": seconds, "cpu_seconds": cpu_seconds, **row})
        print(f"{n}: {format_metrics(row)}, {seconds:.1f} s", flush=True)
    summary = summarize(rows)
    name, mode = (("elastix MI affine + B-spline", "elastix-mi-affine-bspline") if args.method == "elastix" else
                  (f"SimpleITK MI {args.linear} + B-spline", f"simpleitk-mi-{args.linear}-bspline"))
    summary["seconds_per_pair"] = float(np.mean([r["seconds"] for r in rows]))
    summary["cpu_seconds_per_pair"] = float(np.mean([r["cpu_seconds"] for r in rows]))
    print(f"{name} on {len(rows)} cases: {format_metrics(summary)}, "
          f"{summary['seconds_per_pair']:.1f} s/pair, {summary['cpu_seconds_per_pair']:.1f} CPU s/pair "
          f"({args.threads} threads)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"mode": mode, "label": args.label, "fold": args.fold,
                                               "summary": summary, "rows": rows}, indent=2, default=float))
    return 0

"""Memory benchmark (not a test): peak memory of one ``labelreg register`` process as the
fixed (TRUS) image grows, against a reference process measured in the same run.

    python benchmarks/memory.py [--spacings 1.5 0.3 0.2] [--large] [--threads 2]

The bundled sample pair's TRUS is resampled (same physical image, uint8) to each spacing and
registered with the bundled model and the pair's moving labels into a fresh folder. The
reference process imports the library and loads the model, nothing else; every figure is
printed also as the extra memory over the reference per fixed voxel. ``--large`` adds a
512 x 512 x 512 fixed image (about 1.5 minutes; its target is a peak under about 1.5 GB).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from child_process import run_measured
from labelreg import resources

REFERENCE = "from labelreg.engine import RegistrationEngine; RegistrationEngine(None, 'cpu')"


def fixed_image(folder: Path, spacing_mm=None, size=None) -> tuple:
    """The sample TRUS resampled to ``spacing_mm`` (isotropic) or to ``size`` voxels over the
    same box; returns (path, voxel count)."""
    image = sitk.ReadImage(str(resources.sample_pair_file("fixed_images")))
    box = np.multiply(image.GetSize(), image.GetSpacing())
    size = size or [round(b / spacing_mm) for b in box]
    spacing = [b / n for b, n in zip(box, size)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                        image.GetDirection(), 0, sitk.sitkUInt8)
    path = folder / f"trus_{'x'.join(map(str, size))}.nii.gz"
    sitk.WriteImage(out, str(path), useCompression=True)
    return path, int(np.prod(size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.5, 0.3, 0.2])
    parser.add_argument("--large", action="store_true", help="also a 512^3 fixed image")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    labelreg = Path(sys.executable).with_name("labelreg")
    _, reference = run_measured([sys.executable, "-c", REFERENCE])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; reference (import + load the model): "
          f"{reference:.0f} MB")
    print(f"{'fixed image':>22s} {'voxels':>8s} {'peak MB':>8s} {'x ref':>6s} {'B/voxel over ref':>17s} {'seconds':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = [fixed_image(tmp, spacing_mm=s) for s in args.spacings]
        if args.large:
            cases.append(fixed_image(tmp, size=[512, 512, 512]))
        for index, (path, voxels) in enumerate(cases):
            command = [str(labelreg), "register", "--fixed", str(path),
                       "--moving", str(resources.sample_pair_file("moving_images")),
                       "--moving-labels", str(resources.sample_pair_file("moving_labels")),
                       "--output-dir", str(tmp / f"out{index}"), "--threads", str(args.threads)]
            seconds, peak = run_measured(command)
            size = path.name[len("trus_"):-len(".nii.gz")]
            print(f"{size:>22s} {voxels / 1e6:7.1f}M {peak:8.0f} {peak / reference:6.2f} "
                  f"{(peak - reference) * 2**20 / voxels:17.1f} {seconds:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

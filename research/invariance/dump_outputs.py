"""Dump the bundled model's outputs on all 81 pairs (affine, initial alignment, displacement
field, warped labels) to compare two versions of the code (2026-12-02: before and after the
model frame: largest difference 0.0).

    python research/invariance/dump_outputs.py ../shared/data/mrus OUT.npy
"""
import sys
from pathlib import Path

import numpy as np
import torch
from labelreg.engine import RegistrationEngine
from labelreg.io import read_image, read_labels

torch.set_num_threads(2)
data, out_path = Path(sys.argv[1]), sys.argv[2]
engine = RegistrationEngine(None, "cpu")
out = {}
for n in sorted(p.name[:-7] for p in (data / "fixed_images").glob("*.nii.gz")):
    fixed = read_image(data / "fixed_images" / f"{n}.nii.gz")
    moving = read_image(data / "moving_images" / f"{n}.nii.gz")
    result = engine.register(fixed, moving, read_labels(data / "moving_labels" / f"{n}.nii.gz", moving.grid))
    out[n] = {"affine": result.affine_lps, "initial": result.initial_lps, "ddf": result.ddf_lps,
              "labels": result.warped_labels}
np.save(out_path, out, allow_pickle=True)
print("saved", len(out))

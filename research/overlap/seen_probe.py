"""Probe: the best-overlap gland alignment counting only the frame-grid voxels the TRUS image
covers (labelreg.overlap's ``fixed_seen``) vs all of them, on the bundled model's validation
pairs as stored and re-stored (oblique, 1 mm): TRE/Dice and agreement with the as-stored result.

    python research/overlap/seen_probe.py DATA

Ran (2026-12-02) with a ``fixed_seen`` mask parameter of ``overlap_translation_lps`` that was
removed after this measurement (output: seen_probe.txt): counting only covered voxels left the
oblique and 1 mm worst cases unchanged (obs070: agreement 0.851, 4.73 mm), made the padded
variant worse (0.977 / 0.91 mm against 0.997 / 0.65 mm) and the as-stored median TRE worse
(5.21 against 5.10 mm). The frame-grid corners are not what moves obs070's alignment.
"""
import statistics
import sys

import numpy as np
import torch
from labelreg import model as model_module
from labelreg import resources, storage
from labelreg.engine import RegistrationEngine
from labelreg.io import read_image, read_labels
from labelreg.metrics import evaluate_pair
from labelreg.model_io import read_metadata
from labelreg.volume import Volume

original = model_module.RegistrationModel.gland_centroids_lps


def seen_only(self, fixed, fixed_grid, moving, moving_grid, gland_maps=None):
    (fixed_p, fixed_g), (moving_p, moving_g) = gland_maps or self.gland_maps(fixed, fixed_grid, moving, moving_grid)
    covered = torch.from_numpy(fixed_g.voxels_inside(fixed_grid).astype(np.float32))
    fixed_p = fixed_p * covered
    fixed_c, fixed_found = model_module.probability_centroid_lps(fixed_p, fixed_g)
    moving_c, moving_found = model_module.probability_centroid_lps(moving_p, moving_g)
    moving_c = fixed_c + model_module.overlap_translation_lps(fixed_p, fixed_g, moving_p, moving_g, moving_c - fixed_c,
                                                              self.config.overlap_radius_mm, covered)
    return fixed_c, moving_c, fixed_found & moving_found


data = sys.argv[1]
cases = read_metadata(resources.BUNDLED_MODEL_FILE)["split"]["val_cases"]
pairs = []
for n in cases:
    fixed = read_image(f"{data}/fixed_images/{n}.nii.gz")
    moving = read_image(f"{data}/moving_images/{n}.nii.gz")
    pairs.append((n, fixed, moving, read_labels(f"{data}/moving_labels/{n}.nii.gz", moving.grid),
                  read_labels(f"{data}/fixed_labels/{n}.nii.gz", fixed.grid)))
engine = RegistrationEngine(None, "cpu")
variants = {"as stored": None, **{k: storage.PAIR_VARIANTS[k] for k in storage.PAIR_VARIANTS
                                  if "oblique" in k or "1.0" in k or "pad" in k}}
for label, method in (("all voxels", original), ("covered only", seen_only)):
    model_module.RegistrationModel.gland_centroids_lps = method
    reference = {}
    for name, variant in variants.items():
        tre, dices, agree, shifts = [], [], [], []
        for case, fixed, moving, labels, fixed_labels in pairs:
            f, m, ml = (fixed, moving, labels) if variant is None else variant(fixed, moving, labels)
            result = engine.register(f, m, ml)
            warped = Volume(result.warped_labels, result.fixed_grid, case)
            row = evaluate_pair(storage.resampled_on(warped, fixed.grid).array, fixed_labels.channels, fixed.grid,
                                hd95=False)
            tre += [t for t in row["tre_mm"] if not np.isnan(t)]
            dices.append(row["dice"])
            if variant is None:
                reference[case] = warped
                continue
            a = storage.agreement(warped, reference[case])
            agree.append(a["gland_dice"])
            shifts.append(a["landmark_shift_mm"])
        line = f"{label:13s} {name:40s} TRE {statistics.median(tre):5.2f} Dice {statistics.median(dices):.3f}"
        if agree:
            line += f"  agree {statistics.median(agree):.3f} / {min(agree):.3f}  shift max {max(shifts):.2f}"
        print(line, flush=True)

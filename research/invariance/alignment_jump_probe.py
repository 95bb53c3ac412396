"""Which validation pairs move when re-stored with resampling: the gland alignment (initial) and
the affine, as stored against re-stored (2026-12-02: obs070 by 3.6 mm, its overlap has two peaks).

    python research/invariance/alignment_jump_probe.py ../shared/data/mrus
"""
import sys

import numpy as np
import torch
from labelreg import storage
from labelreg.engine import RegistrationEngine
from labelreg.model_io import read_metadata
from labelreg.resources import BUNDLED_MODEL_FILE as BUNDLED_MODEL

sys.path.insert(0, "benchmarks")
from storage_invariance import load_cases

torch.set_num_threads(2)
engine = RegistrationEngine(BUNDLED_MODEL, "cpu")
pairs = load_cases(sys.argv[1], read_metadata(BUNDLED_MODEL)["split"]["val_cases"])
for variant in ("1.0 mm isotropic", "oblique, 25 degrees"):
    for case, fixed, moving, labels, _ in pairs:
        stored = engine.register(fixed, moving, labels, mode="affine")
        restored = engine.register(*storage.PAIR_VARIANTS[variant](fixed, moving, labels), mode="affine")
        initial = np.abs(stored.initial_lps - restored.initial_lps)[:3, 3].max()
        affine = np.abs(stored.affine_lps - restored.affine_lps)[:3, 3].max()
        if initial > 0.5 or affine > 1:
            print(variant, case, "initial", initial.round(2), "affine", affine.round(2))

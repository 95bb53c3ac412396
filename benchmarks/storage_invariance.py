"""Storage invariance (not a test): the same physical pairs stored other ways, registered with
the bundled model, against the pairs as the data set stores them.

    python benchmarks/storage_invariance.py [--data /path/to/mrus] [--cases obs003 obs012 ...]
        [--model model.pt] [--threads 2]

Default cases: the bundled model's validation cases (never seen in its training) when the data
set is given, else the bundled sample pair. For each storage variant (both images re-stored
unless the name says otherwise) it prints the median landmark TRE and gland Dice against the
TRUS labels, and the agreement with the registration of the pairs as stored: the median and
worst warped-gland Dice against that result, and the largest landmark-centroid shift (mm).
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import torch
from labelreg import resources, storage
from labelreg.engine import RegistrationEngine
from labelreg.io import read_image, read_labels
from labelreg.metrics import evaluate_pair
from labelreg.model_io import read_metadata
from labelreg.volume import Volume


def load_cases(data, cases):
    data = Path(data)
    out = []
    for n in cases:
        fixed = read_image(data / "fixed_images" / f"{n}.nii.gz", "fixed image")
        moving = read_image(data / "moving_images" / f"{n}.nii.gz", "moving image")
        out.append((n, fixed, moving, read_labels(data / "moving_labels" / f"{n}.nii.gz", moving.grid),
                    read_labels(data / "fixed_labels" / f"{n}.nii.gz", fixed.grid)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("LABELREG_DATA"))
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--model", default=str(resources.BUNDLED_MODEL_FILE))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = args.data or resources.SAMPLE_PAIR_DIR
    cases = args.cases or (read_metadata(args.model)["split"]["val_cases"] if args.data else [resources.SAMPLE_PAIR_NAME])
    pairs = load_cases(data, cases)
    engine = RegistrationEngine(args.model, "cpu")
    reference = {}
    print(f"{len(pairs)} pairs from {data}; model {args.model}")
    print(f"{'storage':42s} {'TRE med':>8s} {'Dice med':>8s} {'agree Dice med/min':>19s} {'shift max':>9s}")
    for name, variant in [("as stored", None)] + list(storage.PAIR_VARIANTS.items()):
        tre, dices, agree, shifts = [], [], [], []
        for case, fixed, moving, labels, fixed_labels in pairs:
            f, m, ml = (fixed, moving, labels) if variant is None else variant(fixed, moving, labels)
            result = engine.register(f, m, ml)
            warped = Volume(result.warped_labels, result.fixed_grid, case)
            on_fixed = storage.resampled_on(warped, fixed.grid)  # judged on the data set's own TRUS grid
            row = evaluate_pair(on_fixed.array, fixed_labels.channels, fixed.grid, hd95=False)
            tre += [t for t in row["tre_mm"] if not np.isnan(t)]
            dices.append(row["dice"])
            if variant is None:
                reference[case] = warped
                continue
            a = storage.agreement(warped, reference[case])
            agree.append(a["gland_dice"])
            shifts.append(a["landmark_shift_mm"])
        line = f"{name:42s} {statistics.median(tre):8.2f} {statistics.median(dices):8.3f}"
        if agree:
            line += f" {statistics.median(agree):9.3f} / {min(agree):.3f} {max(shifts):9.2f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Probe: how do pairs whose TRUS gland is cut by the TRUS field of view fare? A pair counts as cut
when its TRUS gland label touches a face of the TRUS volume. Prints, for each method (evaluation
JSON files grouped by label, as ``labelreg-train report``), the median landmark TRE and gland Dice
of the cut pairs and of the others, then the cut pairs' names.

    python research/scripts/field_of_view_split.py DATA EVAL.json [EVAL.json ...]
"""
import argparse

import numpy as np
from labelreg_training.compare import load_groups
from labelreg_training.data import validation_cases
from labelreg_training.evaluate import gland_cut_by_field_of_view, load_pairs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    data_dir, names = validation_cases(args.data, 1, 0)  # every case
    cut = {}
    for name, _, _, _, fixed_labels in load_pairs(data_dir, names):
        cut[name] = gland_cut_by_field_of_view(fixed_labels)
    for label, blobs in load_groups(args.files).items():
        rows = [r for b in blobs for r in b["rows"]]
        for flag, where in ((True, "cut by"), (False, "inside")):
            chosen = [r for r in rows if cut[r["case"]] == flag]
            tre = [t for r in chosen for t in r["tre_mm"]]
            print(f"{label}: TRUS gland {where} the field of view: {len(chosen)} pairs, TRE median "
                  f"{np.median(tre):.2f} mm, Dice median {np.median([r['dice'] for r in chosen]):.3f}")
    print("cut pairs:", " ".join(sorted(c for c in cut if cut[c])))


if __name__ == "__main__":
    main()

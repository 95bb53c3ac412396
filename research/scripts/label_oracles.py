"""How far a transform of a given kind can take the pairs when it is fitted on the labels
themselves (an upper bound for a network of that kind, not a method).

For each pair, the centroids (LPS, mm) of every label channel in both images:

* ``centre``: volume centres aligned (the reference initial alignment);
* ``gland centroid``: the translation that puts the MR gland centroid on the TRUS gland centroid;
* ``gland centroid + volume scale``: the same, then an isotropic scale about the gland centroid
  by the cube root of the gland volume ratio (what two gland segmentations alone could give);
* ``similarity, leave one out``: for each landmark, a rotation + isotropic scale + translation
  (Umeyama) fitted on the gland centroid and the *other* landmarks (3+ points needed,
  otherwise the gland translation), evaluated on the held-out landmark.

    usage: python research/scripts/label_oracles.py DATA_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from labelreg.io import read_image, read_labels
from labelreg.metrics import centroid_lps


def centroids_lps(data: Path, role: str, name: str):
    """(centroid of every label channel, volume centre, gland volume in mm³), LPS mm, of one image of a pair."""
    image = read_image(data / f"{role}_images" / name, f"{role} image")
    labels = read_labels(data / f"{role}_labels" / name, image.grid, f"{role} labels")
    gland_mm3 = float((labels.array[0] > 0.5).sum()) * float(np.prod(image.grid.spacing))
    return np.array([centroid_lps(c, image.grid) for c in labels.array]), image.grid.center_lps, gland_mm3


def similarity(src: np.ndarray, dst: np.ndarray):
    """Umeyama: dst ~ s R src + t."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    sign = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / a.var(0).sum()
    return lambda x: scale * (x @ rotation.T) + mu_d - scale * (mu_s @ rotation.T)


def main(data: Path) -> int:
    errors = {"centre": [], "gland centroid": [], "gland centroid + volume scale": [], "similarity, leave one out": []}
    for fixed_path in sorted((data / "fixed_labels").glob("*.nii.gz")):
        fixed, fixed_centre, fixed_mm3 = centroids_lps(data, "fixed", fixed_path.name)
        moving, moving_centre, moving_mm3 = centroids_lps(data, "moving", fixed_path.name)
        scale = (moving_mm3 / fixed_mm3) ** (1 / 3)
        # every transform maps TRUS (fixed) points to MR (moving) points; TRE in the fixed frame
        # equals the moving-frame distance here because all fitted maps are near-isometries
        for lm in range(1, len(fixed)):
            errors["centre"].append(np.linalg.norm(fixed[lm] - fixed_centre + moving_centre - moving[lm]))
            errors["gland centroid"].append(np.linalg.norm(fixed[lm] - fixed[0] + moving[0] - moving[lm]))
            errors["gland centroid + volume scale"].append(
                np.linalg.norm(scale * (fixed[lm] - fixed[0]) + moving[0] - moving[lm]))
            others = [c for c in range(len(fixed)) if c != lm]
            if len(others) >= 3:
                fit = similarity(fixed[others], moving[others])
                errors["similarity, leave one out"].append(np.linalg.norm(fit(fixed[lm]) - moving[lm]))
            else:
                errors["similarity, leave one out"].append(errors["gland centroid"][-1])
    print(f"{len(errors['centre'])} landmarks")
    print("| oracle (fitted on labels) | TRE median (mm) | TRE p90 (mm) |\n|---|---|---|")
    for name, e in errors.items():
        print(f"| {name} | {np.median(e):.2f} | {np.percentile(e, 90):.2f} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))

"""Issue 25, confidence: does the model's instability under a small rigid move of the MR predict a
wrong registration? A label-free candidate feature that the gland features (research/confidence/
calibration.txt: AUC 0.65 in sample, 0.40 out of fold) do not capture.

For each validation pair of each fold model: register it as stored, then K times with the MR
moved rigidly in space (its header only: rotation up to ROTATION_DEG about its centre, translation
up to TRANSLATION_MM). Each result, brought back through the known move, maps the TRUS gland
(the TRUS localiser's map > 0.5) into the original MR; a model that were exactly equivariant would
map it identically each time. Features: the mean over the gland of the RMS distance between the
perturbed and the stored mappings (``perturbation_rms_mm``), and its 90th percentile.

    python research/confidence/perturbation_probe.py DATA OUT.csv ROWS.csv FOLD=MODEL.pt [...]

ROWS.csv: the calibration rows (``research/confidence/cv_rows.csv``: case, fold, tre_mean_mm,
dice and the product's features), joined by case; prints each feature's Spearman correlation
with the mean TRE and its AUC for the pairs with mean TRE > 8 mm.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from labelreg.engine import RegistrationEngine
from labelreg.grid import Grid
from labelreg.io import read_image
from labelreg.model_io import read_metadata
from labelreg.transforms import transform_points
from labelreg.volume import Volume
from labelreg.warp import sample_field
from labelreg_training.evaluate import predicted_gland_maps

K = 4
ROTATION_DEG = 5.0
TRANSLATION_MM = 4.0
BAD_MM = 8.0


def rigid(gen: np.random.Generator) -> np.ndarray:
    """(4, 4) a random rotation (up to ROTATION_DEG about a random axis) and translation."""
    axis = gen.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(gen.uniform(-ROTATION_DEG, ROTATION_DEG))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    out = np.eye(4)
    out[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    out[:3, 3] = gen.uniform(-TRANSLATION_MM, TRANSLATION_MM, size=3)
    return out


def moved(volume: Volume, move: np.ndarray) -> Volume:
    """The same voxels placed at ``move`` (about the volume's centre) in space."""
    grid, c = volume.grid, volume.grid.center_lps
    direction = move[:3, :3] @ grid.direction_matrix
    origin = c + move[:3, :3] @ (np.asarray(grid.origin) - c) + move[:3, 3]
    return Volume(volume.array, Grid(grid.size, grid.spacing, tuple(origin), tuple(direction.ravel())), volume.name)


def mapped(result, points: torch.Tensor) -> torch.Tensor:
    """(N, 3) where the registration takes the fixed points (N, 3)."""
    t = result.transform
    grid_points = points[:, None, None, :]
    local = None if t.ddf_net_lps is None else sample_field(t.ddf_net_lps, t.net_grid, grid_points)
    return transform_points(t.affine_lps[None], grid_points, local)[0, :, 0, 0]


def features(engine, fixed: Volume, moving: Volume, seed: int) -> dict:
    (fixed_p, fixed_g), _ = predicted_gland_maps(engine.model, fixed, moving)
    inside = fixed_p[0, 0] > 0.5
    points = fixed_g.points_lps()[inside] if inside.any() else fixed_g.points_lps().reshape(-1, 3)
    base = mapped(engine.register(fixed, moving, outputs=False), points)
    gen = np.random.default_rng(seed)
    squared = torch.zeros(points.shape[0])
    for _ in range(K):
        move = rigid(gen)
        y = mapped(engine.register(fixed, moved(moving, move), outputs=False), points)
        # the move is y = c + R (x - c) + t: back to the stored MR, x = c + R^T (y - c - t)
        c, r, t = (torch.as_tensor(a, dtype=torch.float32) for a in (moving.grid.center_lps, move[:3, :3], move[:3, 3]))
        y = (y - c - t) @ r + c
        squared += ((y - base) ** 2).sum(-1)
    rms = (squared / K).sqrt()
    return {"perturbation_rms_mm": float(rms.mean()), "perturbation_p90_mm": float(rms.quantile(0.9))}


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def auc(good_score, bad) -> float:
    pos, neg = good_score[~bad], good_score[bad]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


if __name__ == "__main__":
    data, out, rows_csv = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    with open(rows_csv, newline="") as f:
        known = {r["case"]: r for r in csv.DictReader(f)}
    rows = []
    for spec in sys.argv[4:]:
        fold, path = spec.split("=", 1)
        engine = RegistrationEngine(path, "cpu")
        for i, case in enumerate(read_metadata(path)["split"]["val_cases"]):
            fixed = read_image(data / "fixed_images" / f"{case}.nii.gz")
            moving = read_image(data / "moving_images" / f"{case}.nii.gz")
            row = {**known[case], **features(engine, fixed, moving, seed=i)}
            rows.append(row)
            print(case, fold, f"{float(row['tre_mean_mm']):.2f}", f"{row['perturbation_rms_mm']:.2f}", flush=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tre = np.array([float(r["tre_mean_mm"]) for r in rows])
    bad = tre > BAD_MM
    print(f"{len(rows)} pairs, {int(bad.sum())} with mean TRE > {BAD_MM:g} mm")
    for key in [k for k in rows[0] if k not in ("case", "fold", "tre_mean_mm")]:
        v = np.array([float(r[key]) for r in rows])
        sign = -1.0 if key.startswith("perturbation") or key.endswith("_ml") or key == "gland_at_border" else 1.0
        print(f"{key:22s} Spearman with mean TRE {spearman(v, tre):+.2f}; AUC for > {BAD_MM:g} mm "
              f"{auc(sign * v, bad):.2f} ({'low' if sign < 0 else 'high'} = good)")

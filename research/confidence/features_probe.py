"""Candidate label-free confidence features of each registration, and the pair's true error,
for every validation pair of every fold model (each pair scored by the model that never saw its
subject).

    python research/confidence/features_probe.py DATA OUT.csv FOLD=MODEL.pt [FOLD=MODEL.pt ...]

Columns: case, fold, tre_mean_mm (mean landmark TRE after registration), dice (gland, after), and
features computed from what inference already has:
- agree_soft / agree_hard: Dice between the TRUS localiser's gland map and the MR localiser's gland
  map carried by the final transform onto the TRUS localiser grid (soft; both thresholded at 0.5);
- overlap_peak: the best soft Dice of the overlap search; overlap_runner_up: the best score at
  least 6 mm from that peak within the search block (two near-equal peaks: an ambiguous alignment);
- fixed_volume_ml / moving_volume_ml / volume_ratio: the two predicted glands' volumes (p > 0.5);
- fixed_edge_fraction: share of the TRUS gland (p > 0.5) within 3 mm of the TRUS image's border
  (a gland the field of view cuts);
- fixed_confident / moving_confident: mean of |2p - 1| over voxels where p > 0.1 (the
  localisers' own certainty);
- local_max_mm / local_mean_mm: the local net's displacement, largest and mean over the TRUS gland.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch
from labelreg.engine import RegistrationEngine
from labelreg.io import read_image, read_labels
from labelreg.metrics import evaluate_pair
from labelreg.model_io import read_metadata
from labelreg.volume import Volume
from labelreg.warp import sample

RUNNER_UP_MM = 6.0
EDGE_MM = 3.0


def overlap_scores(fixed_p, fixed_grid, moving_p, moving_grid, start_lps, radius_mm):
    """The soft-Dice block of labelreg.overlap (same computation), (z, y, x) over the lags, and
    the lags' spacing per axis."""
    import labelreg.overlap as ov

    captured = {}
    original = ov._vertex

    def keep(scores, best):
        captured["scores"], captured["best"] = scores[0].clone(), best[0].clone()
        return original(scores, best)

    ov._vertex = keep
    try:
        ov.overlap_translation_lps(fixed_p, fixed_grid, moving_p, moving_grid, start_lps, radius_mm)
    finally:
        ov._vertex = original
    return captured["scores"], captured["best"]


def features(engine, fixed: Volume, moving: Volume, labels: Volume, fixed_labels: Volume) -> dict:
    model = engine.model
    with torch.inference_mode():
        fixed_t, moving_t, _ = engine._normalised([(fixed, moving, labels)])
        (fixed_p, fixed_g), (moving_p, moving_g) = model.gland_maps(fixed_t, fixed.grid, moving_t, moving.grid)
        result = engine.register(fixed, moving, labels)
        carried = next(iter(result.output_slabs(Volume(moving_p[0, 0].numpy(), moving_g), grid=fixed_g)))[2]
        fp = fixed_p[0, 0].numpy()
        soft = 2 * (fp * carried).sum() / max(fp.sum() + carried.sum(), 1e-9)
        hard = 2 * ((fp > 0.5) & (carried > 0.5)).sum() / max((fp > 0.5).sum() + (carried > 0.5).sum(), 1)
        from labelreg.model import probability_centroid_lps

        fc, _ = probability_centroid_lps(fixed_p, fixed_g)
        mc, _ = probability_centroid_lps(moving_p, moving_g)
        scores, best = overlap_scores(fixed_p, fixed_g, moving_p, moving_g, mc - fc, model.config.overlap_radius_mm)
        lag_mm = torch.tensor(fixed_g.spacing[::-1], dtype=torch.float64)
        zyx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in scores.shape], indexing="ij"), -1).double()
        far = ((zyx - best.double()) * lag_mm).norm(dim=-1) >= RUNNER_UP_MM
        voxel_ml = float(np.prod(fixed_g.spacing)) / 1000
        fixed_mask = fp > 0.5
        # distance of each TRUS localiser voxel centre to the TRUS image border, in the image's index frame
        points = fixed_g.points_lps(dtype=torch.float64).reshape(-1, 3).numpy()
        to_index = fixed.grid.lps_to_index
        ijk = points @ to_index[:3, :3].T + to_index[:3, 3]
        size = np.asarray(fixed.grid.size)
        border_mm = np.min(np.minimum(ijk + 0.5, size - 0.5 - ijk) * np.asarray(fixed.grid.spacing), axis=1)
        near_edge = (border_mm < EDGE_MM).reshape(fixed_g.shape_zyx)
        ddf = result.transform.ddf_net_lps
        local = None if ddf is None else ddf[0].norm(dim=-1)
        local_in_gland = None
        if local is not None:
            net_points = result.transform.net_grid.points_lps()
            gland_on_net = sample(fixed_p, fixed_g, net_points[None])[0, 0] > 0.5
            local_in_gland = local[gland_on_net]
        mp = moving_p[0, 0].numpy()
        moving_ml = float((mp > 0.5).sum() * np.prod(moving_g.spacing) / 1000)
    row = evaluate_pair(result.warped_labels, fixed_labels.channels, fixed.grid, hd95=False)
    tre = [t for t in row["tre_mm"] if not math.isnan(t)]
    return {
        "tre_mean_mm": float(np.mean(tre)) if tre else math.nan, "dice": row["dice"],
        "agree_soft": float(soft), "agree_hard": float(hard),
        "overlap_peak": float(scores[tuple(best)]), "overlap_runner_up": float(scores[far].max()) if far.any() else 0.0,
        "fixed_volume_ml": float(fixed_mask.sum() * voxel_ml), "moving_volume_ml": moving_ml,
        "volume_ratio": moving_ml / max(float(fixed_mask.sum() * voxel_ml), 1e-6),
        "fixed_edge_fraction": float((fixed_mask & near_edge).sum() / max(fixed_mask.sum(), 1)),
        "fixed_confident": float(np.abs(2 * fp[fp > 0.1] - 1).mean()) if (fp > 0.1).any() else 0.0,
        "moving_confident": float(np.abs(2 * mp[mp > 0.1] - 1).mean()) if (mp > 0.1).any() else 0.0,
        "local_max_mm": 0.0 if local is None else float(local.max()),
        "local_mean_mm": 0.0 if local_in_gland is None or not local_in_gland.numel() else float(local_in_gland.mean()),
    }


if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    rows = []
    for spec in sys.argv[3:]:
        fold, path = spec.split("=", 1)
        engine = RegistrationEngine(path, "cpu")
        cases = read_metadata(path)["split"]["val_cases"]
        for case in cases:
            fixed = read_image(data / "fixed_images" / f"{case}.nii.gz")
            moving = read_image(data / "moving_images" / f"{case}.nii.gz")
            labels = read_labels(data / "moving_labels" / f"{case}.nii.gz", moving.grid)
            fixed_labels = read_labels(data / "fixed_labels" / f"{case}.nii.gz", fixed.grid)
            rows.append({"case": case, "fold": fold, **features(engine, fixed, moving, labels, fixed_labels)})
            print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                  flush=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")

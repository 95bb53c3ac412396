"""Loss and validation curves of a run's ``log.csv`` as one PNG (matplotlib, training only)."""
from __future__ import annotations

import csv
from pathlib import Path


def plot_log(log_csv, out=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    out = Path(out) if out else Path(log_csv).with_suffix(".png")

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("loss", "dice_loss"):
        axes[0].plot(*series(key), label=key)
    ce_axis = axes[0].twinx()  # cross-entropy is logged even when its weight is 0; own scale
    ce_axis.plot(*series("ce"), color="tab:green", alpha=0.5, label="ce (right axis)")
    axes[0].set_title("training loss")
    lines = axes[0].get_legend_handles_labels()
    ce_lines = ce_axis.get_legend_handles_labels()
    axes[0].legend(lines[0] + ce_lines[0], lines[1] + ce_lines[1])
    axes[1].plot(*series("tune_tre_median_mm"), "o-", label="median")
    axes[1].plot(*series("tune_tre_p90_mm"), "s--", label="p90")
    axes[1].set_title("tuning-set landmark TRE (mm)")
    axes[1].legend()
    axes[2].plot(*series("tune_dice_median"), "o-", label="median")
    axes[2].plot(*series("tune_dice_p10"), "s--", label="p10")
    axes[2].set_title("tuning-set gland Dice")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out

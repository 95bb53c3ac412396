"""A checkpoint made of one run's registration nets and another run's gland localisers (a probe:
how much do other localisers give under nets trained on the first ones' alignment?).

Both runs must be of the same fold (the script refuses otherwise, when both carry a
``config.json``). The result is a training checkpoint that ``labelreg-train evaluate`` reads; a
``config.json`` beside it records the fold, so ``evaluate`` checks that too.

    usage: python research/scripts/swap_localisers.py NETS.pt LOCALISERS.pt OUT.pt
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from labelreg.io import AtomicFile

SPLIT = ("folds", "fold", "seed")


def _run(checkpoint: Path) -> dict:
    path = checkpoint.parent / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main(nets_path: Path, localisers_path: Path, out: Path) -> int:
    nets_run, localisers_run = _run(nets_path), _run(localisers_path)
    if nets_run and localisers_run and any(nets_run.get(k) != localisers_run.get(k) for k in SPLIT):
        sys.exit(f"{nets_path} and {localisers_path} were trained on different folds: "
                 f"{[nets_run.get(k) for k in SPLIT]} against {[localisers_run.get(k) for k in SPLIT]}")
    nets = torch.load(nets_path, map_location="cpu", weights_only=True)
    localisers = torch.load(localisers_path, map_location="cpu", weights_only=True)
    if "localiser" not in localisers["model_config"] or not any(k.startswith("localisers.") for k in localisers["model"]):
        sys.exit(f"{localisers_path} has no gland localisers")
    model = {k: v for k, v in nets["model"].items() if not k.startswith("localisers.")}
    model.update({k: v for k, v in localisers["model"].items() if k.startswith("localisers.")})
    config = dict(nets["model_config"], localiser=localisers["model_config"]["localiser"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(out) as tmp:
        torch.save({"model": model, "model_config": config, "step": nets.get("step", 0), "stage": nets.get("stage"),
                    "localisers_from": str(localisers_path), "nets_from": str(nets_path)}, tmp)
    if nets_run:
        (out.parent / "config.json").write_text(json.dumps({k: nets_run[k] for k in SPLIT if k in nets_run}))
    print(f"wrote {out}: nets of {nets_path}, localisers of {localisers_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(*(Path(a) for a in sys.argv[1:])))

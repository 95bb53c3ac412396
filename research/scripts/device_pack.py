"""Carry training runs back from a rented GPU machine, whose returned files are few and small.

    python research/scripts/device_pack.py pack RUNS OUT        # on the GPU machine: RUNS/**/best.pt -> OUT/runs.tar.partNN
    python research/scripts/device_pack.py unpack OUT DEST      # here: the parts -> DEST/**/best.pt (float32, loadable)

``pack`` keeps, of each run's best checkpoint (the local stage's only while no joint one exists) (picked on the tuning subjects), the weights of
the net(s) its stage trained, in float16 (scaled per tensor), plus config.json, log.csv and stdout.log; ``unpack``
restores full checkpoints (the other net as the stage started it: the same seeded
initialisation, or the ``init_from`` checkpoint's weights). Evaluation and export then use the
float16-rounded weights, so what is evaluated is what would be shipped.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import torch

PART_BYTES = 15 * 2**20
KEEP = ("config.json", "log.csv", "stdout.log")
TRAINED = {"localiser": ("localisers.",), "global": ("global_net.",), "local": ("local_net.",), "local_only": ("local_net.",),
           "joint": ("global_net.", "local_net.")}


def pack(runs: Path, out: Path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for best in sorted(runs.rglob("best.pt")):
            if best.parent.name == "local" and (best.parent.parent / "joint" / "best.pt").exists():
                continue  # the joint stage holds both nets; the local stage's weights are not needed back
            state = torch.load(best, map_location="cpu", weights_only=True)
            prefixes = TRAINED[state["stage"]]
            slim = {k: v for k, v in state.items() if k != "optimizer"}
            kept = {k: v for k, v in state["model"].items() if k.startswith(prefixes)}
            # float16 of each tensor over its largest magnitude: the same relative precision for
            # the small weights (the zero-initialised affine head, the DDF output layers) as for the rest
            slim["scales"] = {k: v.abs().max().float().clamp(min=1e-30) for k, v in kept.items() if v.is_floating_point()}
            slim["model"] = {k: (v / slim["scales"][k]).half() if k in slim["scales"] else v for k, v in kept.items()}
            data = io.BytesIO()
            torch.save(slim, data)
            _add(tar, best.relative_to(runs).with_name("best16.pt"), data.getvalue())
            for name in KEEP:
                if (best.parent / name).exists():
                    _add(tar, best.relative_to(runs).with_name(name), (best.parent / name).read_bytes())
        for log in sorted(runs.glob("*.log")):  # the per-pipeline logs
            _add(tar, log.name, log.read_bytes())
    blob = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("runs.tar.part*"):
        old.unlink()
    for i in range(0, max(1, len(blob)), PART_BYTES):
        tmp = out / f".part{i // PART_BYTES:02d}.tmp"
        tmp.write_bytes(blob[i:i + PART_BYTES])
        os.replace(tmp, out / f"runs.tar.part{i // PART_BYTES:02d}")
    print(f"packed {len(blob) / 2**20:.1f} MiB into {out}")


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(str(name))
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def unpack(parts_dir: Path, dest: Path):
    sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "SlicerLabelReg")]
    from labelreg.model import ModelConfig, RegistrationModel

    blob = b"".join(p.read_bytes() for p in sorted(parts_dir.glob("runs.tar.part*")))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    order = list(TRAINED)  # a stage's init_from is restored before it
    slims = [(p, torch.load(p, weights_only=True)) for p in dest.rglob("best16.pt")]
    for slim_path, slim in sorted(slims, key=lambda ps: (order.index(ps[1]["stage"]), str(ps[0]))):
        config = json.loads((slim_path.parent / "config.json").read_text())
        torch.manual_seed(config["seed"])  # as train() builds the model
        model = RegistrationModel(ModelConfig.from_dict(slim["model_config"]))
        if config.get("init_from") and len(TRAINED[slim["stage"]]) == 1:
            rel = slim_path.parent.relative_to(dest)  # the run's path under RUNS
            root = Path(config["out_dir"]).parts[: len(Path(config["out_dir"]).parts) - len(rel.parts)]
            start = dest / Path(config["init_from"]).relative_to(Path(*root) if root else Path("."))
            model.load_state_dict(torch.load(start, weights_only=True)["model"])
        state = model.state_dict()
        scales = slim.pop("scales")
        state.update({k: v.float() * scales[k] if k in scales else v for k, v in slim["model"].items()})
        model.load_state_dict(state)
        torch.save({**slim, "model": model.state_dict()}, slim_path.with_name("best.pt"))
        print(f"restored {slim_path.with_name('best.pt')} ({slim['stage']}, step {slim['step']})")


if __name__ == "__main__":
    command, src, dst = sys.argv[1:4]
    (pack if command == "pack" else unpack)(Path(src), Path(dst))

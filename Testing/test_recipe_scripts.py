"""The bundled model's recipe scripts (LabelRegTraining/scripts): which stages they run, with which
configs and settings, and how the cross-validation is evaluated; ``labelreg-train`` replaced by a
stub that records its calls (the training and evaluation themselves: test_training.py)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from labelreg.model import retire_options
from labelreg.model_io import load_model

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "LabelRegTraining" / "scripts"
CONFIGS = REPO / "LabelRegTraining" / "configs"
STUB = """#!{python}
import json, os, pathlib, sys
with open(os.environ["STUB_CALLS"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if "--json" in sys.argv:
    pathlib.Path(sys.argv[sys.argv.index("--json") + 1]).write_text("{{}}")
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipe scripts are bash scripts")


@pytest.fixture
def run(tmp_path):
    """``run(script, *args, **env)`` -> the stub's calls, each as {flag: value} plus its command."""
    stub = tmp_path / "labelreg-train-stub"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)

    def call(script, *args, **env):
        calls = tmp_path / "calls.jsonl"
        calls.unlink(missing_ok=True)
        subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], check=True, capture_output=True,
                       env={**os.environ, "LABELREG_TRAIN": str(stub), "STUB_CALLS": str(calls), **env})
        return [parse(json.loads(line)) for line in calls.read_text().splitlines()]

    def parse(argv):  # every flag here takes a value; the rest are files
        flags, rest = {"command": argv[0], "files": []}, iter(argv[1:])
        for arg in rest:
            if arg.startswith("--"):
                flags[arg] = next(rest)
            else:
                flags["files"].append(arg)
        return flags

    return call


def test_train_gland_fold_is_the_bundled_models_recipe(run, tmp_path):
    """The localisers with gland_alignment.json, then the local net from their best checkpoint with
    gland_overlap.json, with the steps and learning rates the bundled model's stages record."""
    localiser, local = run("train_gland_fold.sh", "DATA", tmp_path / "fold3", 3, "--threads", 2)
    _, metadata = load_model()
    for call, stage, config in ((localiser, "localiser", "gland_alignment.json"),
                                (local, "local_only", "gland_overlap.json")):
        recorded = next(s for s in metadata["stages"] if s["stage"] == stage)
        assert call["command"] == "fit" and call["--stage"] == stage
        assert (call["--data"], call["--fold"], call["--threads"]) == ("DATA", "3", "2")
        assert Path(call["--config"]).resolve() == CONFIGS / config
        assert Path(call["--out"]) == tmp_path / "fold3" / stage
        assert (int(call["--steps"]), float(call["--lr"])) == (recorded["steps"], recorded["lr"])
        model = json.loads((CONFIGS / config).read_text())["model"]
        bundled = retire_options(metadata["config"])  # as the bundled model loads (format 4: no "norm")
        assert {k: bundled[k] for k in model if k != "gland_translation"} == {
            k: v for k, v in model.items() if k != "gland_translation"}
    assert Path(local["--init-from"]) == tmp_path / "fold3" / "localiser" / "best.pt"
    assert json.loads((CONFIGS / "gland_overlap.json").read_text())["model"]["gland_translation"] == \
        metadata["config"]["gland_translation"] == "overlap"


def test_train_gland_fold_reuses_localisers_and_takes_other_configs(run, tmp_path):
    (local,) = run("train_gland_fold.sh", "DATA", tmp_path / "s1", 0, "--run-seed", 1,
                   LOCALISER="loc.pt", LOCAL_CONFIG="other.json")
    assert (local["--stage"], local["--init-from"], local["--config"], local["--run-seed"]) == (
        "local_only", "loc.pt", "other.json", "1")
    localiser, local = run("train_gland_fold.sh", "DATA", tmp_path / "both", 0, CONFIG="both.json")
    assert localiser["--config"] == local["--config"] == "both.json"


def test_evaluate_cv_evaluates_the_stages_each_fold_holds(run, tmp_path):
    """The centre alignment, the localisers by best overlap and the local net on every fold; a
    global or local stage where one was trained; the table over the files written, only."""
    for fold, stage in ((0, "localiser"), (0, "local_only"), (1, "localiser"), (1, "local_only"), (1, "local")):
        (tmp_path / "runs" / f"fold{fold}" / stage).mkdir(parents=True)
        (tmp_path / "runs" / f"fold{fold}" / stage / "best.pt").write_bytes(b"")
    calls = run("evaluate_cv.sh", tmp_path / "runs", "DATA", tmp_path / "results", 0, 1)
    evaluations = [c for c in calls if c["command"] == "evaluate"]
    assert [(c["--fold"], Path(c.get("--checkpoint", "-")).parent.name, c.get("--mode")) for c in evaluations] == [
        ("0", "", None), ("0", "localiser", "affine"), ("0", "local_only", "local"),
        ("1", "", None), ("1", "localiser", "affine"), ("1", "local_only", "local"), ("1", "local", "deformable")]
    assert all(c["--gland-translation"] == "overlap" for c in evaluations if "localiser" in c.get("--checkpoint", ""))
    (report,) = [c for c in calls if c["command"] == "report"]
    assert sorted(Path(f).name for f in report["files"]) == sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(report["files"]) == 7

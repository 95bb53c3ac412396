"""End-to-end tests of the ``labelreg`` command line on phantom files (in-process via main())."""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from labelreg import cli, resources
from labelreg.grid import Grid
from labelreg.metrics import dice
from labelreg.model import RegistrationModel
from labelreg.model_io import save_model
from labelreg.phantom import make_pair, rotation_matrix, write_pair

OBLIQUE = rotation_matrix((0.3, -1.0, 0.4), 0.35)


def perturbed_model() -> RegistrationModel:
    """An untrained model whose transform is far from the identity (affine + smooth local field)."""
    torch.manual_seed(0)
    model = RegistrationModel()
    with torch.no_grad():
        model.global_net.head.bias.copy_(torch.tensor([0.04, 0.02, 0, -0.02, -0.03, 0.01, 0, 0.01, 0.05,
                                                       0.1, -0.05, 0.08]))
        for conv in model.local_net.outputs:
            conv.weight.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    pair = make_pair(seed=1, fixed_size=(36, 40, 30), moving_size=(44, 44, 40), spacing=(1.2, 1.6, 1.9),
                     direction=OBLIQUE, moving_spacing=(1.5, 1.5, 1.5), n_landmarks=3)
    paths = write_pair(pair, data, "case000")
    model = save_model(root / "m.pt", perturbed_model())
    return {"root": root, "data": data, "paths": paths, "model": model, "pair": pair}


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_register_writes_all_outputs_on_the_fixed_grid(files, tmp_path, capsys):
    p = files["paths"]
    code, out, err = run(["register", "--fixed", p["fixed_images"], "--moving", p["moving_images"],
                          "--moving-labels", p["moving_labels"], "--fixed-labels", p["fixed_labels"],
                          "--model", files["model"], "--device", "cpu", "--threads", 1, "--output-dir", tmp_path],
                         capsys)
    assert code == 0, err
    assert "timings:" in out and "before (initial alignment, no network): TRE median" in out and "after (deformable)" in out
    names = ["warped_moving.nii.gz", "warped_labels.nii.gz", "displacement.nii.gz", "affine.tfm", "qc.png"]
    for name in names:
        assert (tmp_path / name).is_file() and str(tmp_path / name) in out
    fixed = sitk.ReadImage(str(p["fixed_images"]))
    fixed_grid = Grid.from_sitk(fixed)
    warped_labels = sitk.ReadImage(str(tmp_path / "warped_labels.nii.gz"))
    assert warped_labels.GetDimension() == 4 and warped_labels.GetSize()[3] == 4  # channels kept
    for name in ("warped_moving.nii.gz", "warped_labels.nii.gz", "displacement.nii.gz"):
        assert Grid.from_sitk(sitk.ReadImage(str(tmp_path / name))).same_as(fixed_grid), name
    qc = sitk.ReadImage(str(tmp_path / "qc.png"))
    assert qc.GetNumberOfComponentsPerPixel() == 3 and qc.GetSize()[0] > 200

    # the written displacement field, applied by SimpleITK, reproduces the warped labels
    field = sitk.ReadImage(str(tmp_path / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    assert np.abs(sitk.GetArrayViewFromImage(field)).max() > 20  # far from the identity
    moving_gland = sitk.ReadImage(str(p["moving_labels"]))[:, :, :, 0]
    resampled = sitk.Resample(moving_gland, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
    ours = sitk.GetArrayFromImage(warped_labels)[0]
    assert ours.sum() > 1000
    assert dice(sitk.GetArrayFromImage(resampled), ours) > 0.99

    # evaluate understands a register output folder (and finds displacement.nii.gz)
    code, out, err = run(["evaluate", "--warped-labels", tmp_path, "--fixed-labels", p["fixed_labels"]], capsys)
    assert code == 0, err
    assert "warped_labels: TRE median" in out and "folding" in out

    # and so does the affine alone in affine mode
    code, _, err = run(["register", "--fixed", p["fixed_images"], "--moving", p["moving_images"], "--model",
                        files["model"], "--device", "cpu", "--mode", "affine", "--output-dir", tmp_path / "a"], capsys)
    assert code == 0, err
    affine = sitk.ReadTransform(str(tmp_path / "a" / "affine.tfm"))
    moving = sitk.ReadImage(str(p["moving_images"]))
    expected = sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    got = sitk.ReadImage(str(tmp_path / "a" / "warped_moving.nii.gz"))
    difference = np.abs(sitk.GetArrayFromImage(expected) - sitk.GetArrayFromImage(got))
    # compare where the mapped point is inside the moving voxel centres (ITK and grid_sample differ
    # in the half voxel beyond the border)
    points = fixed_grid.points_lps(dtype=torch.float64).numpy()
    moving_grid = Grid.from_sitk(moving)
    matrix = moving_grid.lps_to_index @ np.vstack([np.column_stack([np.array(affine.GetMatrix()).reshape(3, 3),
                                                                   affine.GetTranslation()]), [0, 0, 0, 1]])
    index = points @ matrix[:3, :3].T + matrix[:3, 3]
    inside = np.all((index >= 1e-3) & (index <= np.array(moving_grid.size) - 1 - 1e-3), axis=-1)
    assert inside.mean() > 0.5 and difference[inside].max() < 0.05


@pytest.fixture(scope="module")
def batch_data(files):
    data = files["root"] / "batch"
    for seed in range(3):
        write_pair(make_pair(seed=seed, fixed_size=(32, 36, 30), moving_size=(40, 40, 36)), data, f"p{seed}")
    (data / "moving_images" / "p1.nii.gz").write_bytes(b"\x00garbage" * 50)  # corrupt pair
    return data


def test_batch_reports_bad_pair_and_writes_the_others(files, batch_data, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run(["batch", batch_data, out_dir, "--model", files["model"], "--device", "cpu", "--save-ddf"],
                         capsys)
    assert code != 0
    assert "p1" in err and str(batch_data / "moving_images" / "p1.nii.gz") in err and "Traceback" not in err
    assert sorted(p.name for p in (out_dir / "warped_labels").iterdir()) == ["p0.nii.gz", "p2.nii.gz"]
    assert sorted(p.name for p in (out_dir / "ddf").iterdir()) == ["p0.nii.gz", "p2.nii.gz"]
    assert "2 of 3 pairs registered" in out and "summary over 2 pairs" in out
    rows = list(csv.DictReader((out_dir / "registrations.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["p0", "p2"] and all(r["mode"] == "deformable" for r in rows)
    assert all(float(r["seconds"]) > 0 and 0 < float(r["dice"]) <= 1 and ";" in r["tre_mm"] for r in rows)
    assert "confidence" in rows[0] and "verdict" in rows[0]  # empty: this model has no calibration

    # evaluate the batch output folder against the data folder
    csv_path = tmp_path / "eval.csv"
    code, out, err = run(["evaluate", "--warped-labels", out_dir, "--fixed-labels", batch_data, "--csv", csv_path],
                         capsys)
    assert code == 0, err
    assert "p0: TRE median" in out and "folding" in out and "summary over 2 pairs" in out
    rows = {r["name"]: r for r in csv.DictReader(csv_path.read_text().splitlines())}
    assert set(rows) == {"p0", "p2", "summary"}
    assert 0 < float(rows["p0"]["dice"]) <= 1 and float(rows["summary"]["tre_p90_mm"]) > 0

    # explicit folders, one warped file without fixed labels -> reported, non-zero
    shutil.copy(out_dir / "warped_labels" / "p0.nii.gz", out_dir / "warped_labels" / "p9.nii.gz")
    code, out, err = run(["evaluate", "--warped-labels", out_dir / "warped_labels",
                          "--fixed-labels", batch_data / "fixed_labels"], capsys)
    assert code == 1 and "p9" in err and "p2: TRE median" in out


def test_demo_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resources, "SAMPLE_PAIR_DIR", tmp_path / "no-sample-data")
    code, out, err = run(["demo", "--output-dir", tmp_path / "demo", "--device", "cpu"], capsys)
    assert code == 0, err
    if "notice:" in out:
        assert cli.UNTRAINED_NOTICE in out
    assert "before (initial alignment, no network): TRE median" in out and "Dice" in out
    assert (tmp_path / "demo" / "qc.png").is_file() and (tmp_path / "demo" / "inputs" / "fixed_images").is_dir()


def test_usage_errors_are_one_line(capsys):
    code, _, err = run(["register", "--fixed", "x.nii.gz"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("labelreg: error: ")
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert run(["--version"], capsys)[0] == 0


def test_unexpected_errors_one_line_and_debug_reraises(files, monkeypatch, capsys):
    import labelreg.batch

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(labelreg.batch, "run_evaluate", boom)
    code, _, err = run(["evaluate", "--warped-labels", "a", "--fixed-labels", "b"], capsys)
    assert code == 1 and err.count("\n") == 1 and "RuntimeError: boom second line" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        cli.main(["evaluate", "--warped-labels", "a", "--fixed-labels", "b", "--debug"])


def test_train_delegates_or_explains(monkeypatch, capsys):
    import types

    calls = []
    fake = types.ModuleType("labelreg_training.cli")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "labelreg_training.cli", fake)
    assert cli.main(["train", "--epochs", "3", "--help"]) == 0 and calls == [["--epochs", "3", "--help"]]
    monkeypatch.setitem(sys.modules, "labelreg_training.cli", None)  # import fails
    code, _, err = run(["train", "--epochs", "3"], capsys)
    assert code == 1 and "pip install .[train]" in err and err.count("\n") == 1


def test_console_script_subprocess(tmp_path):
    exe = shutil.which("labelreg") or str(Path(sys.executable).parent / "labelreg")
    proc = subprocess.run([exe, "register", "--fixed", str(tmp_path / "missing.nii.gz"), "--moving",
                           str(tmp_path / "m.nii.gz"), "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("labelreg: error: ")
    assert "missing.nii.gz: file not found" in proc.stderr and "Traceback" not in proc.stderr

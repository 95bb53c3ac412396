"""Output folders: two runs' outputs never mix, user files are never deleted, and a folder that
cannot be written is refused before registering, in one line naming the folder."""
import errno
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from labelreg import cli
from labelreg.errors import LabelRegError
from labelreg.grid import Grid
from labelreg.io import AtomicFile, write_image
from labelreg.model import RegistrationModel
from labelreg.model_io import save_model
from labelreg.outputs import prepare_output_dir
from labelreg.phantom import make_pair, write_pair

BATCH_SCRIPT = Path(__file__).resolve().parent.parent / "SlicerLabelReg" / "Scripts" / "register_batch.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    paths = write_pair(make_pair(seed=3, fixed_size=(24, 28, 20), moving_size=(28, 28, 24)), root / "data", "c0")
    return {"root": root, "model": save_model(root / "m.pt", RegistrationModel()), **paths}


@pytest.fixture
def no_engine(monkeypatch):
    """Records any attempt to load the model (the folder must be checked before it)."""
    calls = []
    monkeypatch.setattr(cli, "_engine", lambda *args: calls.append(args) or pytest.fail("model loaded"))
    return calls


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def register(files, out, capsys, *extra, labels=True):
    argv = ["register", "--fixed", files["fixed_images"], "--moving", files["moving_images"], "--model",
            files["model"], "--device", "cpu", "--threads", 1, "--output-dir", out, *extra]
    return run(argv + (["--moving-labels", files["moving_labels"]] if labels else []), capsys)


def assert_one_line(code, err, *parts):
    assert code == 1 and err.count("\n") == 1 and err.startswith("labelreg: error: "), err
    for part in parts:
        assert str(part) in err, err


# ------------------------------------------------------------------ register
def test_non_empty_folder_refused_before_the_model_is_loaded(files, tmp_path, capsys, no_engine):
    out = tmp_path / "out"
    out.mkdir()
    (out / "warped_labels.nii.gz").write_bytes(b"earlier run")
    assert_one_line(*register(files, out, capsys)[::2], out, "warped_labels.nii.gz", "--overwrite")
    assert no_engine == [] and (out / "warped_labels.nii.gz").read_bytes() == b"earlier run"


def test_overwrite_replaces_the_earlier_run_without_mixing(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = register(files, out, capsys)
    assert code == 0, err
    assert (out / "warped_labels.nii.gz").is_file()
    code, _, err = register(files, out, capsys, "--overwrite", labels=False)  # no labels this time
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["affine.tfm", "displacement.nii.gz", "qc.png",
                                                    "warped_moving.nii.gz"]


def test_foreign_entry_blocks_even_overwrite_and_is_kept(files, tmp_path, capsys, no_engine):
    out = tmp_path / "out"
    (out / "warped_labels").mkdir(parents=True)
    (out / "qc.png").write_bytes(b"ours")
    (out / "notes.txt").write_text("mine")
    (out / "warped_labels" / "readme.md").write_text("mine too")  # inside a folder we would write
    assert_one_line(*register(files, out, capsys, "--overwrite")[::2], out, "notes.txt", "warped_labels/",
                    "empty output folder")
    assert (out / "notes.txt").read_text() == "mine" and (out / "warped_labels" / "readme.md").is_file()
    assert (out / "qc.png").is_file() and no_engine == []


def test_output_path_is_a_file(files, tmp_path, capsys, no_engine):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"x")
    assert_one_line(*register(files, target, capsys, "--overwrite")[::2], f"{target}: is a file; give a folder")
    assert target.read_bytes() == b"x"


def test_unwritable_folder(files, tmp_path, capsys, no_engine):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a 0o500 folder is still writable")
        assert_one_line(*register(files, out, capsys)[::2],
                        f"{out}: cannot write here (permission denied); choose another output folder")
    finally:
        out.chmod(0o700)


def test_unwritable_folder_message_whoever_runs(tmp_path, monkeypatch):
    import labelreg.outputs

    def refuse(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(kwargs["dir"]) / ".labelreg-probe-x"))

    monkeypatch.setattr(labelreg.outputs.tempfile, "mkstemp", refuse)
    with pytest.raises(LabelRegError, match="out: cannot write here \\(permission denied\\); choose another") as info:
        prepare_output_dir(tmp_path / "out")
    assert "probe" not in str(info.value)


def test_write_errors_name_the_final_file_not_the_temporary_one(tmp_path):
    target = tmp_path / "warped_moving.nii.gz"
    with pytest.raises(LabelRegError, match="No space left") as info, AtomicFile(target) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", tmp)
    assert str(info.value).startswith(f"{target}: cannot be written") and ".warped_moving-" not in str(info.value)
    (tmp_path / "qc.png").mkdir()  # the rename onto a folder fails
    with pytest.raises(LabelRegError, match="qc.png: cannot be written"):
        write_image(tmp_path / "qc.png", np.zeros((4, 4, 4), np.float32), Grid((4, 4, 4), (1, 1, 1), (0, 0, 0)))
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]  # no temporary file left behind


# --------------------------------------------------------------------- batch
def test_batch_refuses_then_overwrites_only_its_outputs(files, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "fixed_images").mkdir(parents=True)
    (data / "moving_images").mkdir()
    for sub in ("fixed_images", "moving_images"):  # no labels this time
        (data / sub / "c0.nii.gz").write_bytes(files[sub].read_bytes())
    out = tmp_path / "out"
    (out / "warped_labels").mkdir(parents=True)
    (out / "warped_labels" / "old.nii.gz").write_bytes(b"earlier run")
    (out / "metrics.csv").write_text("name\n")
    argv = ["batch", data, out, "--model", files["model"], "--device", "cpu", "--threads", 1]
    code, out_text, err = run(argv, capsys)
    assert_one_line(code, err, out, "warped_labels/", "metrics.csv", "--overwrite")
    assert "pairs registered" not in out_text
    code, _, err = run(argv + ["--overwrite"], capsys)
    assert code == 0, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["registrations.csv", "warped_moving",
                                                                           "warped_moving/c0.nii.gz"]


# ------------------------------------------------------------- Slicer script
def test_slicer_batch_script_refuses_a_non_empty_folder(files, tmp_path, capsys):
    try:
        import slicer_bootstrap

        slicer_bootstrap.bootstrap()
    except ImportError as exc:
        pytest.skip(f"slicer-core is not available: {exc}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "c0-affine.h5").write_bytes(b"earlier run")
    saved = sys.argv
    sys.argv = [str(a) for a in (BATCH_SCRIPT, "--fixed", files["fixed_images"], "--moving", files["moving_images"],
                                 "--output-dir", out, "--device", "cpu", "--model", files["model"])]
    try:
        with pytest.raises(SystemExit) as exit_info:  # as `Slicer --python-script` runs it
            runpy.run_path(str(BATCH_SCRIPT), run_name="__main__")
    finally:
        sys.argv = saved
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1, err
    assert f"{out}: not empty" in err and "c0-affine.h5" in err and "--overwrite" in err
    assert (out / "c0-affine.h5").read_bytes() == b"earlier run"

"""A non-editable install works from any folder: the wheel carries the bundled model and the
sample pair, and ``labelreg demo`` and ``labelreg batch`` (without ``--model``), installed from it
into a fresh virtual environment, use them. Slow (builds the wheel and the environment):
``pytest -m slow -k wheel``."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import SimpleITK
import torch
from labelreg import resources
from labelreg.model_io import sidecar_path

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
PACKAGE_PARENT = Path(resources.__file__).resolve().parent.parent  # archive names are relative to it
SAMPLE_SUBFOLDERS = ("fixed_images", "moving_images", "fixed_labels", "moving_labels")


def run(command, cwd) -> str:
    """stdout of a command that must succeed, without this environment's PYTHONPATH or venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def archive_name(path: Path) -> str:
    return path.relative_to(PACKAGE_PARENT).as_posix()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of what pyproject.toml builds from (so a stale build/ folder
    in the checkout cannot leak into it), offline."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    for folder in config["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", config["project"]["readme"], "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-w", tmp / "dist"], tmp)
    (path,) = (tmp / "dist").glob("labelreg-*.whl")
    print(f"\n{path.name}: {path.stat().st_size / 1e6:.1f} MB")
    return path


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed (no dependencies); torch, numpy and
    SimpleITK are borrowed from this environment through a .pth file, not reinstalled. The .pth
    files of a directory added that way are not processed, so this checkout's editable labelreg
    stays invisible there."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", venv], venv.parent)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel], venv.parent)
    site_packages = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv.parent)
    borrowed = {str(Path(m.__file__).resolve().parent.parent) for m in (torch, numpy, SimpleITK)}
    (Path(site_packages.strip()) / "borrowed_dependencies.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    return venv


@pytest.fixture(scope="module")
def installed(fresh_venv, tmp_path_factory) -> dict:
    """Where the fresh environment's labelreg and its resources lie, asked from an empty folder."""
    code = ("import labelreg; from labelreg import resources as r; "
            "print(labelreg.__file__, r.BUNDLED_MODEL_FILE, r.SAMPLE_PAIR_DIR, sep='\\n')")
    lines = run([fresh_venv / "bin" / "python", "-c", code], tmp_path_factory.mktemp("elsewhere")).splitlines()
    return dict(zip(("package", "model", "sample_pair"), map(Path, lines)))


def test_wheel_carries_the_bundled_model_and_sample_pair(wheel):
    import zipfile

    expected = {resources.BUNDLED_MODEL_FILE, sidecar_path(resources.BUNDLED_MODEL_FILE),
                resources.SAMPLE_PAIR_DIR / "README.md"}
    expected |= {resources.sample_pair_file(sub) for sub in SAMPLE_SUBFOLDERS}
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted({archive_name(path) for path in expected} - names)
    assert not missing, f"{wheel.name} lacks {missing}"


def test_fresh_venv_imports_the_installed_package(fresh_venv, installed):
    venv = fresh_venv.resolve()
    for key, path in installed.items():
        assert path.resolve().is_relative_to(venv), f"{key} {path} is not inside the fresh environment {venv}"
    assert installed["model"].is_file() and sidecar_path(installed["model"]).is_file()


def test_demo_from_any_folder_uses_the_bundled_model_and_sample_pair(fresh_venv, installed, tmp_path):
    out = run([fresh_venv / "bin" / "labelreg", "demo", "--device", "cpu"], tmp_path)
    assert f"labelreg demo on pair {resources.SAMPLE_PAIR_NAME} of {installed['sample_pair']}" in out, out
    assert f"model: {installed['model']}" in out, out
    assert "notice:" not in out and "phantom" not in out, out
    assert "before (initial alignment, no network): TRE median" in out and "after (deformable): TRE median" in out
    assert (tmp_path / "labelreg-demo-output" / "qc.png").is_file()


def test_batch_without_model_from_any_folder(fresh_venv, installed, tmp_path):
    out_dir = tmp_path / "batch"
    run([fresh_venv / "bin" / "labelreg", "batch", installed["sample_pair"], out_dir, "--device", "cpu"], tmp_path)
    assert (out_dir / "warped_labels" / f"{resources.SAMPLE_PAIR_NAME}.nii.gz").is_file()
    assert resources.SAMPLE_PAIR_NAME in (out_dir / "registrations.csv").read_text()

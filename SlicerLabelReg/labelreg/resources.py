"""Where the files bundled with the ``labelreg`` package lie: the trained model and the sample
MR/TRUS pair. The one definition of these locations, found beside this module, so they hold in
a source checkout, an installed wheel and the Slicer module alike (package data of ``labelreg``:
``pyproject.toml``; shipped by ``SlicerLabelReg/CMakeLists.txt``).

Read a location through the module (``resources.BUNDLED_MODEL_FILE``) rather than importing the
name, so a test can point it elsewhere with one ``monkeypatch.setattr``.
"""
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
#: weights of the bundled model; its metadata sidecar ``labelreg_mrus.json`` lies beside it
BUNDLED_MODEL_FILE = BUNDLED_DIR / "model" / "labelreg_mrus.pt"
#: one pair in the public data layout (fixed_images/, moving_images/, fixed_labels/, moving_labels/)
SAMPLE_PAIR_DIR = BUNDLED_DIR / "sample_pair"
#: the sample pair's file name stem, held out from the bundled model's training (see its README.md)
SAMPLE_PAIR_NAME = "obs003"


def sample_pair_file(subfolder: str) -> Path:
    """The sample pair's file in ``subfolder`` (``fixed_images``, ``moving_images``, ...)."""
    return SAMPLE_PAIR_DIR / subfolder / f"{SAMPLE_PAIR_NAME}.nii.gz"

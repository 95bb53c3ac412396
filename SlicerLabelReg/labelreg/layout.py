"""The public data-folder layout, read in one place (``labelreg batch``, ``labelreg demo``,
training and evaluation):

    DATA/fixed_images/NAME.nii.gz     the TRUS of pair NAME
    DATA/moving_images/NAME.nii.gz    its MR
    DATA/fixed_labels/NAME.nii.gz     optional: labels on the TRUS (channel 0 the gland, then landmarks)
    DATA/moving_labels/NAME.nii.gz    optional: the same structures on the MR, same channel order
    DATA/subjects.csv                 optional: case,subject (training keeps a subject's pairs in one fold)

Any image format SimpleITK reads (:data:`IMAGE_SUFFIXES`); a pair is the files with one name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import LabelRegError

FOLDERS = ("fixed_images", "moving_images", "fixed_labels", "moving_labels")
IMAGES = FOLDERS[:2]
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_NOT_IMAGES = (".raw", ".zraw", ".txt", ".csv", ".md")


def stem(path) -> str:
    """A file's name without its image suffix (``obs003.nii.gz`` -> ``obs003``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def image_files(folder) -> dict:
    """{stem: path} of the image files in ``folder`` (or of ``folder`` itself if it is a file)."""
    folder = Path(folder)
    if folder.is_file():
        return {stem(folder): folder}
    if not folder.is_dir():
        raise LabelRegError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {stem(p): p for p in files if not p.name.lower().endswith(_NOT_IMAGES)}


def subfolder(path, name: str) -> Path:
    """``path/name`` if that folder exists (a data set or batch output), else ``path``."""
    path = Path(path)
    return path / name if (path / name).is_dir() else path


@dataclass(frozen=True)
class PairFiles:
    """The files of one pair: ``paths`` maps each folder of :data:`FOLDERS` that has the pair's
    file to it; ``missing`` holds the folders the data set has that lack it."""

    name: str
    paths: dict
    missing: tuple = ()

    def read(self) -> tuple:
        """(fixed, moving, moving labels or None, fixed labels or None) as :class:`~labelreg.volume.Volume`;
        a missing file is a :class:`LabelRegError` naming its folder."""
        from . import io as lio  # SimpleITK only when reading

        if self.missing:
            raise LabelRegError(f"{self.missing[0]}: no file for pair {self.name}")
        fixed = lio.read_image(self.paths["fixed_images"], "fixed image")
        moving = lio.read_image(self.paths["moving_images"], "moving image")
        labels = {folder: lio.read_labels(self.paths[folder], image.grid, folder.replace("_", " "))
                  for folder, image in (("moving_labels", moving), ("fixed_labels", fixed)) if folder in self.paths}
        return fixed, moving, labels.get("moving_labels"), labels.get("fixed_labels")


def data_pairs(data_dir, need=IMAGES) -> list:
    """Every pair of a data folder (named by its fixed image) as :class:`PairFiles`. The folders
    in ``need`` must exist. A pair that lacks the file of a folder the data set has cannot be
    read (:meth:`PairFiles.read`); :func:`complete_pairs` refuses such a data set up front."""
    data_dir = Path(data_dir)
    present = [f for f in FOLDERS if (data_dir / f).is_dir()]
    missing = [f for f in need if f not in present]
    if missing:
        raise LabelRegError(f"{data_dir}: no {', '.join(f + '/' for f in missing)} folder; expected the public layout: "
                            "fixed_images/, moving_images/ and optionally fixed_labels/, moving_labels/ with the same "
                            "file names")
    files = {f: image_files(data_dir / f) for f in present}
    if not files["fixed_images"]:
        raise LabelRegError(f"{data_dir / 'fixed_images'}: no image files")
    return [PairFiles(n, {f: files[f][n] for f in present if n in files[f]},
                      tuple(str(data_dir / f) for f in present if n not in files[f]))
            for n in sorted(files["fixed_images"])]


def complete_pairs(data_dir, need=FOLDERS) -> list:
    """:func:`data_pairs` of a data set in which every pair has every file (training, evaluation)."""
    pairs = data_pairs(data_dir, need)
    incomplete = [p for p in pairs if p.missing]
    if incomplete:
        names = ", ".join(p.name for p in incomplete[:5]) + (" ..." if len(incomplete) > 5 else "")
        raise LabelRegError(f"{incomplete[0].missing[0]}: no file for pair{'s' if len(incomplete) > 1 else ''} {names}")
    return pairs

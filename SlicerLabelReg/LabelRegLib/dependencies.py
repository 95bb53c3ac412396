"""PyTorch for the module: checked when a registration starts, never at import.

PyTorch builds are several GB and depend on the GPU driver, so LabelReg never pip-installs
torch silently: it uses the PyTorch extension (``PyTorchUtils``, declared in
``EXTENSION_DEPENDS``), which picks the right build and asks the user first. A torch older than
:data:`MINIMUM_TORCH` counts as missing and is offered for upgrade the same way. In testing
mode nothing is installed; a missing torch is reported as an error the user can act on.

The checks read the installed package's metadata and never import torch.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from labelreg.errors import LabelRegError  # labelreg/__init__ and errors import no torch

MINIMUM_TORCH = "2.1"
INSTALL_HINT = (
    "PyTorch is not installed. Install the 'PyTorch' extension from the Extensions Manager "
    "(LabelReg depends on it), then press Register again: LabelReg will offer to install the "
    f"PyTorch build that suits this computer (torch>={MINIMUM_TORCH}, a download of up to a few GB)."
)


class MissingDependencyError(LabelRegError):
    """torch is missing or too old; the message says how to install it."""


def versionTuple(version: str) -> tuple:
    """The leading release numbers of a version string: "2.13.0+cpu" -> (2, 13, 0)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version or "")
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def torchAvailable() -> bool:
    return importlib.util.find_spec("torch") is not None


def torchVersion() -> str | None:
    """The installed torch's version (from its metadata), None if it is not installed or unknown."""
    if not torchAvailable():
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # e.g. a source checkout on sys.path
        return None


def torchProblem() -> str | None:
    """Why torch cannot be used (missing, or older than :data:`MINIMUM_TORCH`), or None."""
    if not torchAvailable():
        return INSTALL_HINT
    version = torchVersion()
    if version is not None and versionTuple(version) < versionTuple(MINIMUM_TORCH):
        return (f"PyTorch {version} is installed; LabelReg needs PyTorch {MINIMUM_TORCH} or newer. Press Register "
                "again to update it through the 'PyTorch' extension (Extensions Manager), then restart Slicer.")
    return None


def requireTorch() -> None:
    """Raise :class:`MissingDependencyError` (with installation advice) when torch is missing or too old."""
    problem = torchProblem()
    if problem:
        raise MissingDependencyError(problem)


def ensureTorch(askConfirmation: bool = True, testing: bool = False) -> None:
    """Offer to install, or update, torch through the PyTorch extension (GUI path, on Register).

    Installs nothing in testing mode or when the PyTorch extension is absent; raises
    :class:`MissingDependencyError` when torch is still unusable afterwards.
    """
    problem = torchProblem()
    if problem is None:
        return
    if testing:
        raise MissingDependencyError(problem)
    try:
        import PyTorchUtils  # provided by the PyTorch extension
    except ImportError:
        raise MissingDependencyError(problem) from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=askConfirmation, torchVersionRequirement=f">={MINIMUM_TORCH}")
    if torch is None:
        raise MissingDependencyError("PyTorch was not installed; LabelReg needs it to register images. " + problem)
    problem = torchProblem()
    if problem:
        raise MissingDependencyError(problem)

"""PyTorch for the module: checked when a registration starts, never at import.

PyTorch builds are several GB and depend on the GPU driver, so LabelReg never pip-installs
torch silently: it uses the PyTorch extension (``PyTorchUtils``, declared in
``EXTENSION_DEPENDS``), which picks the right build and asks the user first. In testing mode
nothing is installed; a missing torch is reported as an error the user can act on.
"""
from __future__ import annotations

import importlib.util

from labelreg.errors import LabelRegError  # labelreg/__init__ and errors import no torch

MINIMUM_TORCH = "2.1"
INSTALL_HINT = (
    "PyTorch is not installed. Install the 'PyTorch' extension from the Extensions Manager "
    "(LabelReg depends on it), then press Register again: LabelReg will offer to install the "
    f"PyTorch build that suits this computer (torch>={MINIMUM_TORCH}, a download of up to a few GB)."
)


class MissingDependencyError(LabelRegError):
    """torch is missing or too old; the message says how to install it."""


def torchAvailable() -> bool:
    return importlib.util.find_spec("torch") is not None


def requireTorch() -> None:
    """Raise :class:`MissingDependencyError` (with installation advice) when torch is missing."""
    if not torchAvailable():
        raise MissingDependencyError(INSTALL_HINT)


def ensureTorch(askConfirmation: bool = True, testing: bool = False) -> None:
    """Offer to install torch through the PyTorch extension (GUI path, on Register).

    Installs nothing in testing mode or when the PyTorch extension is absent; raises
    :class:`MissingDependencyError` when torch is still unavailable afterwards.
    """
    if torchAvailable():
        return
    if testing:
        raise MissingDependencyError(INSTALL_HINT)
    try:
        import PyTorchUtils  # provided by the PyTorch extension
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=askConfirmation, torchVersionRequirement=f">={MINIMUM_TORCH}")
    if torch is None:
        raise MissingDependencyError("PyTorch was not installed; LabelReg needs it to register images. " + INSTALL_HINT)

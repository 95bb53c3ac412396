"""Model files: ``<name>.pt`` (``{format_version, config, state_dict}``, read with
``torch.load(weights_only=True)``) and a ``<name>.json`` sidecar holding the metadata
(architecture, training spacing, normalisation, data provenance, metrics) and the sha256 of
the ``.pt`` file, which is verified before loading.

Files of an older format load with what they record; an option a newer format removed loads when
it holds the value under which it changed nothing, and is refused, in one line naming the file
and the option, when it does not (:func:`labelreg.model.retire_options`)."""
from __future__ import annotations

import hashlib
import io as _io
import json
from pathlib import Path

import torch

from . import resources
from .errors import LabelRegError
from .io import AtomicFile
from .model import FORMAT_VERSION, ModelConfig, RegistrationModel, RetiredOptionError


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def save_model(path, model: RegistrationModel, metadata: dict | None = None) -> Path:
    """Write the weights and the sidecar atomically; returns the ``.pt`` path."""
    path = Path(path)
    buffer = _io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "state_dict": state}, buffer)
    with AtomicFile(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    meta = dict(metadata or {})
    meta.update({
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "weights_file": path.name,
        "sha256": sha256_of(path),
        "size_bytes": path.stat().st_size,
    })
    with AtomicFile(sidecar_path(path)) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_metadata(path) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        raise LabelRegError(f"{side}: metadata file missing; a model needs its .json sidecar beside the .pt file")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise LabelRegError(f"{side}: unreadable model metadata ({exc})") from None


def load_model(path=None, map_location="cpu") -> tuple[RegistrationModel, dict]:
    """Load a model file after checking its sha256; returns (model in eval mode, metadata)."""
    path = Path(path) if path is not None else resources.BUNDLED_MODEL_FILE
    if not path.exists():
        bundled = path == resources.BUNDLED_MODEL_FILE
        hint = " (the bundled model has not been installed with the module)" if bundled else ""
        raise LabelRegError(f"{path}: model file not found{hint}")
    metadata = read_metadata(path)
    actual = sha256_of(path)
    if metadata.get("sha256") != actual:
        raise LabelRegError(
            f"{path}: weights do not match the sha256 in {sidecar_path(path).name} "
            f"(expected {str(metadata.get('sha256'))[:12]}..., got {actual[:12]}...); "
            "the file is corrupt or was changed: reinstall or re-export the model"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        raise LabelRegError(f"{path}: not a readable LabelReg model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict) or {"config", "state_dict"} - checkpoint.keys():
        raise LabelRegError(f"{path}: not a LabelReg model file (needs 'config' and 'state_dict')")
    if checkpoint.get("format_version", 0) > FORMAT_VERSION:
        raise LabelRegError(f"{path}: model format {checkpoint['format_version']} is newer than this LabelReg; update it")
    try:
        model = RegistrationModel(ModelConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RetiredOptionError as exc:  # a model of an option only an older LabelReg has
        raise LabelRegError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise LabelRegError(f"{path}: weights do not match the architecture in the file: {first}") from None
    model.eval()
    return model, metadata

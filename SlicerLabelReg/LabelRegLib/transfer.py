"""How a registration travels between Slicer and the worker process (``registration_worker.py``).

Arrays go as ``.npy`` files in a job folder (lossless, any dtype, no pickling); everything else
(grids, settings, numbers) goes in the JSON message, where floats round-trip exactly. The
parent writes the request's arrays, the worker writes the outcome's arrays into the same
folder, and the parent deletes the folder once it has read them.

Used on both sides; no ``slicer`` import.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from labelreg.grid import Grid
from labelreg.volume import Volume

from LabelRegLib.inference import RegistrationOutcome, RegistrationRequest, WorkerResult

#: the request's volumes: (message key, RegistrationRequest attribute)
REQUEST_VOLUMES = (("fixed", "fixed"), ("moving", "moving"), ("movingLabels", "movingLabels"),
                   ("fixedLabels", "fixedLabels"))
#: the result's arrays on the fixed grid
RESULT_ARRAYS = ("ddf_lps", "warped_moving", "warped_labels")


def gridToJson(grid: Grid) -> dict:
    return {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin),
            "direction": list(grid.direction)}


def gridFromJson(data: dict) -> Grid:
    return Grid(tuple(data["size"]), tuple(data["spacing"]), tuple(data["origin"]), tuple(data["direction"]))


def writeArray(folder: Path, key: str, array: np.ndarray) -> str:
    name = f"{key}.npy"
    np.save(Path(folder) / name, np.ascontiguousarray(array), allow_pickle=False)
    return name


def readArray(folder: Path, name: str) -> np.ndarray:
    return np.load(Path(folder) / name, allow_pickle=False)


def writeVolume(folder: Path, key: str, volume: Volume) -> dict:
    return {"file": writeArray(folder, key, volume.array), "grid": gridToJson(volume.grid), "name": volume.name}


def readVolume(folder: Path, data: dict) -> Volume:
    return Volume(readArray(folder, data["file"]), gridFromJson(data["grid"]), data["name"])


def writeRequest(folder: Path, request: RegistrationRequest) -> dict:
    """Parent side: the request's arrays into ``folder``; returns the JSON part of the message."""
    message = {"mode": request.mode, "device": request.device, "modelPath": request.modelPath}
    for key, attribute in REQUEST_VOLUMES:
        volume = getattr(request, attribute)
        message[key] = None if volume is None else writeVolume(folder, key, volume)
    return message


def readRequest(folder: Path, message: dict) -> RegistrationRequest:
    """Worker side: the request the parent wrote (no scene context)."""
    volumes = {attribute: None if message[key] is None else readVolume(folder, message[key])
               for key, attribute in REQUEST_VOLUMES}
    return RegistrationRequest(mode=message["mode"], device=message["device"], modelPath=message["modelPath"],
                               **volumes)


def writeOutcome(folder: Path, outcome: RegistrationOutcome) -> dict:
    """Worker side: the outcome's arrays into ``folder``; returns the JSON part of the message."""
    result = outcome.result
    arrays = {key: None if getattr(result, key) is None else writeArray(folder, f"out-{key}", getattr(result, key))
              for key in RESULT_ARRAYS}
    initial = getattr(result, "initial_lps", None)
    return {
        "seconds": outcome.seconds, "device": outcome.device, "notes": list(outcome.notes),
        "metrics": outcome.metrics, "arrays": arrays,
        "affine_lps": np.asarray(result.affine_lps, dtype=np.float64).tolist(),
        "initial_lps": None if initial is None else np.asarray(initial, dtype=np.float64).tolist(),
        "fixed_grid": gridToJson(result.fixed_grid), "mode": result.mode, "result_device": str(result.device),
        "timings": dict(result.timings), "warnings": list(result.warnings),
        "confidence": result.confidence, "verdict": result.verdict,
        "confidence_features": dict(result.confidence_features),
    }


def readOutcome(folder: Path, message: dict) -> RegistrationOutcome:
    """Parent side: the outcome the worker wrote."""
    arrays = {key: None if name is None else readArray(folder, name) for key, name in message["arrays"].items()}
    initial = message["initial_lps"]
    result = WorkerResult(
        affine_lps=np.asarray(message["affine_lps"], dtype=np.float64), fixed_grid=gridFromJson(message["fixed_grid"]),
        mode=message["mode"], device=message["result_device"], timings=message["timings"],
        initial_lps=None if initial is None else np.asarray(initial, dtype=np.float64),
        warnings=message["warnings"], confidence=message["confidence"], verdict=message["verdict"],
        confidence_features=message["confidence_features"], **arrays)
    return RegistrationOutcome(result, message["seconds"], message["device"], message["notes"], message["metrics"])

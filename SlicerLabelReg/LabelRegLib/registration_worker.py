"""The LabelReg registration worker: a Python process of its own that keeps the models loaded and
registers the pairs the Slicer module sends it (the parent side is ``process.py``).

    PythonSlicer LabelRegLib/registration_worker.py     (in Slicer; any Python with the library)

Why a process: under PythonQt a Python thread barely runs while Slicer idles, a process can be
killed on Cancel, and a crash in torch leaves Slicer running. It imports the ``labelreg``
library and ``LabelRegLib.inference``, never ``slicer``, ``qt`` or ``vtk``.

Protocol, one JSON object per line. On stdin, ``{"command": "register", "job": n, "folder":
..., <transfer.writeRequest fields>}``. On stdout, ``{"event": "started", "pid"}`` at once,
``{"event": "ready", "torch", "importSeconds"}`` once torch and the library are imported, then
per job ``accepted``, ``progress`` (``fraction``, ``message``), and ``done`` (the
``transfer.writeOutcome`` fields) or ``error`` (``kind``: "input" for a
:class:`labelreg.errors.LabelRegError`, else "internal"; ``message``, ``detail``). Jobs run one
at a time, in order. Closing stdin ends the worker at once, even in the middle of a job. Anything
else written to stdout or stderr (warnings, prints) goes to stderr, which the parent keeps in a
log file.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # holds labelreg/ and LabelRegLib/


def _protocolChannel():
    """A line-buffered copy of stdout for the protocol; fd 1 itself is pointed at stderr, so that
    stray prints (of this or of native code) cannot corrupt the messages."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    lock = threading.Lock()

    def send(**message):
        line = json.dumps(message)
        with lock:
            channel.write(line + "\n")
            channel.flush()

    return send


def _readCommands(commands: queue.Queue) -> None:
    """Thread: stdin lines into ``commands``; at end of input (the parent closed the pipe, or
    died) the process exits at once."""
    for line in sys.stdin:
        if line.strip():
            commands.put(json.loads(line))
    os._exit(0)


def _register(engines, command: dict, send) -> None:
    from labelreg.errors import LabelRegError

    from LabelRegLib import transfer

    job, folder = command["job"], Path(command["folder"])
    send(event="accepted", job=job)
    try:
        request = transfer.readRequest(folder, command)
        outcome = engines.run(request, lambda f, m: send(event="progress", job=job, fraction=float(f), message=str(m)))
        send(event="done", job=job, **transfer.writeOutcome(folder, outcome))
    except LabelRegError as exc:
        send(event="error", job=job, kind="input", message=str(exc), detail="")
    except Exception as exc:  # noqa: BLE001 - every failure goes back to Slicer as a message
        detail = traceback.format_exc()
        print(detail, file=sys.stderr, flush=True)
        send(event="error", job=job, kind="internal", message=f"{type(exc).__name__}: {exc}", detail=detail)


def main() -> int:
    start = time.perf_counter()
    sys.path[0:1] = [str(MODULE_DIR)]  # run by path: replace this file's folder by the module's
    send = _protocolChannel()
    send(event="started", pid=os.getpid())
    commands: queue.Queue = queue.Queue()
    threading.Thread(target=_readCommands, args=(commands,), name="LabelRegWorkerInput", daemon=True).start()

    import torch

    from LabelRegLib.inference import EngineCache

    send(event="ready", torch=torch.__version__, importSeconds=time.perf_counter() - start)
    engines = EngineCache()
    while True:
        command = commands.get()
        if command.get("command") == "register":
            _register(engines, command, send)
        elif command.get("command") == "quit":
            return 0
        else:
            print(f"LabelReg worker: unknown command {command!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""The parent side of the registration worker process (``registration_worker.py``).

:class:`WorkerProcess` starts the worker on first use with Slicer's own Python, sends it
requests (arrays as ``.npy`` files in a job folder, see ``transfer.py``; the folder is in shared
memory, ``/dev/shm``, when there is room, so the files never touch a disk) and reads its messages
without blocking, on the calling (main) thread: no Python thread is involved on POSIX, so
nothing depends on PythonQt releasing the GIL. Messages are dispatched to the job objects given
to :meth:`WorkerProcess.submit` (``accepted()``, ``progress(fraction, message)``,
``finish(outcome)``, ``fail(exception)``).

:meth:`WorkerProcess.kill` stops the worker at once (Cancel); a worker that dies is noticed by
the next :meth:`WorkerProcess.pump` and its jobs fail with one line (:class:`WorkerStopped`);
the next submit starts a fresh worker. A job the dead worker had not accepted yet is sent to
the fresh one.

No ``slicer``, ``qt`` or ``torch`` import here.
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER_SCRIPT = Path(__file__).resolve().with_name("registration_worker.py")
LOG_NAME = "worker.log"


class WorkerStopped(RuntimeError):
    """The worker process ended before finishing a job (it crashed or was killed)."""


def findPython(searchDirs=(), fallback: str | None = None) -> tuple:
    """(executable, isSlicerLauncher) of the Python that runs the worker: ``PythonSlicer`` in one
    of ``searchDirs`` (in Slicer: beside the application executable, or ``<Slicer home>/bin``),
    else ``fallback`` (``sys.executable``: slicer-core, tests, a plain Python)."""
    names = ("PythonSlicer.exe", "PythonSlicer") if os.name == "nt" else ("PythonSlicer",)
    for folder in searchDirs:
        for name in names:
            if folder and os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name), True
    fallback = fallback or sys.executable
    if not fallback or not os.path.isfile(fallback):
        raise WorkerStopped("LabelReg cannot find a Python to run its registration worker (PythonSlicer)")
    return fallback, False


SHARED_MEMORY = "/dev/shm"


def slicerPython(slicer) -> tuple:
    """(executable, environment) for the worker in a Slicer application (the ``slicer`` module):
    PythonSlicer beside the application executable or in ``<Slicer home>/bin``, run in Slicer's
    startup environment (its launcher sets up the rest); else (slicer-core, tests) this
    process's Python in this process's environment."""
    app, folders = slicer.app, []
    if hasattr(app, "applicationFilePath"):
        folders.append(os.path.dirname(app.applicationFilePath()))
    if getattr(app, "slicerHome", ""):
        folders.append(os.path.join(app.slicerHome, "bin"))
    python, launcher = findPython(folders)
    return python, (slicer.util.startupEnvironment() if launcher else None)


def _jobRoot(request, fallback: str) -> str:
    """Where a job's folder goes: shared memory (Linux) when it has room for the job's arrays
    twice over (containers often give it only 64 MB), else ``fallback`` (the temp folder)."""
    if not (os.path.isdir(SHARED_MEMORY) and os.access(SHARED_MEMORY, os.W_OK)):
        return fallback
    volumes = [v for v in (request.fixed, request.moving, request.movingLabels, request.fixedLabels) if v is not None]
    channels = 0 if request.movingLabels is None else len(request.movingLabels.channels)
    need = sum(v.array.nbytes for v in volumes) + 4 * request.fixed.array.size * (4 + channels)
    try:
        free = shutil.disk_usage(SHARED_MEMORY).free
    except OSError:
        return fallback
    return SHARED_MEMORY if free > 2 * need else fallback


class _LineReader:
    """Complete lines from a pipe, without blocking: non-blocking reads on POSIX; on Windows a
    reader thread (anonymous pipes cannot be polled there)."""

    def __init__(self, stream):
        self._stream, self._buffer, self.eof = stream, b"", False
        self._queue = None
        if os.name == "posix":
            os.set_blocking(stream.fileno(), False)
        else:  # pragma: no cover - Windows
            import queue
            import threading

            self._queue = queue.Queue()
            threading.Thread(target=self._readAll, daemon=True, name="LabelRegWorkerOutput").start()

    def _readAll(self):  # pragma: no cover - Windows
        for line in iter(self._stream.readline, b""):
            self._queue.put(line)
        self._queue.put(None)

    def wait(self, timeout: float) -> None:
        """Return when there may be something to read, or after ``timeout`` seconds."""
        if timeout <= 0 or self.eof:
            return
        if self._queue is None:
            import select

            select.select([self._stream], [], [], timeout)
        else:  # pragma: no cover - Windows
            import queue

            try:
                self._buffer += self._queue.get(timeout=timeout) or b""
            except queue.Empty:
                pass

    def lines(self) -> list:
        if self._queue is None:
            while not self.eof:
                try:
                    chunk = os.read(self._stream.fileno(), 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    self.eof = True
                self._buffer += chunk
        else:  # pragma: no cover - Windows
            while not self._queue.empty():
                chunk = self._queue.get()
                self.eof = self.eof or chunk is None
                self._buffer += chunk or b""
        *complete, self._buffer = self._buffer.split(b"\n")
        return [line for line in complete if line.strip()]


class WorkerProcess:
    """One registration worker process, started on first use and restarted after it stopped.

    Args:
        python: callable returning ``(executable, environment or None)``; called at each start.
        script: the worker script.
    """

    def __init__(self, python=None, script: Path = WORKER_SCRIPT):
        self._python = python or (lambda: (findPython()[0], None))
        self._script = Path(script)
        self._proc = self._reader = self._folder = None
        self._jobs = {}  # job id -> job, sent and not finished
        self._jobFolders = set()  # job folders not yet removed (also of cancelled jobs)
        self._ids = itertools.count(1)
        self.pid = None  # the worker's own process id (differs from the launcher's with PythonSlicer)
        self.starts = 0
        self.startedAt = self.readyAt = None

    # ------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def startSeconds(self) -> float | None:
        """Seconds from starting the process to the worker's ready message (torch imported)."""
        return None if self.readyAt is None else self.readyAt - self.startedAt

    def logTail(self, lines: int = 20) -> str:
        try:
            text = (Path(self._folder) / LOG_NAME).read_text(errors="replace")
        except (OSError, TypeError):
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    # ------------------------------------------------------------ start, stop
    def start(self) -> None:
        """Start the worker unless it runs (it imports torch in the background)."""
        if self.running:
            return
        self._discard()
        executable, env = self._python()
        self._folder = tempfile.mkdtemp(prefix="LabelReg-worker-")
        with open(Path(self._folder) / LOG_NAME, "wb") as log:
            self._proc = subprocess.Popen(
                [executable, str(self._script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=env, cwd=self._folder, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self._reader = _LineReader(self._proc.stdout)
        self.pid, self.readyAt, self.startedAt = self._proc.pid, None, time.perf_counter()
        self.starts += 1
        _live.add(self)

    def kill(self) -> None:
        """Stop the worker now; its unfinished jobs fail with :class:`WorkerStopped`."""
        if self._proc is None:
            return
        pids = {self.pid} - {self._proc.pid, None}  # the worker itself, when a launcher started it
        for pid in pids:
            try:
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            except OSError:
                pass
        self._proc.kill()
        self._closePipes()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            pass
        self._stopped("The registration worker was stopped")

    def close(self, timeout: float = 2.0) -> None:
        """End the worker: close its input (it exits at once), kill it if it lingers."""
        if self._proc is None:
            return
        self._closePipes()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._stopped("The registration worker was closed")

    def _closePipes(self):
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _stopped(self, reason: str) -> None:
        """The process is gone: fail its jobs (resending those it never accepted) and clean up."""
        code = self._proc.poll() if self._proc is not None else None
        jobs, self._jobs = self._jobs, {}
        ready = self.readyAt is not None
        tail = self.logTail(1)
        self._discard()
        retry = [job for job in jobs.values() if ready and not job.accepted and not job.resent]
        for job in jobs.values():
            if job in retry:
                continue
            detail = f" (exit code {code})" if code not in (None, 0) else ""
            if tail and not ready:
                detail += f": {tail}"
            job.fail(WorkerStopped(f"{reason}{detail}; the scene was not changed. Register again to start a new one."))
        for job in retry:
            job.resent = True
            self.submit(job.request, job)

    def _discard(self):
        if self._proc is not None:
            self._closePipes()
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        for folder in [self._folder, *self._jobFolders]:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        self._jobFolders.clear()
        self._proc = self._reader = self._folder = None
        _live.discard(self)

    # ---------------------------------------------------------------- jobs
    def submit(self, request, job) -> None:
        """Send ``request`` (a RegistrationRequest); ``job`` receives its messages."""
        from LabelRegLib import transfer

        self.start()
        job.id = next(self._ids)
        job.folder = Path(tempfile.mkdtemp(prefix=f"LabelReg-job-{job.id}-", dir=_jobRoot(request, self._folder)))
        self._jobFolders.add(job.folder)
        message = {"command": "register", "job": job.id, "folder": str(job.folder)}
        message.update(transfer.writeRequest(job.folder, request))
        job.request, job.accepted = request, False
        job.resent = getattr(job, "resent", False)
        self._jobs[job.id] = job
        try:
            self._proc.stdin.write((json.dumps(message) + "\n").encode())
            self._proc.stdin.flush()
        except OSError:  # the worker died since start(): pump() notices it
            pass

    def forget(self, job) -> None:
        """Drop a job's messages (it was cancelled); the worker may still be running it."""
        self._jobs.pop(getattr(job, "id", None), None)

    def pump(self, timeout: float = 0.0) -> None:
        """Read the worker's messages (waiting up to ``timeout`` seconds for one) and dispatch
        them; notice a worker that stopped."""
        if self._proc is None:
            return
        self._reader.wait(timeout)
        for line in self._reader.lines():
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict) and "event" in message:
                self._dispatch(message)
            else:  # e.g. a launcher's own output
                logging.getLogger(__name__).info("LabelReg worker: %s", line.decode(errors="replace"))
        if self._proc is not None and (self._reader.eof or self._proc.poll() is not None):
            self._proc.wait()
            self._stopped("The registration worker stopped unexpectedly")

    def _dispatch(self, message: dict) -> None:
        from labelreg.errors import LabelRegError

        from LabelRegLib import transfer

        event = message["event"]
        if event == "started":
            self.pid = message["pid"]
        elif event == "ready":
            self.readyAt = time.perf_counter()
        job = self._jobs.get(message.get("job"))
        if job is None:
            return
        if event == "accepted":
            job.accepted = True
        elif event == "progress":
            job.progress(message["fraction"], message["message"])
        elif event in ("done", "error"):
            del self._jobs[job.id]
            try:
                if event == "done":
                    job.finish(transfer.readOutcome(job.folder, message))
                elif message["kind"] == "input":
                    job.fail(LabelRegError(message["message"]))
                else:
                    error = RuntimeError(f"Registration failed in the worker: {message['message']}")
                    error.detail = message["detail"]
                    job.fail(error)
            finally:
                shutil.rmtree(job.folder, ignore_errors=True)
                self._jobFolders.discard(job.folder)


# ------------------------------------------------------------- shared worker
_live = set()  # started workers, stopped when Python exits
_shared = {}


def sharedWorker(python=None) -> WorkerProcess:
    """The worker shared by every LabelReg Logic of this application (one model cache, one
    process); ``python`` is used when the first caller creates it."""
    if "worker" not in _shared:
        _shared["worker"] = WorkerProcess(python)
    return _shared["worker"]


@atexit.register
def _stopAll():
    for worker in list(_live):
        worker.close(timeout=1.0)

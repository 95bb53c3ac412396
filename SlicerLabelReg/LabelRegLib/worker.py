"""Background registration without freezing Slicer, and live-update coalescing.

A job has three steps: ``prepare()`` (main thread: snapshot the scene into plain arrays),
``compute(request, progress, cancel)`` (a Python thread: the network; torch releases the GIL)
and ``apply(request, outcome)`` (main thread: write the output nodes). At most one job is in
flight; a job submitted meanwhile waits in a single slot, and a newer one replaces it, so a
burst of frames costs at most two registrations and the newest frame always wins. Because
``prepare`` runs only when a job starts, the waiting job reads the newest frame.

Results reach the main thread through :meth:`LatestJobRunner.poll`: in Slicer a ``QTimer``
calls it every few tens of milliseconds while a job runs; scripts and tests call
:meth:`LatestJobRunner.wait`, which polls in a loop (the blocking path).

No ``slicer``, ``qt`` or ``torch`` import here.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class _Job:
    def __init__(self, prepare, compute, apply, onError):
        self.prepare, self.compute, self.apply, self.onError = prepare, compute, apply, onError
        self.cancelEvent = threading.Event()
        self.progress = (0.0, "waiting")
        self.request = self.outcome = self.error = None
        self.thread: threading.Thread | None = None
        self.startedAt = 0.0

    def _run(self):
        try:
            self.outcome = self.compute(self.request, self._progress, self.cancelEvent.is_set)
        except BaseException as exc:  # noqa: BLE001 - delivered to the main thread by poll()
            self.error = exc

    def _progress(self, fraction, message):
        self.progress = (float(fraction), str(message))


class LatestJobRunner:
    """Runs one job at a time in a thread; keeps only the newest waiting job.

    Args:
        timerFactory: optional callable returning a Qt-like timer (``timeout.connect``,
            ``start(ms)``, ``stop()``); it drives :meth:`poll` while a job runs.
        onProgress: ``onProgress(fraction, message, elapsedSeconds)`` on the main thread, for a
            running job that was not cancelled.
        onIdle: ``onIdle()`` on the main thread when the last job has finished or was cancelled.
        intervalMs: polling interval of the timer.
    """

    def __init__(self, timerFactory: Callable | None = None, onProgress: Callable | None = None,
                 onIdle: Callable | None = None, intervalMs: int = 50):
        self.onProgress = onProgress
        self.onIdle = onIdle
        self.intervalMs = intervalMs
        self.started = 0  # number of jobs started (tests count registrations with it)
        self._running: _Job | None = None
        self._pending: _Job | None = None
        self._timer = None
        if timerFactory is not None:
            self._timer = timerFactory()
            self._timer.timeout.connect(self.poll)

    @property
    def busy(self) -> bool:
        return self._running is not None or self._pending is not None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._running.startedAt if self._running else 0.0

    def submit(self, prepare: Callable, compute: Callable, apply: Callable, onError: Callable | None = None):
        """Queue a job; it starts now if nothing runs, else it replaces any waiting job."""
        job = _Job(prepare, compute, apply, onError)
        if self._running is None:
            self._start(job)
        else:
            self._pending = job
        if self._timer is not None:
            self._timer.start(self.intervalMs)

    def cancel(self) -> None:
        """Drop the waiting job and ask the running one to stop (its results are discarded)."""
        self._pending = None
        if self._running is not None:
            self._running.cancelEvent.set()

    def poll(self) -> bool:
        """Main thread: deliver a finished job, start the waiting one; returns ``busy``."""
        job = self._running
        if job is None and self._pending is None:
            return False
        if job is not None:
            if self.onProgress is not None and not job.cancelEvent.is_set():
                self.onProgress(job.progress[0], job.progress[1], self.elapsed)
            if job.thread.is_alive():
                return True
            self._running = None
            self._deliver(job)
        if self._running is None and self._pending is not None:
            job, self._pending = self._pending, None
            self._start(job)
        if not self.busy:
            if self._timer is not None:
                self._timer.stop()
            if self.onIdle is not None:
                self.onIdle()
        return self.busy

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits (the scripted path); returns False on timeout."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while self.poll():
            if self._running is not None:
                self._running.thread.join(0.02)
            if deadline is not None and time.perf_counter() > deadline:
                return False
        return True

    # ----------------------------------------------------------------- private
    def _start(self, job: _Job) -> None:
        job.startedAt = time.perf_counter()
        try:
            job.request = job.prepare()
        except Exception as exc:  # noqa: BLE001 - bad input: report it like a failed run
            job.error = exc
            self._deliver(job)
            return
        self.started += 1
        self._running = job
        job.thread = threading.Thread(target=job._run, name="LabelRegRegistration", daemon=True)
        job.thread.start()

    def _deliver(self, job: _Job) -> None:
        if job.cancelEvent.is_set():
            return  # cancelled: nothing is written to the scene
        if job.error is not None:
            if job.onError is None:
                raise job.error
            job.onError(job.error)
        else:
            try:
                job.apply(job.request, job.outcome)
            except Exception as exc:
                if job.onError is None:
                    raise
                job.onError(exc)

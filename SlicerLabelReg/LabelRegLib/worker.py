"""Registrations without freezing Slicer, and live-update coalescing, over the worker process.

A job has two steps in Slicer: ``prepare()`` (main thread: snapshot the scene into a
RegistrationRequest of plain arrays) and ``apply(request, outcome)`` (main thread: write the
output nodes); in between, the worker process (``process.py``) registers the pair. At most one
job is in flight; a job submitted meanwhile waits in a single slot, and a newer one replaces it,
so a burst of frames costs at most two registrations and the newest frame always wins. Because
``prepare`` runs only when a job starts, the waiting job reads the newest frame.

Results reach the main thread through :meth:`LatestJobRunner.poll`: in Slicer a ``QTimer``
calls it every few tens of milliseconds while a job runs; scripts and tests call
:meth:`LatestJobRunner.wait`. :meth:`LatestJobRunner.run` is the blocking path for one request.
:meth:`LatestJobRunner.cancel` kills the worker process: the job stops at once and the scene
is left as it was.

No ``slicer``, ``qt`` or ``torch`` import here.
"""
from __future__ import annotations

import time
from typing import Callable


class _Job:
    """One registration: what the worker process reports about it."""

    def __init__(self, prepare=None, apply=None, onError=None):
        self.prepare, self.apply, self.onError = prepare, apply, onError
        self.request = self.outcome = self.error = None
        self.progressValue = (0.0, "waiting for the worker")
        self.cancelled = self.accepted = self.resent = False
        self.startedAt = 0.0

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.error is not None

    def progress(self, fraction, message):
        self.progressValue = (float(fraction), str(message))

    def finish(self, outcome):
        self.outcome = outcome

    def fail(self, error):
        self.error = error


class LatestJobRunner:
    """Runs one job at a time in the worker process; keeps only the newest waiting job.

    Args:
        worker: callable returning the :class:`LabelRegLib.process.WorkerProcess` to use.
        timerFactory: optional callable returning a Qt-like timer (``timeout.connect``,
            ``start(ms)``, ``stop()``); it drives :meth:`poll` while a job runs.
        onProgress: ``onProgress(fraction, message, elapsedSeconds)`` on the main thread, for a
            running job.
        onIdle: ``onIdle()`` on the main thread when the last job has finished or was cancelled.
        intervalMs: polling interval of the timer.
    """

    def __init__(self, worker: Callable, timerFactory: Callable | None = None, onProgress: Callable | None = None,
                 onIdle: Callable | None = None, intervalMs: int = 20):
        self._worker = worker
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
    def process(self):
        """The worker process (started on the first job)."""
        return self._worker()

    @property
    def busy(self) -> bool:
        return self._running is not None or self._pending is not None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._running.startedAt if self._running else 0.0

    def submit(self, prepare: Callable, apply: Callable, onError: Callable | None = None) -> None:
        """Queue a job; it starts now if nothing runs, else it replaces any waiting job."""
        job = _Job(prepare, apply, onError)
        if self._running is None:
            self._start(job)
        else:
            self._pending = job
        if self._timer is not None and self.busy:
            self._timer.start(self.intervalMs)
        if not self.busy and self.onIdle is not None:
            self.onIdle()

    def cancel(self) -> None:
        """Drop the waiting job and stop the running one now (the worker process is killed and
        restarted on the next job); nothing is written to the scene."""
        self._pending = None
        job, self._running = self._running, None
        if job is not None:
            job.cancelled = True
            self.process.forget(job)
            self.process.kill()
        if self._timer is not None:
            self._timer.stop()
        if job is not None and self.onIdle is not None:
            self.onIdle()

    def poll(self) -> bool:
        """Main thread: read the worker's messages, deliver a finished job, start the waiting
        one; returns ``busy``."""
        if not self.busy:
            return False
        self.process.pump()
        job = self._running
        if job is not None:
            if not job.done:
                if self.onProgress is not None:
                    self.onProgress(job.progressValue[0], job.progressValue[1], self.elapsed)
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
                self.process.pump(0.05)
            if deadline is not None and time.perf_counter() > deadline:
                return False
        return True

    def run(self, request, progress: Callable | None = None, cancel: Callable | None = None):
        """Register ``request`` in the worker and return its outcome (blocking).

        ``progress(fraction, message)`` is called as the worker reports; ``cancel()`` is polled
        every few tens of milliseconds: returning True kills the worker and raises
        :class:`labelreg.errors.RegistrationCancelled`. Errors of the run are raised here.
        """
        from labelreg.errors import RegistrationCancelled

        job, reported = _Job(), None
        self.process.submit(request, job)
        while not job.done:
            if cancel is not None and cancel():
                self.process.forget(job)
                self.process.kill()
                raise RegistrationCancelled("registration cancelled")
            self.process.pump(0.02)
            if progress is not None and job.progressValue != reported and job.accepted:
                reported = job.progressValue
                progress(*reported)
        if job.error is not None:
            raise job.error
        return job.outcome

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
        try:
            self.process.submit(job.request, job)
        except Exception as exc:  # noqa: BLE001 - e.g. no Python to start the worker with
            self._running = None
            job.error = exc
            self._deliver(job)

    def _deliver(self, job: _Job) -> None:
        if job.cancelled:
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

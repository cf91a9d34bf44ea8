"""The job manager of the job server: the job table, the bounded FIFO queue, worker threads.

A job is one call of a *runner* (:mod:`rada.service.runners`): a plain callable
``runner(ctx: JobContext) -> JobOutput`` chosen by the job's kind (``segment``, ``train``).
The manager is given the runners, so tests and other deployments inject their own.

Runners report through ``ctx.progress(fraction, stage, message)`` (the pipeline's
signature) and stop at their next check once ``ctx.cancel`` is set, raising
:class:`rada.errors.CancelledError`. An :class:`~rada.errors.InputError` fails the job with
its message (``error_type: "input"``); any other exception fails it as an internal error
with a one-line summary (the traceback goes to the server log, not to the client).

At most ``max_workers`` jobs run at once (default 1: one GPU, no out-of-memory races);
the others wait in FIFO order. Each job owns a folder under the server's work folder; the
folder and the job are dropped ``result_ttl_s`` after the job finished, or earlier when
more than ``max_finished_jobs`` are kept, or on ``DELETE /jobs/{id}``.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import tempfile
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from rada.errors import CancelledError, InputError
from rada.service.codec import decode_nrrd, encode_nrrd
from rada.service.settings import ServiceSettings
from rada.volume import Volume

log = logging.getLogger("rada.service")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

MAX_EVENTS = 2000


class QueueFullError(RuntimeError):
    """More jobs are waiting than the server accepts."""


@dataclass
class JobOutput:
    """What a runner returns.

    Attributes:
        label: a label volume to serve as the job's result, or None.
        report: the JSON-ready report.
    """

    label: Volume | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobContext:
    """Everything a runner gets: its inputs, options, a private folder, progress and cancel.

    Attributes:
        job_id: the job id.
        kind: the job kind.
        options: the job's options.
        inputs: upload field name -> NRRD file in the job folder.
        workdir: private to this job, removed with it.
        progress: ``progress(fraction, stage, message)``.
        cancel: set when the job is cancelled (see :meth:`check_cancel`).
        settings: the server's settings.
    """

    job_id: str
    kind: str
    options: dict[str, Any]
    inputs: dict[str, Path]              # upload field name -> NRRD file in the job folder
    workdir: Path                        # private to this job, removed with it
    progress: Callable[[float, str, str], None]
    cancel: threading.Event
    settings: ServiceSettings

    def volume(self, name: str) -> Volume:
        """Decode the uploaded NRRD ``name``.

        Args:
            name: the upload's form field (``image``, ``annotation``).

        Returns:
            The volume, with its full geometry.

        Raises:
            InputError: the job has no such upload.
        """
        if name not in self.inputs:
            raise InputError(f"a {self.kind} job needs an uploaded '{name}' volume")
        return decode_nrrd(self.inputs[name].read_bytes(), self.settings.max_volume_bytes)

    def check_cancel(self) -> None:
        """Raise :class:`CancelledError` once the job has been cancelled (runners call it between steps)."""
        if self.cancel.is_set():
            raise CancelledError(f"{self.kind} job cancelled")


Runner = Callable[[JobContext], JobOutput]


@dataclass
class Job:
    """One job as the server keeps it (guarded by :attr:`JobManager.lock`).

    Attributes:
        id: the job id (a uuid4 hex).
        kind: the runner's name (``segment``, ``train``).
        options: the job's options from the request.
        workdir: the job's private folder (uploads, result), removed with the job.
        inputs: upload field name -> NRRD file in ``workdir``.
        created: submission time (``time.time()``).
        state: queued, running, done, failed or cancelled.
        stage: the current stage's name.
        fraction: progress in [0, 1].
        message: what the job is doing, or why it ended.
        error: a failed job's one-line error.
        error_type: ``input``, ``internal`` or ``cancelled``.
        started: when a worker took it, or None.
        finished: when it ended, or None.
        report: the runner's report once done.
        result_path: the encoded label volume once done, if the runner returned one.
        cancel: set to ask the runner to stop.
        deleted: ``DELETE`` came while it ran: it is dropped, with its folder, as soon as it stops.
        events: the last :data:`MAX_EVENTS` progress events.
        seq: number of the last event.
    """
    id: str
    kind: str
    options: dict[str, Any]
    workdir: Path
    inputs: dict[str, Path]
    created: float = field(default_factory=time.time)
    state: str = QUEUED
    stage: str = "queued"
    fraction: float = 0.0
    message: str = "waiting for a free worker"
    error: str | None = None
    error_type: str | None = None        # input | internal | cancelled
    started: float | None = None
    finished: float | None = None
    report: dict[str, Any] | None = None
    result_path: Path | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    deleted: bool = False
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    seq: int = 0

    def snapshot(self, position: int | None = None) -> dict[str, Any]:
        """The job's status as the API returns it (with the report once done).

        Args:
            position: its place in the waiting line, None unless queued.

        Returns:
            A JSON-ready dict.
        """
        out = {"id": self.id, "kind": self.kind, "state": self.state, "stage": self.stage,
               "fraction": round(self.fraction, 4), "message": self.message, "error": self.error,
               "error_type": self.error_type, "created": self.created, "started": self.started,
               "finished": self.finished, "queue_position": position, "seq": self.seq,
               "has_result": self.result_path is not None}
        if self.state == DONE:
            out["report"] = self.report
        return out


class JobManager:
    """The job table, the FIFO queue and ``max_workers`` worker threads."""

    def __init__(self, settings: ServiceSettings, runners: Mapping[str, Runner]):
        self.settings = settings
        self.runners = dict(runners)
        # The operator's work folder, or a private temporary one made on the first job.
        self._root: Path | None = Path(settings.work_dir) if settings.work_dir else None
        self._owns_root = False
        self.jobs: dict[str, Job] = {}
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.workers: list[threading.Thread] = []
        self.running = 0
        self.max_running_seen = 0        # for tests: proof that the bound holds
        self.closed = False

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start the ``max_workers`` worker threads (once; not after shutdown)."""
        with self.lock:
            if self.workers or self.closed:
                return
            for i in range(self.settings.max_workers):
                t = threading.Thread(target=self._work, name=f"rada-worker-{i}", daemon=True)
                t.start()
                self.workers.append(t)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every job, stop the workers, remove the job folders.

        Args:
            timeout: seconds to wait for the workers (running jobs stop at their next check).
        """
        with self.lock:
            self.closed = True
            for job in self.jobs.values():
                if job.state == QUEUED:
                    self._finish(job, CANCELLED, "cancelled", "server shutting down", "cancelled")
                job.cancel.set()
        for _ in self.workers:
            self.queue.put(None)
        deadline = time.monotonic() + timeout
        for t in self.workers:
            t.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            for job in list(self.jobs.values()):
                shutil.rmtree(job.workdir, ignore_errors=True)
            if self._owns_root and self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)

    @property
    def root(self) -> Path:
        """The folder of the job folders (made on first use; a private temporary one by default)."""
        with self.lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="rada-service-"))
                self._owns_root = True
                # Also removed if the server dies without a clean shutdown of the app.
                weakref.finalize(self, shutil.rmtree, str(self._root), True)
            self._root.mkdir(parents=True, exist_ok=True)
            return self._root

    # --- queries ----------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Queued, running and kept jobs, and the limits (for ``/health``).

        Returns:
            ``queued``, ``running``, ``max_workers``, ``max_queued`` and ``finished_kept``.
        """
        with self.lock:
            states = [j.state for j in self.jobs.values()]
            return {"queued": states.count(QUEUED), "running": states.count(RUNNING),
                    "max_workers": self.settings.max_workers, "max_queued": self.settings.max_queued,
                    "finished_kept": sum(s in FINISHED for s in states)}

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id`` (expired jobs dropped first), or None.

        Args:
            job_id: the job id.

        Returns:
            The :class:`Job`, or None when unknown or expired.
        """
        with self.lock:
            self._expire()
            return self.jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """0-based place in the waiting line.

        Args:
            job: the job.

        Returns:
            The place, or None unless the job is queued.
        """
        if job.state != QUEUED:
            return None
        with self.lock:
            waiting = sorted((j for j in self.jobs.values() if j.state == QUEUED), key=lambda j: j.created)
            return next(i for i, j in enumerate(waiting) if j.id == job.id)

    def status(self, job: Job) -> dict[str, Any]:
        """The job's snapshot with its queue position.

        Args:
            job: the job.

        Returns:
            The JSON-ready status (see :meth:`Job.snapshot`).
        """
        with self.lock:
            return job.snapshot(self.position(job))

    def events_after(self, job: Job, after: int) -> tuple[list[dict[str, Any]], bool]:
        """The job's events after ``after``.

        Args:
            job: the job.
            after: the last event ``seq`` the caller has seen.

        Returns:
            ``(events with seq > after, whether the job has finished)``.
        """
        with self.lock:
            return [e for e in job.events if e["seq"] > after], job.state in FINISHED

    def wait_change(self, job: Job, seq: int, timeout: float) -> None:
        """Block until the job changes after event ``seq``, finishes, or ``timeout`` seconds pass.

        Args:
            job: the job.
            seq: the last event the caller has seen.
            timeout: the longest wait, in seconds.
        """
        with self.changed:
            if job.seq == seq and job.state not in FINISHED:
                self.changed.wait(timeout)

    # --- changes ----------------------------------------------------------------------
    def new_job_dir(self) -> tuple[str, Path]:
        """A fresh job id and its folder (the uploads are stored there before :meth:`submit`).

        Returns:
            ``(job_id, folder)``; the folder is created.
        """
        job_id = uuid.uuid4().hex
        workdir = self.root / job_id
        workdir.mkdir(parents=True)
        return job_id, workdir

    def submit(self, job_id: str, workdir: Path, kind: str, options: dict[str, Any],
               inputs: dict[str, Path]) -> Job:
        """Queue a job (workers start on the first one).

        Args:
            job_id: from :meth:`new_job_dir`.
            workdir: its folder.
            kind: a runner's name.
            options: the job's options (the runner checks them).
            inputs: upload field name -> stored NRRD file.

        Returns:
            The queued job.

        Raises:
            InputError: an unknown kind.
            QueueFullError: too many jobs waiting, or the server is shutting down.
        """
        if kind not in self.runners:
            raise InputError(f"unknown job kind {kind!r}; this server runs: {', '.join(sorted(self.runners))}")
        with self.lock:
            if self.closed:
                raise QueueFullError("the server is shutting down")
            self._expire()
            waiting = sum(j.state == QUEUED for j in self.jobs.values())
            if waiting >= self.settings.max_queued + (self.settings.max_workers - self.running):
                raise QueueFullError(f"{waiting} jobs are already waiting (limit {self.settings.max_queued}); "
                                     f"try again later")
            job = Job(job_id, kind, options, workdir, inputs)
            self.jobs[job_id] = job
            self._event(job)
        self.start()
        self.queue.put(job_id)
        return job

    def cancel(self, job: Job) -> None:
        """Cancel a job: a queued one at once, a running one at the runner's next check.

        Args:
            job: the job (a finished one is left as it is).
        """
        with self.lock:
            if job.state == QUEUED:
                self._finish(job, CANCELLED, "cancelled", "cancelled before it started", "cancelled")
            elif job.state == RUNNING:
                job.cancel.set()
                job.message = "cancelling"
                self._event(job)

    def delete(self, job: Job) -> None:
        """Cancel the job; drop it and its folder now if it has stopped, else as soon as it stops.

        Args:
            job: the job.
        """
        self.cancel(job)
        with self.lock:
            if job.state in FINISHED:
                self._drop(job)
            else:
                job.deleted = True

    def _drop(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        shutil.rmtree(job.workdir, ignore_errors=True)

    def _expire(self) -> None:
        now = time.time()
        finished = sorted((j for j in self.jobs.values() if j.state in FINISHED), key=lambda j: j.finished or 0)
        excess = len(finished) - self.settings.max_finished_jobs
        for i, job in enumerate(finished):
            if i < excess or now - (job.finished or now) > self.settings.result_ttl_s:
                self._drop(job)

    def _event(self, job: Job) -> None:
        job.seq += 1
        job.events.append({"seq": job.seq, "time": time.time(), "state": job.state, "stage": job.stage,
                           "fraction": round(job.fraction, 4), "message": job.message, "error": job.error})
        self.changed.notify_all()

    def _progress(self, job: Job, fraction: float, stage: str, message: str) -> None:
        with self.lock:
            if job.state != RUNNING:
                return
            job.fraction = min(max(float(fraction), job.fraction), 1.0)  # never goes back
            job.stage, job.message = str(stage)[:100], str(message)[:500]
            self._event(job)

    def _finish(self, job: Job, state: str, stage: str, message: str, error_type: str | None = None,
                error: str | None = None) -> None:
        job.state, job.stage, job.message = state, stage, message
        job.error, job.error_type = error, error_type
        job.finished = time.time()
        if state == DONE:
            job.fraction = 1.0
        self._event(job)
        # Inputs are no longer needed once a job has finished: free the disk early.
        for path in job.inputs.values():
            path.unlink(missing_ok=True)
        if job.deleted:  # DELETE came while it ran
            self._drop(job)

    # --- the worker -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self.queue.get()
            if job_id is None:
                return
            with self.lock:
                job = self.jobs.get(job_id)
                if job is None or job.state != QUEUED:
                    continue
                job.state, job.stage, job.message, job.started = RUNNING, "starting", "started", time.time()
                self.running += 1
                self.max_running_seen = max(self.max_running_seen, self.running)
                self._event(job)
            try:
                self._run(job)
            finally:
                with self.lock:
                    self.running -= 1
                    self.changed.notify_all()

    def _run(self, job: Job) -> None:
        ctx = JobContext(job.id, job.kind, job.options, job.inputs, job.workdir,
                         lambda f, s, m: self._progress(job, f, s, m), job.cancel, self.settings)
        try:
            ctx.check_cancel()
            out = self.runners[job.kind](ctx)
            if job.cancel.is_set():  # finished its work but the user no longer wants it
                raise CancelledError(f"{job.kind} job cancelled")
            result_path = None
            if out.label is not None:
                result_path = job.workdir / "result.nrrd"
                result_path.write_bytes(encode_nrrd(out.label, compress=1))
            report = json.loads(json.dumps(out.report or {}, default=_json_default))
            with self.lock:
                job.report, job.result_path = report, result_path
                self._finish(job, DONE, "done", "finished")
        except CancelledError as exc:
            with self.lock:
                self._finish(job, CANCELLED, "cancelled", str(exc) or "cancelled", "cancelled")
        except InputError as exc:
            with self.lock:
                self._finish(job, FAILED, job.stage, "failed", "input", _one_line(str(exc)))
        except Exception as exc:  # noqa: BLE001 - any failure must end the job, not the worker
            log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            with self.lock:
                self._finish(job, FAILED, job.stage, "failed", "internal",
                             _one_line(f"{type(exc).__name__}: {exc}"))


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _json_default(obj: Any) -> Any:
    """JSON for what reports hold besides plain types: numpy values, paths (name only), the rest as text."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.name
    return str(obj)

"""Jobs, the bounded queue and the worker threads of the job server.

A job is one call of a *runner*: a plain callable ``runner(ctx: JobContext) -> JobOutput``
chosen by the job's kind (``segment``, ``train``). The app factory is given the runners, so
tests and other deployments inject their own; the default ones import :mod:`rada.pipeline`
and :mod:`rada.train` lazily, on the first job.

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
import re
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

from rada.errors import CancelledError, InputError
from rada.volume import Volume

log = logging.getLogger("rada.service")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

#: Names a client may give (models, datasets, upload fields): no separators, no dots first.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_EVENTS = 2000


class QueueFullError(RuntimeError):
    """More jobs are waiting than the server accepts."""


@dataclass
class JobOutput:
    """What a runner returns: an optional label volume and a JSON-ready report."""

    label: Volume | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobContext:
    """Everything a runner gets: its inputs, options, a private folder, progress and cancel."""

    job_id: str
    kind: str
    options: dict[str, Any]
    inputs: dict[str, Path]              # upload field name -> NRRD file in the job folder
    workdir: Path                        # private to this job, removed with it
    progress: Callable[[float, str, str], None]
    cancel: threading.Event
    settings: Any                        # rada.service.settings.ServiceSettings

    def volume(self, name: str) -> Volume:
        """Decode the uploaded NRRD ``name`` (InputError if the job has none)."""
        from rada.service.codec import decode_nrrd

        if name not in self.inputs:
            raise InputError(f"a {self.kind} job needs an uploaded '{name}' volume")
        return decode_nrrd(self.inputs[name].read_bytes(), self.settings.max_volume_bytes)

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise CancelledError(f"{self.kind} job cancelled")


Runner = Callable[[JobContext], JobOutput]


@dataclass
class Job:
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
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    seq: int = 0

    def snapshot(self, position: int | None = None) -> dict[str, Any]:
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

    def __init__(self, settings: Any, runners: Mapping[str, Runner]):
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
        with self.lock:
            if self.workers or self.closed:
                return
            for i in range(self.settings.max_workers):
                t = threading.Thread(target=self._work, name=f"rada-worker-{i}", daemon=True)
                t.start()
                self.workers.append(t)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every job, stop the workers, remove the job folders."""
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
        with self.lock:
            states = [j.state for j in self.jobs.values()]
            return {"queued": states.count(QUEUED), "running": states.count(RUNNING),
                    "max_workers": self.settings.max_workers, "max_queued": self.settings.max_queued,
                    "finished_kept": sum(s in FINISHED for s in states)}

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            self._expire()
            return self.jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """0-based place in the waiting line (None unless queued)."""
        if job.state != QUEUED:
            return None
        with self.lock:
            waiting = sorted((j for j in self.jobs.values() if j.state == QUEUED), key=lambda j: j.created)
            return next(i for i, j in enumerate(waiting) if j.id == job.id)

    def status(self, job: Job) -> dict[str, Any]:
        with self.lock:
            return job.snapshot(self.position(job))

    def events_after(self, job: Job, after: int) -> tuple[list[dict[str, Any]], bool]:
        """Events with ``seq > after`` and whether the job has finished."""
        with self.lock:
            return [e for e in job.events if e["seq"] > after], job.state in FINISHED

    def wait_change(self, job: Job, seq: int, timeout: float) -> None:
        with self.changed:
            if job.seq == seq and job.state not in FINISHED:
                self.changed.wait(timeout)

    # --- changes ----------------------------------------------------------------------
    def new_job_dir(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        workdir = self.root / job_id
        workdir.mkdir(parents=True)
        return job_id, workdir

    def submit(self, job_id: str, workdir: Path, kind: str, options: dict[str, Any],
               inputs: dict[str, Path]) -> Job:
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
        """Queued: cancelled at once. Running: the runner stops at its next check."""
        with self.lock:
            if job.state == QUEUED:
                self._finish(job, CANCELLED, "cancelled", "cancelled before it started", "cancelled")
            elif job.state == RUNNING:
                job.cancel.set()
                job.message = "cancelling"
                self._event(job)

    def delete(self, job: Job) -> None:
        self.cancel(job)
        with self.lock:
            if job.state in FINISHED:
                self._drop(job)

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
                from rada.service.codec import encode_nrrd

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
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return obj.name
    return str(obj)


# --- default runners ----------------------------------------------------------------------

SEGMENT_OPTIONS = {"preset": str, "device": str, "margin": int, "propagate": (bool, type(None)),
                   "model_weight": (int, float), "model": (str, type(None))}


def _check_options(options: Mapping[str, Any], allowed: Mapping[str, Any], kind: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"unknown {kind} option {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    for k, v in options.items():
        if isinstance(v, bool) and allowed[k] in (int, (int, float)) or not isinstance(v, allowed[k]):
            raise InputError(f"{kind} option {k!r} has the wrong type ({type(v).__name__})")
    return dict(options)


def resolve_model(settings: Any, name: str) -> Path:
    """A model name (a checkpoint in the server's models folder) -> its path; never a client path."""
    if not NAME_RE.match(name) or ".." in name:
        raise InputError(f"model must be a model name from GET /health, not a path: {name[:80]!r}")
    folder = settings.models_dir
    if folder is None:
        raise InputError("this server has no models folder (start it with --models-dir); run without a model")
    for candidate in (folder / name, folder / f"{name}.pt"):
        if candidate.is_file():
            return candidate
        if (candidate / "checkpoint.pt").is_file():
            return candidate / "checkpoint.pt"
    raise InputError(f"no model named {name!r} on this server")


def list_models(settings: Any) -> list[str]:
    folder = settings.models_dir
    if folder is None or not folder.is_dir():
        return []
    names = [p.stem for p in folder.glob("*.pt")] + [p.name for p in folder.iterdir()
                                                       if (p / "checkpoint.pt").is_file()]
    names = [n for n in names if not n.startswith(".")]
    return sorted(set(names))


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")


def check_segment_options(options: Mapping[str, Any], settings: Any) -> dict[str, Any]:
    """Validate a segment job's options when it is submitted, so a bad one is refused at once.

    Args:
        options: the client's options (names and types of :data:`SEGMENT_OPTIONS`).
        settings: the server's settings (for the models folder).

    Returns:
        The options, with ``model`` resolved to a checkpoint path.

    Raises:
        InputError: one line naming the option and what is allowed.
    """
    from rada.pipeline import PRESETS

    options = _check_options(options, SEGMENT_OPTIONS, "segment")
    if "preset" in options and options["preset"] not in PRESETS:
        raise InputError(f"unknown preset {options['preset'][:40]!r}; use one of {', '.join(PRESETS)}")
    if "device" in options and not _DEVICE_RE.match(options["device"]):
        raise InputError(f"unknown device {options['device'][:40]!r}; use auto, cpu, cuda or cuda:N")
    if not 0 <= options.get("margin", 0) <= 256:
        raise InputError(f"margin must be 0..256 voxels, got {options['margin']}")
    weight = options.get("model_weight", 1.0)
    if not (isinstance(weight, (int, float)) and 0 <= weight <= 100):
        raise InputError(f"model_weight must be a number in 0..100, got {weight!r}")
    if options.get("model"):
        options["model"] = str(resolve_model(settings, options["model"]))
    return options


class SegmentRunner:
    """The Segment button: uploads ``image`` + ``annotation``, options of :class:`SegmentConfig`.

    Keeps the annotation-independent work (registrations, model outputs) of the last few
    images, so that a refinement (the same image with more painted slices) is faster.
    """

    required_inputs = ("image", "annotation")
    check_options = staticmethod(check_segment_options)

    def __init__(self, max_images: int = 4) -> None:
        from collections import OrderedDict

        self.max_images = max_images
        self._caches: "OrderedDict[str, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def _cache_for(self, image: Any) -> Any:
        from rada.pipeline import SegmentCache, image_key

        key = image_key(image)
        with self._lock:
            cache = self._caches.pop(key, None) or SegmentCache()
            self._caches[key] = cache
            while len(self._caches) > self.max_images:
                self._caches.popitem(last=False)
        return cache

    def prepare(self, ctx: JobContext) -> tuple[Volume, Any, Any]:
        """Options checked, volumes decoded: the image, the annotation and the SegmentConfig."""
        from rada.annotation import as_annotation
        from rada.pipeline import SegmentConfig

        options = check_segment_options(ctx.options, ctx.settings)
        options.setdefault("device", ctx.settings.device)
        ctx.progress(0.0, "decode", "reading the uploaded volumes")
        image = ctx.volume("image")
        annotation = as_annotation(ctx.volume("annotation"), "annotation")  # a sparse annotation or a painting
        return image, annotation, SegmentConfig(**options).resolved()

    def __call__(self, ctx: JobContext) -> JobOutput:
        from rada.pipeline import segment_case

        image, annotation, config = self.prepare(ctx)
        ctx.check_cancel()
        result = segment_case(image, annotation, config, progress=ctx.progress,
                              cancel=ctx.cancel, cache=self._cache_for(image))
        report = dict(result.report)
        if "model" in report and isinstance(report["model"], dict):
            report["model"] = {k: v for k, v in report["model"].items() if k not in ("path", "checkpoint")}
        if isinstance(report.get("finetune"), dict) and "checkpoint" in report["finetune"]:  # no server paths in a report
            report["finetune"] = {**report["finetune"], "checkpoint": {
                k: v for k, v in report["finetune"]["checkpoint"].items() if k != "path"}}
        return JobOutput(result.label, report)

TRAIN_OPTIONS = {"dataset": str, "model_name": str, "iterations": int, "device": str, "seed": int,
                 "resume": bool, "checkpoint_every": int, "validate_every": int, "guidance": str, "config": dict}


def train_message(iteration: int, total: int, values: Mapping[str, Any], best: Mapping[str, Any]) -> str:
    """The train job's progress line: ``iteration i/N, loss x[, val dice d, hd95 h][, best b @ it]``
    (RADATrainerLib.logic parses it for the live curves)."""
    import math

    text = f"iteration {iteration}/{total}, loss {values.get('loss', 0.0):.4f}"
    dice = values.get("val_dice")
    if dice is not None and math.isfinite(dice):
        hd = values.get("val_hd95")
        text += f", val dice {dice:.4f}" + (f", hd95 {hd:.2f}" if hd is not None and math.isfinite(hd) else "")
    if best.get("best_dice") is not None:
        text += f", best {best['best_dice']:.4f} @ {best['best_iteration']}"
    return text


def train_config_from_options(options: Mapping[str, Any], settings: Any) -> Any:
    """The job's :class:`rada.train.TrainConfig`: ``config`` (a partial nested TrainConfig) then
    the plain options on top; validated (one-line :class:`InputError`)."""
    import dataclasses

    from rada.train import TrainConfig

    config = TrainConfig.from_dict(options.get("config") or {}, TrainConfig(device=settings.device))
    plain = {k: options[k] for k in ("device", "seed", "checkpoint_every", "validate_every") if k in options}
    config = dataclasses.replace(config, progress=False, **plain)
    if "iterations" in options:
        config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule,
                                                                          iterations=options["iterations"]))
    return config.validate()


def run_train_job(ctx: JobContext) -> JobOutput:
    """Train on a dataset of the server's datasets folder; the best validated checkpoint (else
    the last) becomes a named model. Every option is checked before any expensive step."""
    from rada.train import train_dataset

    options = _check_options(ctx.options, TRAIN_OPTIONS, "train")
    settings = ctx.settings
    dataset = options.get("dataset")
    if not dataset or not NAME_RE.match(dataset) or ".." in dataset:
        raise InputError("train needs option 'dataset': the name of a dataset folder on the server")
    if settings.datasets_dir is None or not (settings.datasets_dir / dataset).is_dir():
        raise InputError(f"no dataset named {dataset!r} on this server")
    name = options.get("model_name") or dataset
    if not NAME_RE.match(name) or ".." in name:
        raise InputError(f"model_name {name[:80]!r} must be a plain name (letters, digits, '.', '_', '-')")
    if settings.models_dir is None:
        raise InputError("this server has no models folder (start it with --models-dir) to keep the model in")
    guidance = options.get("guidance", "auto")
    if guidance not in ("auto", "off"):
        raise InputError(f"train option 'guidance' must be auto or off, not {guidance[:40]!r}")
    config = train_config_from_options(options, settings)
    total = config.schedule.iterations
    run_dir = settings.models_dir / f".run-{name}" if options.get("resume") else ctx.workdir / "run"
    best: dict[str, Any] = {}

    def callback(iteration: int, values: dict) -> None:
        ctx.check_cancel()
        if "val_dice" in values:
            if best.get("best_dice") is None or values["val_dice"] > best["best_dice"]:
                best.update(best_dice=values["val_dice"], best_iteration=iteration)
        ctx.progress(iteration / total, "train", train_message(iteration, total, values, best))

    def progress(message: str) -> None:
        ctx.check_cancel()
        ctx.progress(0.0, "prepare", message)

    ctx.progress(0.0, "prepare", "checking the dataset and the settings")
    result = train_dataset(settings.datasets_dir / dataset, run_dir, config, guidance,
                           resume=bool(options.get("resume")), callback=callback, progress=progress)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    target = settings.models_dir / f"{name}.pt"
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(result.best or result.checkpoint, tmp)
    tmp.replace(target)
    history = [{k: h[k] for k in ("iteration", "dice", "hd95", "empty")} for h in result.validation.get("history", [])]
    return JobOutput(None, {"model": name, "iterations": result.iterations, "dataset": dataset,
                            "guidance": result.guidance, "selected": "best" if result.best else "last",
                            "validation": {"best_dice": result.validation.get("best_dice"),
                                           "best_iteration": result.validation.get("best_iteration"),
                                           "history": history}})


def check_train_options(options: Mapping[str, Any], settings: Any) -> dict[str, Any]:
    """Validate a train job's option names, types and ranges at submit (InputError: one line)."""
    options = _check_options(options, TRAIN_OPTIONS, "train")
    for key in ("iterations", "checkpoint_every", "validate_every"):
        if key in options and options[key] < 1:
            raise InputError(f"{key} must be at least 1, got {options[key]}")
    if options.get("guidance", "auto") not in ("auto", "off"):
        raise InputError(f"train option 'guidance' must be auto or off, not {options['guidance'][:40]!r}")
    if "device" in options and not _DEVICE_RE.match(options["device"]):
        raise InputError(f"unknown device {options['device'][:40]!r}; use auto, cpu, cuda or cuda:N")
    return options


run_train_job.required_inputs = ()  # type: ignore[attr-defined]
run_train_job.check_options = check_train_options  # type: ignore[attr-defined]


def default_runners() -> dict[str, Runner]:
    return {"segment": SegmentRunner(), "train": run_train_job}

"""The job server's runners: what a ``segment`` and a ``train`` job do.

Each runner checks its options when the job is submitted (``check_options``: a bad one is
refused with 422 before it queues) and again when it runs; clients name models and
datasets, never server paths (:func:`resolve_model`). The job manager
(:mod:`rada.service.manager`) runs them; :func:`default_runners` is what ``rada serve`` uses.

:mod:`rada.pipeline` (scikit-learn, ANTs) is imported by the functions that
segment, not by this module: the service and its API import with the server's packages
alone (CI runs the service tests so under the oldest Slicer's Python).
"""

from __future__ import annotations

import math
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from rada.annotation import as_annotation
from rada.errors import InputError
from rada.safe_write import atomic_path
from rada.service.manager import JobContext, JobOutput, Runner
from rada.service.settings import ServiceSettings
from rada.volume import Volume

if TYPE_CHECKING:
    from rada.pipeline import SegmentCache, SegmentConfig

#: Names a client may give (models, datasets, upload fields): no separators, no dots first.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SEGMENT_OPTIONS = {"preset": str, "device": str, "margin": int, "propagate": (bool, type(None)),
                   "model_weight": (int, float), "model": (str, type(None))}


def _check_options(options: Mapping[str, Any], allowed: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Option names and types against ``allowed`` (name -> type); a copy of the options."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"unknown {kind} option {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    for k, v in options.items():
        if isinstance(v, bool) and allowed[k] in (int, (int, float)) or not isinstance(v, allowed[k]):
            raise InputError(f"{kind} option {k!r} has the wrong type ({type(v).__name__})")
    return dict(options)


def resolve_model(settings: ServiceSettings, name: str) -> Path:
    """A model name (a checkpoint in the server's models folder) -> its path; never a client path.

    Args:
        settings: the server's settings (its models folder).
        name: ``NAME`` for ``NAME.pt`` or ``NAME/checkpoint.pt`` in the models folder.

    Returns:
        The checkpoint's path.

    Raises:
        InputError: a path instead of a name, no models folder, or no such model.
    """
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


def list_models(settings: ServiceSettings) -> list[str]:
    """The model names a client may ask for (``GET /health``), sorted.

    Args:
        settings: the server's settings (its models folder).

    Returns:
        The names; none without a models folder.
    """
    folder = settings.models_dir
    if folder is None or not folder.is_dir():
        return []
    names = [p.stem for p in folder.glob("*.pt")] + [p.name for p in folder.iterdir()
                                                       if (p / "checkpoint.pt").is_file()]
    names = [n for n in names if not n.startswith(".")]
    return sorted(set(names))


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")


def check_segment_options(options: Mapping[str, Any], settings: ServiceSettings) -> dict[str, Any]:
    """Validate a segment job's options when it is submitted, so a bad one is refused at once.

    Args:
        options: the client's options (names and types of :data:`SEGMENT_OPTIONS`).
        settings: the server's settings (for the models folder).

    Returns:
        The options, with ``model`` resolved to a checkpoint path.

    Raises:
        InputError: one line naming the option and what is allowed.
    """
    from rada.pipeline import PRESETS  # lazy (module docstring)

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
        self.max_images = max_images
        self._caches: OrderedDict[str, SegmentCache] = OrderedDict()
        self._lock = threading.Lock()

    def _cache_for(self, image: Volume) -> SegmentCache:
        from rada.pipeline import SegmentCache, image_key  # lazy (module docstring)

        key = image_key(image)
        with self._lock:
            cache = self._caches.pop(key, None) or SegmentCache()
            self._caches[key] = cache
            while len(self._caches) > self.max_images:
                self._caches.popitem(last=False)
        return cache

    def prepare(self, ctx: JobContext) -> tuple[Volume, Any, SegmentConfig]:
        """Options checked, volumes decoded.

        Args:
            ctx: the job (options, uploads, settings, progress).

        Returns:
            The image, its sparse annotation (from an annotation or a painting) and the config.

        Raises:
            InputError: a bad option or upload.
        """
        from rada.pipeline import SegmentConfig  # lazy (module docstring)

        options = check_segment_options(ctx.options, ctx.settings)
        options.setdefault("device", ctx.settings.device)
        ctx.progress(0.0, "decode", "reading the uploaded volumes")
        image = ctx.volume("image")
        annotation = as_annotation(ctx.volume("annotation"), "annotation")  # a sparse annotation or a painting
        return image, annotation, SegmentConfig(**options).resolved()

    def __call__(self, ctx: JobContext) -> JobOutput:
        """Segment the uploaded image; the label and the report (with no server paths in it)."""
        from rada.pipeline import segment_case  # lazy (module docstring)

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
    (RADATrainerLib.logic parses it for the live curves).

    Args:
        iteration: the iteration just done.
        total: the run's iterations.
        values: that iteration's ``loss`` and, when validated, ``val_dice``/``val_hd95``.
        best: ``best_dice`` and ``best_iteration`` so far (empty before the first validation).

    Returns:
        The line.
    """
    text = f"iteration {iteration}/{total}, loss {values.get('loss', 0.0):.4f}"
    dice = values.get("val_dice")
    if dice is not None and math.isfinite(dice):
        hd = values.get("val_hd95")
        text += f", val dice {dice:.4f}" + (f", hd95 {hd:.2f}" if hd is not None and math.isfinite(hd) else "")
    if best.get("best_dice") is not None:
        text += f", best {best['best_dice']:.4f} @ {best['best_iteration']}"
    return text


def train_config_from_options(options: Mapping[str, Any], settings: ServiceSettings) -> Any:
    """The job's :class:`rada.train.TrainConfig`: ``config`` (a partial nested TrainConfig) then
    the plain options on top.

    Args:
        options: the job's checked options.
        settings: the server's settings (its device is the default).

    Returns:
        The validated TrainConfig.

    Raises:
        InputError: one line for a bad key, type or value.
    """
    from rada.train import TrainConfig  # lazy: torch, loaded by the first train job only

    config = TrainConfig.from_dict(options.get("config") or {}, TrainConfig(device=settings.device))
    return config.with_overrides(iterations=options.get("iterations"), progress=False,
                                 **{k: options.get(k) for k in ("device", "seed", "checkpoint_every", "validate_every")})


def run_train_job(ctx: JobContext) -> JobOutput:
    """Train on a dataset of the server's datasets folder; the best validated checkpoint (else
    the last) becomes a named model. Every option is checked before any expensive step.

    Args:
        ctx: the job (options of :data:`TRAIN_OPTIONS`, settings, progress, cancel).

    Returns:
        No volume; the report: model name, iterations, guidance, validation history.

    Raises:
        InputError: a bad option, an unknown dataset, no models folder.
    """
    from rada.train import train_dataset  # lazy: torch, loaded by the first train job only

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
    with atomic_path(settings.models_dir / f"{name}.pt") as tmp:  # clients never see half a model
        shutil.copyfile(result.best or result.checkpoint, tmp)
    history = [{k: h[k] for k in ("iteration", "dice", "hd95", "empty")} for h in result.validation.get("history", [])]
    return JobOutput(None, {"model": name, "iterations": result.iterations, "dataset": dataset,
                            "guidance": result.guidance, "selected": "best" if result.best else "last",
                            "validation": {"best_dice": result.validation.get("best_dice"),
                                           "best_iteration": result.validation.get("best_iteration"),
                                           "history": history}})


def check_train_options(options: Mapping[str, Any], settings: ServiceSettings) -> dict[str, Any]:
    """Validate a train job's option names, types and ranges at submit.

    Args:
        options: the client's options (names and types of :data:`TRAIN_OPTIONS`).
        settings: the server's settings (unused: datasets are checked when the job runs).

    Returns:
        A copy of the options.

    Raises:
        InputError: one line naming the option and what is allowed.
    """
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
    """The runners of ``rada serve``: ``segment`` (:class:`SegmentRunner`) and ``train``.

    Returns:
        Job kind -> runner.
    """
    return {"segment": SegmentRunner(), "train": run_train_job}

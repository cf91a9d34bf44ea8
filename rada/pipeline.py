"""Segment one case end to end: the "Segment" button.

``segment_case`` takes an image and a sparse annotation (the painted slices) and returns a
label volume on the input grid plus a JSON-ready report. Steps:

1. validate, crop to the painted structure's extent plus a margin;
2. shape evidence from the painted slices (visual hull, extent-matched warps per axis,
   interpolated between painted slices by signed distance);
3. appearance: a random forest trained on this case's painted voxels (``rada.appearance``),
   and edges: painted structure and background compete on the image, as in Slicer's Grow
   from seeds (``rada.growcut``); the classifier runs in a thread beside steps 2-3's shape
   and competition, which it does not need;
4. optional ANTs propagation (``full`` preset), optional trained model probabilities;
5. fuse all evidence (``rada.fusion``; the uncertain band is decided by the same competition
   on the fused probability), keep the pieces that touch painted structure;
6. paste back into the full grid; the painted slices are reproduced exactly.

Painted slices that show no structure are valid: they are background examples for the
classifier and pull the interpolated shape towards nothing.

A :class:`SegmentCache` passed to successive calls on the same image (refinement with more
painted slices) keeps the expensive, annotation-independent work: model probabilities and
slice-to-slice registrations.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from rada import __version__
from rada.annotation import SparseAnnotation, crop_box
from rada.appearance import AppearanceConfig, appearance_probability
from rada.errors import CancelledError, InputError
from rada.fusion import FusionConfig, fuse, probability_to_logit
from rada.growcut import GrowCutConfig, growcut_logit
from rada.intensity import zscore
from rada.metrics import dice
from rada.propagation import PropagationConfig, RegistrationCache, propagate
from rada.shape_prior import shape_prior, visual_hull
from rada.views import VIEW_NAMES
from rada.volume import Volume

#: progress(fraction in [0, 1], stage name, human-readable message)
ProgressFn = Callable[[float, str, str], None]

PRESETS: dict[str, dict[str, bool]] = {
    # CPU, 2-5 s per LA case: shape prior, per-case classifier, grow from seeds (+ model when given).
    "fast": {"propagate": False},
    # Adds ANTs slice-to-slice propagation as a further source of evidence.
    "full": {"propagate": True},
    # the RADA method on this case (rada.finetune): ANTs propagation + tri-view V-Nets
    # fine-tuned on it (from --model when given), fused with the fast evidence.
    "finetune": {"propagate": False, "finetune": True},
}


@dataclass
class SegmentConfig:
    """Options of one Segment call; ``preset`` sets the defaults of the ``None`` fields.

    Attributes:
        preset: ``fast``, ``full`` or ``finetune`` (:data:`PRESETS`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for the model and the fine-tune.
        model: a trained checkpoint for this structure, or None.
        margin: voxels around the painted extent kept for the work.
        margin_fraction: plus this fraction of the extent (long thin shapes bend out).
        propagate: ANTs propagation; None = as the preset says.
        model_weight: weight of the model's log-odds in the fusion.
        fusion: the evidence fusion's settings.
        appearance: the per-case classifier's settings.
        growcut: the image competition's settings (``rada.growcut``).
        finetune: a :class:`rada.finetune.FinetuneConfig`; None = the device's profile.
    """

    preset: str = "fast"
    device: str = "auto"
    model: str | None = None
    margin: int = 12                  # voxels around the painted extent kept for the work
    margin_fraction: float = 0.15     # plus this fraction of the extent (long thin shapes bend out)
    propagate: bool | None = None     # ANTs propagation; None = as the preset says
    model_weight: float = 1.0         # weight of the model's log-odds in the fusion
    fusion: FusionConfig = field(default_factory=FusionConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    growcut: GrowCutConfig = field(default_factory=GrowCutConfig)
    finetune: Any = None              # rada.finetune.FinetuneConfig; None = the device's profile

    def resolved(self) -> "SegmentConfig":
        """A copy with the preset's defaults filled in (``propagate``).

        Returns:
            The new :class:`SegmentConfig`.

        Raises:
            InputError: an unknown preset.
        """
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        out = SegmentConfig(**{**asdict(self), "fusion": self.fusion, "appearance": self.appearance,
                                 "growcut": self.growcut, "finetune": self.finetune})
        if out.propagate is None:
            out.propagate = PRESETS[self.preset]["propagate"]
        return out


@dataclass
class SegmentResult:
    """What one Segment call returns.

    Attributes:
        label: uint8 0/1 label with the input image's geometry.
        report: JSON-ready: version, preset, device, guidance, model, annotated slices, crop
            box, agreement between views, structure size (voxels, ml) and timings.
    """
    label: Volume
    report: dict[str, Any]


@dataclass
class SegmentCache:
    """Annotation-independent work kept between calls on the same image (refinement).

    Attributes:
        image_key: :func:`image_key` of the bound image.
        model_probability: model probabilities by model, device and box.
        model_info: the facts reported with each of those probabilities.
        registrations: a :class:`rada.propagation.RegistrationCache`, created on first use.
        finetune: a :class:`rada.finetune.FinetuneMemory` (fine-tuned weights), on first use.
    """

    image_key: str | None = None
    model_probability: dict[str, np.ndarray] = field(default_factory=dict)  # by model, device and box
    model_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    registrations: Any = None  # rada.propagation.RegistrationCache, created on first use
    finetune: Any = None       # rada.finetune.FinetuneMemory (fine-tuned weights), on first use

    def bind(self, image: Volume) -> None:
        """Attach the cache to ``image``: everything cached for another image is dropped.

        Args:
            image: the image of the coming call.
        """
        key = image_key(image)
        if key != self.image_key:
            self.image_key, self.registrations = key, None
            self.model_probability, self.model_info = {}, {}
            self.finetune = None


def image_key(image: Volume) -> str:
    """A content hash of the voxels and the geometry.

    Args:
        image: the image.

    Returns:
        A 32-character hex digest.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(image.array).tobytes())
    h.update(repr((image.array.dtype.str, image.shape, image.spacing, image.origin, image.direction)).encode())
    return h.hexdigest()


class _Stages:
    """Progress reporting, cancellation checks and per-stage timings in one place."""

    def __init__(self, progress: ProgressFn | None, cancel: threading.Event | None, weights: dict[str, float]):
        self.progress, self.cancel = progress, cancel
        total = sum(weights.values())
        self.starts, acc = {}, 0.0
        for name, w in weights.items():
            self.starts[name] = (acc / total, w / total)
            acc += w
        self.timings: dict[str, float] = {}
        self._lock, self._shown = threading.Lock(), 0.0

    def _report(self, fraction: float, name: str, message: str) -> None:
        if self.progress is None:
            return
        with self._lock:  # stages that run beside each other start in either order: never move back
            self._shown = max(self._shown, fraction)
            self.progress(self._shown, name, message)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("segmentation cancelled")

    def run(self, name: str, message: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.check()
        self._report(self.starts[name][0], name, message)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.check()
        return out

    def sub_progress(self, name: str) -> Callable[[float, str], None]:
        start, width = self.starts[name]

        def report(fraction: float, message: str) -> None:
            self.check()
            self._report(start + width * min(max(fraction, 0.0), 1.0), name, message)
        return report

    def done(self) -> None:
        self._report(1.0, "done", "segmentation finished")


def _agreement(masks: dict[str, np.ndarray]) -> dict[str, float]:
    names = list(masks)
    return {f"{a}-{b}": round(dice(masks[a], masks[b]), 4)
            for i, a in enumerate(names) for b in names[i + 1:]}


def _model_probability(cfg: SegmentConfig, image: Volume, box: tuple[slice, slice, slice],
                       cache: SegmentCache | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Foreground probability of a trained tri-view model inside ``box`` (mean of the views).

    The model was trained on per-volume z-scored images: the statistics come from the whole
    volume, the sliding window runs on the box only (seconds instead of minutes on a CPU).
    """
    # torch: imported only when a model is given (fast and full run without it)
    from rada.device import select_device
    from rada.infer import InferenceConfig, load_model, predict_probability

    key = f"{cfg.model}|{cfg.device}|{[(s.start, s.stop) for s in box]}"
    if cache is not None and key in cache.model_probability:
        return cache.model_probability[key], dict(cache.model_info[key], cached=True)
    device = select_device(cfg.device)
    model, meta = load_model(cfg.model, device)
    patch = meta.get("preprocessing", {}).get("patch_size")
    prob = predict_probability(model, zscore(image.array)[box], InferenceConfig(device=str(device)), patch)
    guidance = meta.get("guidance", {"enabled": False})
    info = {"path": str(cfg.model), "content_hash": meta.get("content_hash"), "device": str(device),
            "guidance": {"enabled": bool(guidance.get("enabled")),
                         "reason": guidance.get("reason", "embeddings stored with the checkpoint")
                         if guidance.get("enabled") else "the model was trained with guidance off"}}
    if cache is not None:
        cache.model_probability[key], cache.model_info[key] = prob, info
    return prob, info


def segment_case(image: Volume, annotation: SparseAnnotation, config: SegmentConfig | None = None,
                 progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                 cache: SegmentCache | None = None) -> SegmentResult:
    """Segment the painted structure in 3D; see the module docstring for the steps.

    Args:
        image: the image.
        annotation: the painted slices on the image's grid.
        config: the preset and its options (default: the ``fast`` preset).
        progress: ``progress(fraction, stage, message)``.
        cancel: set it to stop at the next stage boundary.
        cache: work kept between calls on the same image (refinement).

    Returns:
        The label on the image's grid (painted slices exact) and a JSON-ready report.

    Raises:
        InputError: an unusable image, annotation or configuration.
        CancelledError: ``cancel`` was set.
    """
    t_start = time.perf_counter()
    cfg = (config or SegmentConfig()).resolved()
    annotation.validate(image)
    if cache is not None:
        cache.bind(image)
    finetuning = bool(PRESETS[cfg.preset].get("finetune"))
    # In the order the stages start (appearance runs beside shape and growcut; the bar never
    # moves back); with finetune the checkpoint is the fine-tune's start and has no inference
    # stage of its own.
    stages = _Stages(progress, cancel, {"crop": 1, "shape": 2, "appearance": 6, "growcut": 4,
                                        "propagate": 60 if cfg.propagate else 0,
                                        "finetune": 80 if finetuning else 0,
                                        "model": 20 if cfg.model and not finetuning else 0, "fuse": 3})

    box = stages.run("crop", "cropping to the painted region", crop_box, annotation, cfg.margin,
                     cfg.margin_fraction)
    img_c = image.crop(box)
    ann_c = SparseAnnotation(annotation.labels.crop(box))
    spacing_zyx = tuple(image.spacing[::-1])

    def _shape() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return visual_hull(ann_c), shape_prior(ann_c, spacing_zyx)
    # The classifier needs neither the shape nor the competition, so it learns beside them: its
    # forest releases the GIL and the competition's shortest-path searches hold it, so the two
    # share the cores (the results are those of running one after the other).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rada-appearance") as beside:
        appearance_job = beside.submit(stages.run, "appearance",
                                       "learning the structure's appearance from the painted voxels",
                                       appearance_probability, img_c.array, ann_c, spacing_zyx, cfg.appearance)
        hull, warps = stages.run("shape", "shape from the painted slices", _shape)
        shape_evidence = np.logical_or.reduce([hull, *warps.values()])
        growcut = stages.run("growcut", "growing the painted labels along the image", growcut_logit,
                             img_c.array, ann_c, shape_evidence, cfg.growcut) if cfg.fusion.growcut_weight else None
        appearance = appearance_job.result()

    sources: dict[str, np.ndarray] = dict(warps)
    extra_logits: list[np.ndarray] = []
    report_extra: dict[str, Any] = {}
    if cfg.propagate:
        if cache is not None and cache.registrations is None:
            cache.registrations = RegistrationCache()
        # Propagation narrows this crop again with the same crop_box (PropagationConfig.margin and
        # crop_quantum): registrations run on the structure's extent, not on the whole work box.
        result = stages.run("propagate", "ANTs slice-to-slice propagation", propagate, img_c, ann_c,
                            PropagationConfig(), progress=stages.sub_progress("propagate"),
                            cache=cache.registrations if cache is not None else None)
        for name, view in result.views.items():
            sources[f"propagation-{name}"] = view.label > 0
        # Propagated labels join the per-axis warps in the averaged shape prior.
        report_extra["propagation"] = {k: v for k, v in getattr(result, "stats", {}).items()
                                       if isinstance(v, (int, float, str))}
    # --- the finetune preset (rada.finetune); --model is its starting point ---
    finetune_report, finetune_mask = None, None
    if finetuning:
        # torch: imported only for the finetune preset (fast and full run without it)
        from rada.finetune import FinetuneConfig, FinetuneMemory, probability_mask, segment_probability

        ft_cfg = cfg.finetune or FinetuneConfig.for_device(cfg.device)
        if cache is not None:
            if cache.registrations is None:  # (an empty RegistrationCache is falsy)
                cache.registrations = RegistrationCache()
            if cache.finetune is None:
                cache.finetune = FinetuneMemory()
        ft_start, ft_width = stages.starts["finetune"]
        ft_progress = (lambda f, st, m: progress(ft_start + ft_width * f, st, m)) if progress else None
        prob, finetune_report = stages.run(
            "finetune", "RADA fine-tune on this case", segment_probability, image, annotation, box, ft_cfg,
            start_model=cfg.model, memory=cache.finetune if cache is not None else None,
            registrations=cache.registrations if cache is not None else None, progress=ft_progress, cancel=cancel)
        if ft_cfg.combine == "alone":
            finetune_mask = probability_mask(prob, ann_c)
        else:
            extra_logits.append(ft_cfg.probability_weight * probability_to_logit(prob, cfg.fusion.prior_clip))
    # --- end of the finetune preset ---
    if cfg.model and finetune_report is None:  # with finetune the checkpoint is its start
        prob, model_info = stages.run("model", "trained model inference", _model_probability, cfg, image,
                                      box, cache)
        extra_logits.append(cfg.model_weight * probability_to_logit(prob, cfg.fusion.prior_clip))
        report_extra["model"] = model_info

    mask_c, _ = stages.run("fuse", "fusing shape, intensities and models", fuse, img_c.array, ann_c,
                           list(sources.values()), hull, cfg.fusion, extra_logits, appearance,
                           growcut)
    if finetune_mask is not None:  # combine="alone": the fine-tuned networks' result by itself
        mask_c = finetune_mask

    full = np.zeros(image.shape, np.uint8)
    full[box] = mask_c
    annotation.paste(full)  # the painted slices, exactly
    stages.done()

    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    report: dict[str, Any] = {
        "rada_version": __version__,
        "preset": cfg.preset,
        "propagation": bool(cfg.propagate),
        "device": "cpu" if not cfg.model else report_extra.get("model", {}).get("device", "cpu"),
        "guidance": report_extra.get("model", {}).get("guidance",
                                                      {"enabled": False, "reason": "no trained model given"}),
        "model": report_extra.get("model"),
        "annotated_slices": annotation.slices(),
        "crop_box_zyx": [[s.start, s.stop] for s in box],
        "agreement_between_views": _agreement({k: v for k, v in sources.items() if k in VIEW_NAMES}),
        "structure_voxels": int(full.sum()),
        "structure_volume_ml": round(float(full.sum()) * voxel_ml, 3),
        "timings_s": {**stages.timings, "total": round(time.perf_counter() - t_start, 3)},
    }
    if "propagation" in report_extra:
        report["propagation_stats"] = report_extra["propagation"]
    if finetune_report is not None:
        report.update(finetune=finetune_report, guidance=finetune_report["guidance"],
                      device=finetune_report["device"])
    return SegmentResult(image.with_array(full), report)

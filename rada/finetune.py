"""The RADA method on one case: ANTs propagation + the tri-view V-Net fine-tuned on it.

What the ``finetune`` preset of Segment runs, on the crop around the painted structure:

1. **propagate**: every painted slice (any number per axis, empty ones included) is carried
   through the crop by ANTs slice-to-slice registration (``rada.propagation``), one
   pseudo-label per view with voxel weights ``alpha ** d`` (1 on the painted slices);
2. **guidance**: Alpha-CLIP embeddings of the painted slices when the weights are installed
   (otherwise guidance is off and the report says why);
3. **finetune**: the three V-Nets (``rada.nets``, views as data) are trained on this one case
   with the weighted supervised loss and the uncertainty-masked cross-view supervision of
   METHOD.md section 5 (``rada.train`` losses and co-training), starting from a trained
   checkpoint, from the weights a previous call on the same image left, or from scratch;
   the schedules of METHOD.md run on the fine-tune's own, shorter clock;
4. **infer**: sliding window (``rada.infer``) on the crop -> foreground probability.

Sizes, iterations and resolution come from a :class:`FinetuneConfig` profile chosen from the
device: :meth:`FinetuneConfig.cpu` (half resolution, narrow networks; an LA case took
60-85 s on 2 cores shared with other work, see bench/finetune.py) or :meth:`FinetuneConfig.gpu` (the paper's width and patch).
Nothing is written anywhere: the caller keeps the returned weights (for a refinement) only
when the call finished.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from rada.annotation import IGNORE, SparseAnnotation, take_slice
from rada.device import select_device
from rada.errors import CancelledError, InputError
from rada.fusion import keep_painted_components
from rada.guidance import GuidanceEmbeddings, compute_embeddings
from rada.infer import load_model, model_predictor, sliding_window
from rada.nets.head import HeadConfig
from rada.nets.triview import ModelConfig, TriViewModel
from rada.nets.vnet import VNetConfig
from rada.patches import check_patch_size
from rada.propagation import PropagationConfig, propagate
from rada.train import schedules as S
from rada.train.cotraining import certainty_mask, teacher_mean_probability, view_losses
from rada.train.data import LabeledCase, TrainingData, pseudo_labels_from_propagation, sample_batch
from rada.volume import Volume

#: progress(fraction of the whole fine-tune path in [0, 1], stage, message)
StageProgress = Callable[[float, str, str], None]

#: Share of the progress bar of each stage.
STAGE_WEIGHTS: dict[str, float] = {"propagate": 0.3, "guidance": 0.03, "finetune": 0.6, "infer": 0.07}

#: How the fine-tuned probability becomes the label (the pipeline acts on it).
COMBINE = ("fuse", "alone")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that sets the per-case fine-tune; see :meth:`cpu` and :meth:`gpu`.

    Attributes:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        width: first V-Net stage's channels (16 = the paper; ignored when starting from a
            checkpoint, whose architecture wins).
        patch_size: training window ``[z, y, x]`` at the working resolution (shrunk to the
            crop, multiples of 16).
        scale: working resolution relative to the image (0.5 = half the voxels per axis); the
            propagation runs on the working grid too.
        iterations: fine-tune steps from scratch or a checkpoint.
        refine_iterations: steps when starting from the weights of a previous call on the same
            image.
        labeled_batch: patches per step of the supervised stream (drawn from this case).
        unlabeled_batch: patches per step of the cross-view stream (drawn from this case).
        optimizer: ``sgd`` (METHOD.md: momentum 0.9, weight decay 1e-4) or ``adam`` (AdamW,
            same weight decay; converges in far fewer steps from scratch).
        lr: learning rate.
        decay_schedule: run METHOD.md's alpha (decay base) schedule on the fine-tune's clock;
            off (DEFAULT) keeps the decay base at its start value 0.95 -- a short run would
            otherwise spend its second half learning from the painted slices alone.
        lr_decay: METHOD.md's x0.1 steps (at 5/12 and 5/6 of the run).
        dropout: of the V-Net's bottleneck and last feature (0.5 = METHOD.md; scratch models
            only).
        momentum: SGD momentum.
        weight_decay: weight decay of either optimizer.
        teacher_passes: noisy passes T of the certainty estimate.
        registration_resolution: ANTs propagation's :data:`rada.propagation.RESOLUTIONS`
            (``half`` registers slices at half resolution).
        registration_workers: registration processes (None = the CPUs this process may use).
        guidance: use Alpha-CLIP embeddings when the weights are installed.
        organ: names the structure in the text prompt.
        combine: ``fuse`` adds the probability's log-odds to the fast preset's evidence,
            ``alone`` thresholds it.
        probability_weight: weight of those log-odds with ``fuse``.
        infer_batch: windows per forward pass of the sliding-window inference.
        threads: torch CPU threads while fine-tuning and inferring (None = torch's setting; 1
            is fastest on a CPU shared with other work, where tiny 3D convolutions on 2
            contended threads ran ~10x slower).
        seed: data sampling and noise.
    """

    device: str = "auto"
    width: int = 16
    patch_size: tuple[int, int, int] = (80, 112, 112)
    scale: float = 1.0
    iterations: int = 400
    refine_iterations: int = 150
    labeled_batch: int = 2
    unlabeled_batch: int = 2
    optimizer: str = "sgd"
    lr: float = 0.01
    decay_schedule: bool = False
    lr_decay: bool = True
    dropout: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    teacher_passes: int = 8
    registration_resolution: str = "full"
    registration_workers: int | None = None
    guidance: bool = True
    organ: str = "structure"
    combine: str = "fuse"
    probability_weight: float = 1.0
    infer_batch: int = 2
    threads: int | None = None
    seed: int = 0

    @classmethod
    def cpu(cls, **overrides: Any) -> "FinetuneConfig":
        """The CPU profile: half resolution (propagation included), width 4, 32^3 patches, 40 steps,
        T = 2 (3D convolutions on a CPU are the limit).

        So few steps need a constant, higher learning rate (0.05) and no dropout: measured on a
        training case, 30 steps reach Dice 0.59 this way, 0.40 with METHOD.md's 0.01 and dropout.
        The networks stay far from converged in 40 steps (alone they reach Dice 0.27-0.48 at k=1),
        so their log-odds are fused with weight 0.1: the best of 0.1/0.25/0.5/1 on the dev groups
        of ``bench/finetune.py`` (at 1, structures lost 0.067 Dice against fast; at 0.1, 0.004).

        Args:
            **overrides: fields that replace the profile's values.

        Returns:
            The :class:`FinetuneConfig` (not validated).
        """
        base = dict(device="cpu", width=4, patch_size=(32, 32, 32), scale=0.5, iterations=40,
                    refine_iterations=15, labeled_batch=1, unlabeled_batch=1, teacher_passes=2,
                    lr=0.05, dropout=0.0, lr_decay=False, probability_weight=0.1,
                    registration_resolution="full", infer_batch=2)
        return cls(**{**base, **overrides})

    @classmethod
    def gpu(cls, **overrides: Any) -> "FinetuneConfig":
        """The GPU profile: the paper's network and patch at full resolution, 400 steps.

        Expect minutes, not seconds: on an H200 one training step of this size (three views,
        2 + 2 patches, T = 8) took 0.53 s (``bench/RESULTS.md``), so the 400 steps alone take
        about 3.5 minutes, and one LA case did not finish within the 200 s measured there.

        Args:
            **overrides: fields that replace the profile's values.

        Returns:
            The :class:`FinetuneConfig` (not validated).
        """
        return cls(**{"device": "cuda", **overrides})

    @classmethod
    def for_device(cls, device: str = "auto", **overrides: Any) -> "FinetuneConfig":
        """The GPU profile when ``device`` resolves to CUDA, the CPU profile otherwise.

        Args:
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            **overrides: fields that replace the profile's values.

        Returns:
            The :class:`FinetuneConfig` (not validated).
        """

        dev = select_device(device)
        return cls.gpu(**overrides) if dev.type == "cuda" else cls.cpu(**overrides)

    @property
    def factor(self) -> int:
        """Integer downsampling of the working grid (``round(1 / scale)``)."""
        return max(1, int(round(1.0 / self.scale)))

    def validated(self) -> "FinetuneConfig":
        """Check the settings.

        Returns:
            self.

        Raises:
            InputError: naming the bad field (width, iterations, scale, patch size, batches,
                teacher passes, optimizer or combine).
        """
        if self.width < 1 or self.iterations < 0 or self.refine_iterations < 0:
            raise InputError("width must be >= 1 and iterations >= 0")
        if not 0.1 <= self.scale <= 1.0:
            raise InputError(f"scale must be in [0.1, 1], got {self.scale}")
        check_patch_size(self.patch_size, len(VNetConfig().encoder_blocks))
        if self.labeled_batch < 1 or self.unlabeled_batch < 0 or self.teacher_passes < 1:
            raise InputError("labeled_batch and teacher_passes must be >= 1, unlabeled_batch >= 0")
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(f"unknown optimizer {self.optimizer!r}; use sgd or adam")
        if self.combine not in COMBINE:
            raise InputError(f"unknown combine {self.combine!r}; use one of {', '.join(COMBINE)}")
        return self


@dataclass
class FinetunedWeights:
    """The three views' fine-tuned weights (CPU tensors), reusable by a later call.

    Attributes:
        model_config: the networks' :class:`~rada.nets.ModelConfig` as a dict.
        views: view name -> state dict.
        iterations: fine-tune steps these weights have seen in total.
        origin: what the first fine-tune started from: scratch or checkpoint.
    """

    model_config: dict[str, Any]
    views: dict[str, dict[str, torch.Tensor]]
    iterations: int                 # fine-tune steps these weights have seen in total
    origin: str                     # what the first fine-tune started from: scratch or checkpoint

    def compatible(self, model_config: Mapping[str, Any]) -> bool:
        """Whether these weights fit a network of ``model_config``.

        Args:
            model_config: a :class:`~rada.nets.ModelConfig` as a dict.

        Returns:
            True when both configs are equal (compared as sorted JSON).
        """
        return json.dumps(self.model_config, sort_keys=True) == json.dumps(dict(model_config), sort_keys=True)


@dataclass
class FinetuneResult:
    """What one fine-tune returns.

    Attributes:
        probability: float32 foreground probability on the crop.
        weights: the fine-tuned weights, to reuse in a later call.
        report: device, settings, start, guidance, iterations, propagation statistics and timings.
        pseudo_label: the ANTs pseudo-label (majority of the propagated views), uint8, crop
            grid.
    """

    probability: np.ndarray
    weights: FinetunedWeights
    report: dict[str, Any] = field(default_factory=dict)
    pseudo_label: np.ndarray | None = None


class _Progress:
    """Maps each stage's own fraction onto the whole path, and checks for cancellation."""

    def __init__(self, progress: StageProgress | None, cancel: threading.Event | None) -> None:
        self.progress, self.cancel = progress, cancel
        self.starts, acc = {}, 0.0
        for name, w in STAGE_WEIGHTS.items():
            self.starts[name] = (acc, w)
            acc += w

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("segmentation cancelled")

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        self.check()
        if self.progress is not None:
            start, width = self.starts[stage]
            self.progress(start + width * min(max(fraction, 0.0), 1.0), stage, message)


# --- the steps -------------------------------------------------------------------------------

def _resize(array: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    """Trilinear (``mode='trilinear'``) or nearest resampling of a ``[z, y, x]`` array to ``shape``."""
    if tuple(array.shape) == tuple(shape):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()


def _resample_annotation(annotation: SparseAnnotation, shape: tuple[int, ...]) -> SparseAnnotation:
    """The painted slices on a coarser grid: each lands on its nearest working slice (so none
    is lost to the resampling), its mask resized in-plane by nearest neighbour."""
    src = annotation.array
    if tuple(src.shape) == tuple(shape):
        return annotation
    out = np.full(shape, IGNORE, np.uint8)
    for a in range(3):
        plane = tuple(shape[i] for i in range(3) if i != a)
        for i in annotation.annotated_slices(a):
            j = min(int((i + 0.5) * shape[a] / src.shape[a]), shape[a] - 1)
            mask = torch.from_numpy(np.ascontiguousarray(take_slice(src, a, i), dtype=np.float32))
            small = F.interpolate(mask[None, None], size=plane, mode="nearest")[0, 0].numpy().astype(np.uint8)
            index = (slice(None),) * a + (j,)
            current = out[index]
            # Where slices of two axes cross, structure on either wins.
            out[index] = np.where(current == IGNORE, small, np.maximum(current, small))
    spacing = tuple(sp * n / m for sp, n, m in zip(annotation.labels.spacing, src.shape[::-1], shape[::-1]))
    return SparseAnnotation(Volume(out, spacing, annotation.labels.origin, annotation.labels.direction))


def _working_patch(shape: tuple[int, ...], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """The configured patch, shrunk to the (16-rounded) working volume so no compute pads air."""
    return tuple(min(p, max(16, int(math.ceil(s / 16)) * 16)) for s, p in zip(shape, patch))  # type: ignore[return-value]


def _guidance(image: Volume, annotation: SparseAnnotation, cfg: FinetuneConfig, report: _Progress) -> Any:
    """Alpha-CLIP embeddings of the painted slices, or a disabled one with the reason."""
    if not cfg.guidance:
        return GuidanceEmbeddings.off("guidance off: disabled in the fine-tune settings")

    return compute_embeddings([image], [annotation], cfg.organ, device="cpu",
                              progress=lambda f, m: report("guidance", f, m))


def _build_model(cfg: FinetuneConfig, start_model: str | None, cached: FinetunedWeights | None,
                 embeddings: Any, device: torch.device) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The tri-view model to fine-tune and where it started; its patch size from a checkpoint."""
    meta: dict[str, Any] = {}
    if start_model is not None:
        model, meta = load_model(start_model, "cpu")
        origin = "checkpoint"
    else:
        model = TriViewModel(ModelConfig(VNetConfig(width=cfg.width, dropout=cfg.dropout),
                                         HeadConfig(embedding_dim=1024 if embeddings.enabled else 0)))
        origin = "scratch"
    started_from = origin
    if cached is not None and cached.compatible(model.config.as_dict()):
        for name, net in model.nets.items():
            net.load_state_dict(cached.views[name])
        started_from, origin = "cached weights", cached.origin
    if model.guided:
        if embeddings.enabled:
            model.set_guidance(embeddings.text, embeddings.visual)
            guidance = {"enabled": True, "reason": "Alpha-CLIP embeddings of this case's painted slices"}
        else:  # a guided checkpoint keeps the embeddings it was trained with
            guidance = {"enabled": True, "reason": "the checkpoint's stored embeddings "
                                                   f"(this case's could not be computed: {embeddings.reason})"}
    else:
        guidance = {"enabled": False, "reason": embeddings.reason if start_model is None or not embeddings.enabled
                    else "the checkpoint was trained with guidance off"}
    info = {"origin": origin, "started_from": started_from, "guidance": guidance,
            "checkpoint_patch": meta.get("preprocessing", {}).get("patch_size")}
    return model.to(device), info, meta


def _train(model: Any, data: Any, cfg: FinetuneConfig, iterations: int, patch: tuple[int, int, int],
           device: torch.device, report: _Progress) -> list[float]:
    """METHOD.md section 5 on one case; the schedules run on a clock of ``iterations`` steps."""
    sched = S.ScheduleConfig()
    def make(params: Any) -> torch.optim.Optimizer:
        if cfg.optimizer == "adam":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizers = {name: make(net.parameters()) for name, net in model.nets.items()}
    losses: list[float] = []
    for t in range(iterations):
        report("finetune", t / max(iterations, 1), f"iteration {t + 1}/{iterations}")
        clock = int(t * sched.iterations / max(iterations, 1))  # the 6000-step schedules, compressed
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, t, 11]).generate_state(1)[0]))
        a = S.distance_decay(clock, sched) if cfg.decay_schedule else sched.alpha_start
        b, thr = S.beta(clock, sched), S.entropy_threshold(clock, sched)
        lr = cfg.lr * S.learning_rate(clock, sched) / sched.base_lr if cfg.lr_decay else cfg.lr
        batch = sample_batch(data, t, a, patch, cfg.labeled_batch, cfg.unlabeled_batch, cfg.seed, 0, True,
                             model.views)
        x = torch.from_numpy(batch.image).to(device)
        labels = {k: torch.from_numpy(v).to(device) for k, v in batch.labels.items()}
        weights = {k: torch.from_numpy(v).to(device) for k, v in batch.weights.items()}
        nl = batch.n_labeled
        model.train()
        logits = {name: net(x) for name, net in model.nets.items()}
        masks = None
        if x.shape[0] > nl:
            masks = {name: certainty_mask(teacher_mean_probability(net, x[nl:], cfg.teacher_passes), thr)
                     for name, net in model.nets.items()}
        terms = view_losses(logits, labels, weights, nl, masks, b)
        total = torch.stack([v["total"] for v in terms.values()]).sum()
        for o in optimizers.values():
            for g in o.param_groups:
                g["lr"] = lr
            o.zero_grad(set_to_none=True)
        total.backward()
        for o in optimizers.values():
            o.step()
        value = float(total.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"fine-tune loss became {value} at iteration {t + 1}")
        losses.append(value)
    report("finetune", 1.0, f"iteration {iterations}/{iterations}")
    return losses


def finetune_case(image: Volume, annotation: SparseAnnotation, config: FinetuneConfig | None = None, *,
                  intensity: tuple[float, float] | None = None, start_model: str | None = None,
                  cached: FinetunedWeights | None = None, registrations: Any = None,
                  progress: StageProgress | None = None,
                  cancel: threading.Event | None = None) -> FinetuneResult:
    """Propagate, fine-tune the tri-view V-Nets on this case, infer on it (module docstring).

    Args:
        image: the crop around the painted structure (raw intensities).
        annotation: the sparse annotation on the same grid (0/1/255; empty painted slices allowed).
        config: a profile; None = :meth:`FinetuneConfig.for_device` ``("auto")``.
        intensity: ``(mean, std)`` of the whole image for the z-score, so weights fit any crop
            of it (a trained checkpoint expects whole-volume statistics); None = the crop's.
        start_model: a trained RADA checkpoint to start from (None = from scratch).
        cached: weights a previous call on the same image returned; used when compatible,
            with ``refine_iterations`` steps.
        registrations: a :class:`rada.propagation.RegistrationCache` kept between calls.
        progress: ``progress(fraction, stage, message)``; stages propagate, guidance,
            finetune (with the iteration counter) and infer.
        cancel: when set, :class:`CancelledError` is raised within one iteration.

    Returns:
        :class:`FinetuneResult`: probability on the crop grid, weights, report (stage times,
        iterations, started from, guidance on/off with the reason, resolution, device).
    """
    cfg = (config or FinetuneConfig.for_device("auto")).validated()
    mismatch = image.grid_mismatch(annotation.labels)
    if mismatch:
        raise InputError(f"annotation geometry differs from the image: {mismatch}")
    report = _Progress(progress, cancel)
    device = select_device(cfg.device)
    times: dict[str, float] = {}

    # Working grid: z-scored with the whole image's statistics, resampled by ``scale``; the
    # propagation runs on it too (fewer, smaller slice pairs: the CPU profile's main saving).
    mean, std = intensity if intensity is not None else (float(image.array.mean()), float(image.array.std()))
    arr = (image.array.astype(np.float32) - mean) / (std if std > 0 else 1.0)
    work_shape = tuple(max(8, -(-s // cfg.factor)) for s in image.shape)
    ann_w = _resample_annotation(annotation, work_shape)
    if not ann_w.foreground().any():  # a structure too small for the working grid
        work_shape, ann_w = tuple(image.shape), annotation
    arr_w = _resize(arr, work_shape, "trilinear")
    spacing_w = tuple(sp * n / m for sp, n, m in zip(image.spacing, image.shape[::-1], work_shape[::-1]))
    image_w = Volume(arr_w, spacing_w, image.origin, image.direction)

    t0 = time.perf_counter()
    prop_cfg = PropagationConfig(resolution=cfg.registration_resolution, workers=cfg.registration_workers, seed=cfg.seed)
    prop = propagate(image_w, ann_w, prop_cfg, progress=lambda f, m: report("propagate", f, m),
                     cache=registrations)
    labels, distance, known = pseudo_labels_from_propagation(prop, ann_w)
    times["propagate"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    report("guidance", 0.0, "Alpha-CLIP region encoding of the painted slices")
    embeddings = _guidance(image, annotation, cfg, report)
    torch.manual_seed(cfg.seed)  # the scratch networks' initial weights: same settings, same result
    model, info, meta = _build_model(cfg, start_model, cached, embeddings, device)
    times["guidance"] = round(time.perf_counter() - t0, 3)

    data = TrainingData([LabeledCase("case", arr_w, labels, distance, known)], [arr_w] if cfg.unlabeled_batch else [])
    patch = _working_patch(work_shape, tuple(info["checkpoint_patch"] or cfg.patch_size))  # type: ignore[arg-type]

    t0 = time.perf_counter()
    iterations = cfg.refine_iterations if info["started_from"] == "cached weights" else cfg.iterations
    saved_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        losses = _train(model, data, cfg, iterations, patch, device, report)
        times["finetune"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        report("infer", 0.0, "sliding-window inference on the crop")
        model.eval()
        predictor = model_predictor(model, "mean", bf16=True)

        def checked(x: torch.Tensor) -> torch.Tensor:
            report.check()
            return predictor(x)
        prob_w = sliding_window(arr_w, checked, patch, None, "gaussian", cfg.infer_batch, device)[1]
    finally:
        torch.set_num_threads(saved_threads)
    probability = np.clip(_resize(prob_w, image.shape, "trilinear"), 0.0, 1.0).astype(np.float32)
    times["infer"] = round(time.perf_counter() - t0, 3)
    report("infer", 1.0, "inference done")

    pseudo = (_resize(prop.fused, image.shape, "nearest") > 0.5).astype(np.uint8)
    out_report = {
        "device": str(device),
        "profile": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "started_from": info["started_from"],
        "origin": info["origin"],
        "guidance": info["guidance"],
        "iterations": iterations,
        "iterations_total": iterations + (cached.iterations if info["started_from"] == "cached weights" else 0),
        "patch_size_zyx": list(patch),
        "working_shape_zyx": list(work_shape),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "propagation": {k: v for k, v in prop.stats.items() if isinstance(v, (int, float, str))},
        "pseudo_label_voxels": int(pseudo.sum()),
        "timings_s": times,
    }
    if start_model is not None:
        out_report["checkpoint"] = {"path": str(start_model), "content_hash": meta.get("content_hash")}
    weights = FinetunedWeights(model.config.as_dict(),
                               {k: {n: p.detach().cpu().clone() for n, p in net.state_dict().items()}
                                for k, net in model.nets.items()},
                               out_report["iterations_total"], info["origin"])
    return FinetuneResult(probability, weights, out_report, pseudo)


def annotation_key(annotation: SparseAnnotation, config: FinetuneConfig, start_model: str | None) -> str:
    """Hash of what makes a fine-tune probability: the painted voxels, the settings, the start.

    ``combine`` and ``probability_weight`` are left out: they change how the probability is
    used, not the probability.

    Args:
        annotation: the sparse annotation.
        config: the fine-tune settings.
        start_model: the checkpoint the fine-tune starts from, or None.

    Returns:
        A 32-character hex digest.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(annotation.array).tobytes())
    h.update(repr(annotation.shape).encode())
    # How the probability is used later (combine, weight) does not change it.
    settings = {k: v for k, v in asdict(config).items() if k not in ("combine", "probability_weight")}
    h.update(json.dumps([settings, start_model], sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class FinetuneMemory:
    """What the service keeps per image between Segment calls: the last fine-tuned weights and,
    for a repeat of the same painting and settings, the last probability (on its crop box).

    Attributes:
        weights: the last fine-tuned weights.
        key: :func:`annotation_key` of the last call.
        box: that call's crop box, ``(start, stop)`` per array axis.
        probability: that call's probability on the box.
        pseudo_label: that call's ANTs pseudo-label on the box.
        report: that call's report (a copy).
    """

    weights: FinetunedWeights | None = None
    key: str | None = None
    box: tuple[tuple[int, int], ...] | None = None
    probability: np.ndarray | None = None
    pseudo_label: np.ndarray | None = None
    report: dict[str, Any] | None = None

    def remember(self, key: str, box: tuple[tuple[int, int], ...], result: FinetuneResult) -> None:
        """Keep a call's result for the next call on the same image.

        Args:
            key: :func:`annotation_key` of the call.
            box: its crop box, ``(start, stop)`` per array axis.
            result: its result.
        """
        self.weights, self.key, self.box = result.weights, key, box
        self.probability, self.pseudo_label = result.probability, result.pseudo_label
        self.report = copy.deepcopy(result.report)


def with_overrides(config: FinetuneConfig, **changes: Any) -> FinetuneConfig:
    """A copy of ``config`` with ``changes``, validated.

    Args:
        config: the base settings.
        **changes: fields to replace.

    Returns:
        The new :class:`FinetuneConfig`.

    Raises:
        InputError: an unknown field, or the result is invalid (see :meth:`FinetuneConfig.validated`).
    """
    unknown = sorted(set(changes) - {f.name for f in fields(config)})
    if unknown:
        raise InputError(f"unknown finetune setting {unknown[0]!r}")
    return replace(config, **changes).validated()



# --- the Segment button's side (rada.pipeline calls these) --------------------------------------

def segment_probability(image: Volume, annotation: SparseAnnotation, box: tuple[slice, slice, slice],
                        config: FinetuneConfig, *,
                        start_model: str | None = None, memory: FinetuneMemory | None = None,
                        registrations: Any = None, progress: StageProgress | None = None,
                        cancel: threading.Event | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``finetune`` preset's evidence on ``crop`` of ``image``, with the per-image memory.

    Args:
        image, annotation: the whole image (its statistics z-score the crop) and annotation.
        box: the crop the caller works on. The fine-tune runs on it grown to multiples of
            ``8 * factor`` voxels of the image, so that the working grid, and with it every
            slice pair the propagation registers, stays the same when a refinement's painted
            extent grows a little: the registrations cached for the image are found again.
        config: the fine-tune profile.
        start_model: a trained checkpoint to start from (None = scratch).
        memory: the image's :class:`FinetuneMemory`: a repeat of the same painting and settings
            reuses the last probability; another painting starts from the last weights.
            Updated only when the call finishes (a cancelled call leaves it as it was).
        registrations, progress, cancel: as :func:`finetune_case`.

    Returns:
        ``(probability on the crop box, report)``.
    """
    q = 8 * config.factor
    snapped = tuple(slice((s.start // q) * q, min(-(-s.stop // q) * q, n)) for s, n in zip(box, image.shape))
    inner = tuple(slice(b.start - s.start, b.stop - s.start) for b, s in zip(box, snapped))
    crop, crop_annotation = image.crop(snapped), SparseAnnotation(annotation.labels.crop(snapped))
    key = annotation_key(crop_annotation, config, start_model)
    span = tuple((s.start, s.stop) for s in snapped)
    if memory is not None and memory.key == key and memory.box == span and memory.probability is not None:
        if progress is not None:
            progress(1.0, "finetune", "same painting and settings as the last call: its result reused")
        return memory.probability[inner], dict(copy.deepcopy(memory.report or {}),
                                               started_from="cached result", iterations=0)
    a = image.array
    result = finetune_case(crop, crop_annotation, config, intensity=(float(a.mean()), float(a.std())),
                           start_model=start_model, cached=memory.weights if memory is not None else None,
                           registrations=registrations, progress=progress, cancel=cancel)
    if memory is not None:
        memory.remember(key, span, result)
    return result.probability[inner], dict(result.report, box_zyx=[list(v) for v in span])


def probability_mask(probability: np.ndarray, annotation: SparseAnnotation, threshold: float = 0.5) -> np.ndarray:
    """``combine='alone'``: the thresholded probability, painted voxels exact, only components
    that hold painted structure, holes filled.

    Args:
        probability: foreground probability ``[z, y, x]`` on the annotation's grid.
        annotation: the sparse annotation.
        threshold: probability above which a voxel is structure.

    Returns:
        Bool mask ``[z, y, x]``.
    """
    known = annotation.known()
    mask = probability > threshold
    mask[known] = annotation.foreground()[known]
    mask = keep_painted_components(mask, annotation)
    mask[known] = annotation.foreground()[known]
    return mask


__all__ = ["FinetuneConfig", "FinetunedWeights", "FinetuneResult", "FinetuneMemory", "finetune_case",
           "segment_probability", "probability_mask",
           "annotation_key", "with_overrides", "STAGE_WEIGHTS", "COMBINE"]

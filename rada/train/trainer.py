"""The RADA trainer: three views co-trained on labeled + unlabeled patches.

One iteration: sample 2 labeled + 2 unlabeled patches (shared by the three views); every
view's network predicts the 4 patches in one forward; each view's teacher certainty comes
from 8 noisy passes batched into one forward; the three views' losses are summed and
back-propagated once (each view's loss only reaches its own weights: teachers' outputs
are detached); the three SGD optimisers step with the same learning-rate schedule.

Resuming is exact: all randomness of iteration ``t`` is seeded from ``(seed, rank, t)``
and the checkpoint holds weights, optimiser states and the iteration (plus RNG states).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from rada.device import select_device
from rada.errors import InputError
from rada.nets.triview import ModelConfig, TriViewModel
from rada.patches import check_patch_size
from rada.train import schedules as S
from rada.train.checkpoint import load_checkpoint, save_checkpoint
from rada.train.cotraining import certainty_mask, teacher_mean_probability, view_losses
from rada.train.data import Batch, TrainingData, sample_batch
from rada.train.distributed import DistInfo, all_gather_objects, barrier, init_distributed
from rada.views import VIEWS

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"
CURVE_NAME = "loss.png"
BEST_NAME = "best.pt"
LOG_FIELDS = ("iteration", "loss", "sup", "unsup", "certain", "lr", "beta", "alpha", "threshold", "seconds",
              "val_dice", "val_hd95")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (defaults: METHOD.md section 5, LA2018)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: S.ScheduleConfig = field(default_factory=S.ScheduleConfig)
    patch_size: tuple[int, int, int] = (80, 112, 112)   # [z, y, x]
    labeled_batch: int = 2
    unlabeled_batch: int = 2
    teacher_passes: int = 8
    noise_std: float = 0.1
    noise_clip: float = 0.2
    loss_form: str = "sgtc"          # "sgtc" (DEFAULT) or "paper"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    bf16: bool = True                # bf16 autocast, on CUDA only
    batched_teachers: bool = True    # the T noisy passes as one forward (faster on GPUs; see bench/train_step.py)
    deterministic: bool = False      # CUDA: deterministic kernels (exact resume on GPU); CPU is always exact
    augment: bool = True
    checkpoint_every: int = 500
    validate_every: int = 500        # Dice/HD95 on the validation cases every N iterations (0: never)
    progress: bool = True

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """A config from a (partial, nested) JSON mapping merged over ``base`` (the defaults);
        unknown keys and wrong types raise :class:`InputError`."""
        from rada.train.config import load_config

        return load_config(cls, d, base)

    def validate(self) -> "TrainConfig":
        """Raise :class:`InputError` (one line) for a setting no run can use; cheap, so every
        entry point calls it before reading data, propagating or computing embeddings."""
        s = self.schedule
        checks = [
            (s.iterations >= 1, f"iterations must be at least 1 (got {s.iterations})"),
            (s.base_lr > 0, f"base_lr must be positive (got {s.base_lr})"),
            (0 < s.lr_gamma <= 1, f"lr_gamma must be in (0, 1] (got {s.lr_gamma})"),
            (all(m >= 1 for m in s.lr_milestones), "lr_milestones must be positive iterations"),
            (0 < s.alpha_start <= 1, f"alpha_start must be in (0, 1] (got {s.alpha_start})"),
            (min(s.alpha_refresh, s.alpha_step, s.alpha_steps, s.beta_step, s.beta_steps) >= 1,
             "alpha/beta steps must be at least 1"),
            (0 <= s.beta_max <= 0.5, f"beta_max must be in [0, 0.5] (got {s.beta_max})"),
            (self.labeled_batch >= 1, f"labeled_batch must be at least 1 (got {self.labeled_batch})"),
            (self.unlabeled_batch >= 0, f"unlabeled_batch must be at least 0 (got {self.unlabeled_batch})"),
            (self.teacher_passes >= 1, f"teacher_passes must be at least 1 (got {self.teacher_passes})"),
            (self.noise_std >= 0 and self.noise_clip >= 0, "noise_std and noise_clip must be at least 0"),
            (self.loss_form in ("sgtc", "paper"), f"loss_form must be sgtc or paper (got {self.loss_form!r})"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1) (got {self.momentum})"),
            (self.weight_decay >= 0, f"weight_decay must be at least 0 (got {self.weight_decay})"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be at least 1 (got {self.checkpoint_every})"),
            (self.validate_every >= 0, f"validate_every must be at least 0 (got {self.validate_every})"),
            (self.model.backbone.width >= 1, f"width must be at least 1 (got {self.model.backbone.width})"),
            (self.model.head.embedding_dim in (0, 1024),
             f"embedding_dim must be 1024 (guidance) or 0 (off), got {self.model.head.embedding_dim}"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        check_patch_size(self.patch_size, len(self.model.backbone.encoder_blocks))
        return self


@dataclass(frozen=True)
class Guidance:
    """Frozen-encoder embeddings the model is trained with: text [512], visual[view] [512]."""

    text: torch.Tensor
    visual: dict[str, torch.Tensor]
    reason: str = ""

    @classmethod
    def from_embeddings(cls, emb: Any) -> "Guidance | None":
        """From ``rada.guidance.GuidanceEmbeddings`` (or anything with text/visual/enabled); None if off."""
        if emb is None or not getattr(emb, "enabled", True):
            return None
        return cls(torch.as_tensor(emb.text).float().reshape(-1),
                   {k: torch.as_tensor(v).float().reshape(-1) for k, v in emb.visual.items()},
                   str(getattr(emb, "reason", "") or ""))

    def as_dict(self) -> dict:
        return {"enabled": True, "text": self.text, "visual": dict(self.visual), "reason": self.reason}


@dataclass
class TrainResult:
    """Where a run's files are, how far it got, its guidance and its best validation."""

    checkpoint: Path
    iterations: int
    log: Path
    curve: Path | None
    guidance: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    validation: dict[str, Any] = field(default_factory=dict)
    best: Path | None = None


def _iteration_seed(seed: int, rank: int, t: int) -> int:
    return int(np.random.SeedSequence([seed, rank, t, 7]).generate_state(1)[0])


class Trainer:
    """Co-trains the three views. ``fit()`` runs (or resumes) to ``schedule.iterations``."""

    def __init__(self, config: TrainConfig, data: TrainingData, run_dir: str | os.PathLike,
                 guidance: Any = None, preprocessing: Mapping[str, Any] | None = None,
                 dist_info: DistInfo | None = None, guidance_reason: str = "") -> None:
        self.config = config.validate()
        self.data = data
        self.run_dir = Path(run_dir)
        self.guidance = Guidance.from_embeddings(guidance)
        self.guidance_reason = guidance_reason or str(getattr(guidance, "reason", "") or "") or (
            "guidance off: no guidance embeddings given" if self.guidance is None else "embeddings given")
        if self.guidance is not None and not self.guidance.reason:
            self.guidance = Guidance(self.guidance.text, self.guidance.visual, self.guidance_reason)
        #: best validation so far and every validation of the run (restored on resume)
        self.validation: dict[str, Any] = {"best_dice": None, "best_iteration": None, "history": []}
        if config.model.head.guided and self.guidance is None:
            raise InputError("the model config has guidance on but no (enabled) guidance embeddings were given; "
                             "give embeddings or train the plain tri-view model (guidance off)")
        if not config.model.head.guided and self.guidance is not None:
            raise InputError("guidance embeddings given but the model config has guidance off")
        self.preprocessing = {"intensity": "zscore", "patch_size": list(config.patch_size), **(preprocessing or {})}
        self.device = select_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = dist_info or init_distributed(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic  # fixed patch size: autotune once
            if config.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(config.seed)
        self.model = TriViewModel(config.model).to(self.device)
        if self.guidance is not None:
            self.model.set_guidance(self.guidance.text, self.guidance.visual)
        self.students: dict[str, nn.Module] = dict(self.model.nets.items())
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.students = {k: DDP(net, device_ids=ids) for k, net in self.model.nets.items()}
        self.optimizers = {v.name: torch.optim.SGD(self.model[v.name].parameters(), lr=config.schedule.base_lr,
                                                   momentum=config.momentum, weight_decay=config.weight_decay)
                           for v in self.model.views}
        self.iteration = 0
        self.use_bf16 = config.bf16 and self.device.type == "cuda"

    # --- state -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def model_state(self) -> dict[str, Any]:
        """Weights and everything inference needs (no optimiser or RNG state; not collective)."""
        return {
            "views": {k: net.state_dict() for k, net in self.model.nets.items()},
            "iteration": self.iteration,
            "guidance": self.guidance.as_dict() if self.guidance else {"enabled": False,
                                                                       "reason": self.guidance_reason},
            "validation": {**self.validation, "history": list(self.validation["history"])},
            "model_config": self.config.model.as_dict(),
            "config": self.config.as_dict(),
            "preprocessing": self.preprocessing,
            "world_size": self.dist.world_size,
        }

    def state(self) -> dict[str, Any]:
        """The full resumable state (collective when distributed: every rank must call it)."""
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {**self.model_state(), "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "rng": all_gather_objects(rng, self.dist)}

    def save(self) -> Path:
        state = self.state()  # collective when distributed: every rank builds it
        if self.dist.main:
            save_checkpoint(state, self.checkpoint_path)
            plot_log(self.run_dir / LOG_NAME, self.run_dir / CURVE_NAME)
        barrier(self.dist)
        return self.checkpoint_path

    def load(self, path: str | os.PathLike) -> None:
        state = load_checkpoint(path)
        if state["model_config"] != self.config.model.as_dict():
            raise InputError(f"checkpoint {path} was trained with another network configuration")
        for k, net in self.model.nets.items():
            net.load_state_dict(state["views"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.iteration = int(state["iteration"])
        saved = state.get("validation") or {}
        self.validation = {"best_dice": saved.get("best_dice"), "best_iteration": saved.get("best_iteration"),
                           "history": list(saved.get("history", []))}
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world_size:
            rng = rngs[self.dist.rank]
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)

    # --- one iteration -------------------------------------------------------------------
    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, dict, dict]:
        dev = self.device
        x = torch.from_numpy(batch.image).to(dev, non_blocking=True)
        labels = {k: torch.from_numpy(v).to(dev, non_blocking=True) for k, v in batch.labels.items()}
        weights = {k: torch.from_numpy(v).to(dev, non_blocking=True) for k, v in batch.weights.items()}
        return x, labels, weights

    def step(self, t: int) -> dict[str, float]:
        """Train iteration ``t`` (0-based); returns the logged values."""
        cfg, sch = self.config, self.config.schedule
        torch.manual_seed(_iteration_seed(cfg.seed, self.dist.rank, t))
        a, b = S.distance_decay(t, sch), S.beta(t, sch)
        thr, lr = S.entropy_threshold(t, sch), S.learning_rate(t, sch)
        batch = sample_batch(self.data, t, a, cfg.patch_size, cfg.labeled_batch, cfg.unlabeled_batch,
                             cfg.seed, self.dist.rank, cfg.augment, self.model.views)
        x, labels, weights = self._to_device(batch)
        nl = batch.n_labeled
        for net in self.model.nets.values():
            net.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = {k: net(x) for k, net in self.students.items()}
            masks = None
            if x.shape[0] > nl:
                masks = {k: certainty_mask(teacher_mean_probability(
                    self.model[k], x[nl:], cfg.teacher_passes, cfg.noise_std, cfg.noise_clip,
                    cfg.batched_teachers), thr) for k in self.students}
        losses = view_losses(logits, labels, weights, nl, masks, b, cfg.loss_form)
        total = torch.stack([v["total"] for v in losses.values()]).sum()
        for o in self.optimizers.values():
            for g in o.param_groups:
                g["lr"] = lr
            o.zero_grad(set_to_none=True)
        total.backward()
        for o in self.optimizers.values():
            o.step()
        n = len(losses)
        values = torch.stack([total.detach(), sum(v["sup"].detach() for v in losses.values()) / n,
                              sum(v["unsup"].detach() for v in losses.values()) / n,
                              (torch.stack([m.float().mean() for m in masks.values()]).mean()
                               if masks else total.new_zeros(()))]).float()
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(values)
            values /= self.dist.world_size
        loss, sup, unsup, certain = values.tolist()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at iteration {t}")
        return {"iteration": t + 1, "loss": loss, "sup": sup, "unsup": unsup, "certain": certain,
                "lr": lr, "beta": b, "alpha": a, "threshold": thr}

    # --- the loop ------------------------------------------------------------------------
    def fit(self, resume: bool = False, callback: Callable[[int, dict], None] | None = None) -> TrainResult:
        """Train to ``schedule.iterations``; ``resume`` continues from ``run_dir/checkpoint.pt``.

        ``callback(iteration, values)`` runs after every iteration (it may raise to stop).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)
        elif self.checkpoint_path.exists() and not resume:
            raise InputError(f"{self.checkpoint_path} exists: pass --resume to continue it or use another run folder")
        log = self.run_dir / LOG_NAME
        if self.dist.main:
            _truncate_log(log, self.iteration)
        total = self.config.schedule.iterations
        bar = None
        if self.dist.main and self.config.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.iteration, desc="train", file=sys.stderr, dynamic_ncols=True)
        every = max(1, self.config.checkpoint_every)
        try:
            while self.iteration < total:
                t0 = time.perf_counter()
                values = self.step(self.iteration)
                self.iteration += 1
                values["seconds"] = time.perf_counter() - t0
                self._maybe_validate(values)
                if self.dist.main:
                    _append_log(log, values)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.0e}",
                                    beta=f"{values['beta']:.3f}", alpha=f"{values['alpha']:.3f}")
                if self.iteration % every == 0 or self.iteration == total:
                    self.save()
                if callback is not None:
                    callback(self.iteration, values)
        finally:
            if bar is not None:
                bar.close()
        curve = None
        if self.dist.main:  # the last save drew it; draw it when nothing was saved (a finished run)
            curve = self.run_dir / CURVE_NAME
            curve = curve if curve.exists() else plot_log(log, curve)
        best = self.run_dir / BEST_NAME
        guidance = {"enabled": self.guidance is not None, "reason": self.guidance_reason}
        return TrainResult(self.checkpoint_path, self.iteration, log, curve, guidance,
                           {**self.validation, "history": list(self.validation["history"])},
                           best if best.exists() and self.validation["best_iteration"] is not None else None)

    # --- validation ----------------------------------------------------------------------
    def _maybe_validate(self, values: dict[str, float]) -> None:
        """Every ``validate_every`` iterations (and at the end): Dice/HD95 on the validation
        cases into ``values``; a new best Dice writes ``best.pt`` (main rank only)."""
        every, cases = self.config.validate_every, self.data.validation
        total = self.config.schedule.iterations
        if not every or not cases or not self.dist.main or (self.iteration % every and self.iteration != total):
            return
        from rada.train.validation import validate

        scores = validate(self.model, cases, self.config.patch_size, bf16=self.use_bf16)
        values["val_dice"], values["val_hd95"] = scores.dice, scores.hd95 if scores.hd95 is not None else math.nan
        self.validation["history"].append({"iteration": self.iteration, **scores.as_dict()})
        best = self.validation["best_dice"]
        if best is None or scores.dice > best:
            self.validation.update(best_dice=scores.dice, best_iteration=self.iteration)
            values["best"] = 1.0
            save_checkpoint(self.model_state(), self.run_dir / BEST_NAME)


def _truncate_log(log: Path, iteration: int) -> None:
    """Keep the rows up to ``iteration`` (the rows of a killed run's lost iterations go)."""
    if not log.exists():
        return
    with open(log, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
    with open(log, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _append_log(log: Path, values: Mapping[str, float]) -> None:
    new = not log.exists()
    with open(log, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(values)


def read_log(log: str | os.PathLike) -> list[dict[str, float]]:
    with open(log, newline="", encoding="utf-8") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


def plot_log(log: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Loss curves (total, supervised, unsupervised) and beta/alpha of a run as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional (extra 'plots')
        return None
    rows = read_log(log)
    if not rows:
        return None
    it = [r["iteration"] for r in rows]
    val = [(r["iteration"], r["val_dice"]) for r in rows if math.isfinite(r.get("val_dice", math.nan))]
    fig, axes = plt.subplots(1, 3 if val else 2, figsize=(15 if val else 10, 3.5))
    ax, ax2 = axes[0], axes[1]
    for key in ("loss", "sup", "unsup"):
        ax.plot(it, [r[key] for r in rows], label=key, lw=0.8)
    ax.set_xlabel("iteration"), ax.set_ylabel("loss"), ax.legend()
    for key in ("beta", "alpha", "certain"):
        ax2.plot(it, [r[key] for r in rows], label=key, lw=0.8)
    ax2.set_xlabel("iteration"), ax2.legend()
    if val:
        axes[2].plot(*zip(*val), "o-", label="validation Dice")
        best = max(val, key=lambda p: p[1])
        axes[2].annotate(f"best {best[1]:.3f} @ {int(best[0])}", best)
        axes[2].set_xlabel("iteration"), axes[2].set_ylabel("Dice"), axes[2].set_ylim(0, 1), axes[2].legend()
    fig.tight_layout()
    from rada.safe_write import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out)


def train(data: TrainingData, run_dir: str | os.PathLike, config: TrainConfig = TrainConfig(),
          guidance: Any = None, resume: bool = False, preprocessing: Mapping[str, Any] | None = None,
          callback: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train (or resume) a tri-view model on data in memory.

    Args:
        data: labeled, unlabeled (and validation) cases.
        run_dir: the run folder (checkpoint, log, curve).
        config: the run's settings; its guidance input follows ``guidance``.
        guidance: embeddings (or a file) to train with; None trains the plain tri-view
            model, and the checkpoint says why.
        resume: continue ``run_dir/checkpoint.pt``.
        preprocessing: facts recorded in the checkpoint for inference.
        callback: ``callback(iteration, values)`` after every iteration.

    Returns:
        :class:`TrainResult`.
    """
    from rada.train.guidance_choice import choose_guidance, with_guidance

    config.validate()
    choice = choose_guidance(guidance, config.model.head.guided)
    config = with_guidance(config, choice)
    return Trainer(config, data, run_dir, choice.embeddings, preprocessing,
                   guidance_reason=choice.reason).fit(resume, callback)


def _resume_state(run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint a run resumes from (None for a new run); refuses to overwrite a run."""
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        return None
    if not resume:
        raise InputError(f"{path} exists: pass --resume to continue it or use another run folder")
    return load_checkpoint(path)


def train_dataset(dataset: str | os.PathLike, run_dir: str | os.PathLike, config: TrainConfig = TrainConfig(),
                  guidance: Any = "auto", resume: bool = False, propagation_config: Any = None,
                  callback: Callable[[int, dict], None] | None = None,
                  progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train on a ``dataset.json`` folder (the train split; its ``val`` cases with a dense label
    are the validation cases).

    Every setting, the dataset's files, the run folder and the guidance are checked before
    the expensive steps: pseudo-labels are then propagated once per labeled case and cached
    in ``run_dir/pseudo_labels`` (under torchrun, rank 0 fills the cache first).

    Args:
        dataset: the dataset folder or its ``dataset.json``.
        run_dir: the run folder.
        config: the run's settings (validated first); its guidance input follows the guidance chosen.
        guidance: ``"auto"`` (the resumed run's, the dataset's ``guidance_embeddings.npz``, or
            computed if the encoder weights are installed, else off with the reason), None
            (off), a file, or embeddings.
        resume: continue ``run_dir/checkpoint.pt``.
        propagation_config: :class:`rada.propagation.PropagationConfig` for the pseudo-labels.
        callback: ``callback(iteration, values)`` after every iteration (may raise to stop).
        progress: one-line messages about the preparation steps.

    Returns:
        :class:`TrainResult` (its ``guidance`` says whether guidance was used and why).
    """
    from rada.dataset import read_dataset
    from rada.train.data import load_training_data
    from rada.train.guidance_choice import choose_guidance, with_guidance

    config.validate()
    spec = read_dataset(dataset)
    run_dir = Path(run_dir)
    device = select_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    resume_state = _resume_state(run_dir, resume)
    choice = choose_guidance(guidance, config.model.head.guided, spec.root, run_dir, resume_state,
                             str(device), progress)
    config = with_guidance(config, choice)
    if resume_state is not None and resume_state["model_config"] != config.model.as_dict():
        raise InputError(f"{run_dir / CHECKPOINT_NAME} was trained with another network configuration")
    info = init_distributed(device)
    cache = run_dir / "pseudo_labels"
    if info.enabled and not info.main:
        barrier(info)  # wait for rank 0 to fill the cache
    if progress:
        progress("propagating pseudo-labels (cached) and loading the dataset")
    data = load_training_data(spec, cache, propagation_config,
                              progress=(lambda case: progress(f"loading {case}")) if progress else None)
    if info.enabled and info.main:
        barrier(info)
    protocol = spec.protocol
    spacing = list(protocol.spacing) if protocol.spacing else _median_spacing(spec)
    preprocessing = {"dataset": spec.name, "organ": spec.organ, "prompt": spec.prompt, "spacing": spacing,
                     "protocol": protocol.as_json()}
    return Trainer(config, data, run_dir, choice.embeddings, preprocessing, info,
                   guidance_reason=choice.reason).fit(resume, callback)


def _median_spacing(spec: Any) -> list[float] | None:
    import SimpleITK as sitk

    spacings = []
    for c in spec.split("train")[:20]:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(spec.path(c.image)))
            reader.ReadImageInformation()
            spacings.append(reader.GetSpacing())
        except RuntimeError:
            continue
    return np.median(np.asarray(spacings), axis=0).tolist() if spacings else None


__all__ = ["TrainConfig", "Guidance", "Trainer", "TrainResult", "train", "train_dataset", "read_log", "plot_log",
           "CHECKPOINT_NAME", "VIEWS"]

"""The RADA trainer: three views co-trained on labeled + unlabeled patches.

One iteration: sample 2 labeled + 2 unlabeled patches (shared by the three views); every
view's network predicts the 4 patches in one forward; each view's teacher certainty comes
from 8 noisy passes batched into one forward; the three views' losses are summed and
back-propagated once (each view's loss only reaches its own weights: teachers' outputs
are detached); the three SGD optimisers step with the same learning-rate schedule.

Resuming is exact: all randomness of iteration ``t`` is seeded from ``(seed, rank, t)``
and the checkpoint holds weights, optimiser states and the iteration (plus RNG states).

:class:`Trainer` runs as a sequence of hooks (see its docstring); the metrics log lives in
:mod:`rada.train.run_log`, training from a dataset folder in :mod:`rada.train.from_dataset`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rada import checkpoint as checkpoints
from rada.config import load_config
from rada.device import select_device
from rada.errors import InputError
from rada.nets.triview import ModelConfig, TriViewModel
from rada.patches import check_patch_size
from rada.train import schedules as S
from rada.train.cotraining import certainty_mask, teacher_mean_probability, view_losses
from rada.train.data import Batch, TrainingData, sample_batch
from rada.train.distributed import DistInfo, all_gather_objects, barrier, init_distributed
from rada.train.guidance_choice import choose_guidance, with_guidance
from rada.train.run_log import RunLog
from rada.train.validation import ValidationScores, validate

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (defaults: METHOD.md section 5, LA2018).

    Attributes:
        model: the tri-view networks' architecture.
        schedule: learning rate, alpha, beta and entropy schedules.
        patch_size: training patch ``[z, y, x]``.
        labeled_batch: labeled patches per iteration.
        unlabeled_batch: unlabeled patches per iteration.
        teacher_passes: noisy teacher passes T of the certainty estimate.
        noise_std: standard deviation of the teachers' input noise.
        noise_clip: that noise is clipped to ``[-noise_clip, noise_clip]``.
        loss_form: ``sgtc`` (DEFAULT) or ``paper``.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        seed: seeds sampling, augmentation, noise and initialisation.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        bf16: bf16 autocast, on CUDA only.
        batched_teachers: the T noisy passes as one forward (faster on GPUs; see
            ``bench/train_step.py``).
        deterministic: CUDA: deterministic kernels (exact resume on GPU); CPU is always exact.
        augment: random axial rotations and flips of the patches.
        checkpoint_every: iterations between checkpoints.
        validate_every: Dice/HD95 on the validation cases every N iterations (0: never).
        progress: show a progress bar.
    """

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
        """The config as nested dicts (stored in checkpoints).

        Returns:
            ``dataclasses.asdict`` of the config.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """A config from a (partial, nested) JSON mapping merged over ``base``.

        Args:
            d: e.g. ``{"schedule": {"iterations": 300}}``.
            base: the config to update (default: the defaults).

        Returns:
            The merged config (not yet validated: see :meth:`validate`).

        Raises:
            InputError: an unknown key or a value of the wrong type.
        """
        return load_config(cls, d, base)

    def with_overrides(self, iterations: int | None = None, width: int | None = None,
                       **fields: Any) -> "TrainConfig":
        """This config with run-time overrides on top (``rada train`` flags, a train job's options).

        Args:
            iterations: ``schedule.iterations``; None keeps this config's.
            width: ``model.backbone.width``; None keeps this config's.
            fields: top-level ``TrainConfig`` fields; None values keep this config's.

        Returns:
            The new config, validated.

        Raises:
            InputError: one line for a setting no run can use.
        """
        schedule = self.schedule if iterations is None else replace(self.schedule, iterations=iterations)
        backbone = self.model.backbone if width is None else replace(self.model.backbone, width=width)
        model = replace(self.model, backbone=backbone)
        given = {k: v for k, v in fields.items() if v is not None}
        return replace(self, model=model, schedule=schedule, **given).validate()

    def validate(self) -> "TrainConfig":
        """Check every setting; cheap, so every entry point calls it before reading data,
        propagating or computing embeddings.

        Returns:
            ``self``.

        Raises:
            InputError: (one line) a setting no run can use.
        """
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
    """Frozen-encoder embeddings the model is trained with.

    Attributes:
        text: the text embedding ``[512]``.
        visual: view name -> visual embedding ``[512]``.
        reason: why the guidance is on (recorded in the checkpoint).
    """

    text: torch.Tensor
    visual: dict[str, torch.Tensor]
    reason: str = ""

    @classmethod
    def from_embeddings(cls, emb: Any) -> "Guidance | None":
        """The trainer's copy of a run's embeddings.

        Args:
            emb: ``rada.guidance.GuidanceEmbeddings`` or anything with ``text``, ``visual``
                and optionally ``enabled``/``reason``; None.

        Returns:
            :class:`Guidance` as float32 vectors, or None when ``emb`` is None or off.
        """
        if emb is None or not getattr(emb, "enabled", True):
            return None
        return cls(torch.as_tensor(emb.text).float().reshape(-1),
                   {k: torch.as_tensor(v).float().reshape(-1) for k, v in emb.visual.items()},
                   str(getattr(emb, "reason", "") or ""))

    def as_dict(self) -> dict:
        """The checkpoint's ``guidance`` entry.

        Returns:
            ``{"enabled": True, "text", "visual", "reason"}`` holding the tensors.
        """
        return {"enabled": True, "text": self.text, "visual": dict(self.visual), "reason": self.reason}


@dataclass
class TrainResult:
    """Where a run's files are, how far it got, its guidance and its best validation.

    Attributes:
        checkpoint: ``run_dir/checkpoint.pt``.
        iterations: the iterations done.
        log: ``run_dir/log.csv``.
        curve: ``run_dir/loss.png`` (None without matplotlib).
        guidance: ``{"enabled": bool, "reason": str}``.
        validation: ``best_dice``, ``best_iteration`` and the ``history`` of validations.
        best: ``run_dir/best.pt`` (the best validation's weights), None without validation.
    """

    checkpoint: Path
    iterations: int
    log: Path
    curve: Path | None
    guidance: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    validation: dict[str, Any] = field(default_factory=dict)
    best: Path | None = None


def _iteration_seed(seed: int, rank: int, t: int) -> int:
    """The torch seed of iteration ``t`` on ``rank``: a resumed run draws what the uninterrupted one did."""
    return int(np.random.SeedSequence([seed, rank, t, 7]).generate_state(1)[0])


@dataclass(frozen=True)
class IterationBatch:
    """What one iteration trains on: its sampled patches and its schedule values.

    Attributes:
        iteration: the 0-based iteration ``t``.
        batch: labeled then unlabeled patches with their per-view labels and weights.
        alpha: the alpha^d weight base of the pseudo-labels at ``t``.
        beta: the weight of the unsupervised loss at ``t``.
        threshold: the entropy threshold of the teachers' certainty masks at ``t``.
        lr: the learning rate of the three optimisers at ``t``.
    """

    iteration: int
    batch: Batch
    alpha: float
    beta: float
    threshold: float
    lr: float


class Trainer:
    """Co-trains the three views; :meth:`fit` runs (or resumes) to ``schedule.iterations``.

    The run is a short sequence of hooks (the nnU-Net v2 trainer's shape, per iteration
    instead of per epoch), each one overridable::

        on_train_start -> [on_iteration_start -> train_step -> on_iteration_end
                           (-> validation_step -> on_validation_end) (-> save_checkpoint)]* -> on_train_end

    Args:
        config: the run's settings (validated here).
        data: labeled, unlabeled and validation cases in memory.
        run_dir: the run folder (``checkpoint.pt``, ``best.pt``, ``log.csv``, ``loss.png``).
        guidance: guidance embeddings (``rada.guidance.GuidanceEmbeddings`` or alike), None for
            the plain tri-view model; must agree with ``config.model``.
        preprocessing: facts recorded in the checkpoint for inference.
        dist_info: the torch.distributed setup (default: initialised from the environment).
        guidance_reason: why the run has (or lacks) guidance, recorded in the checkpoint.

    Raises:
        InputError: a bad setting, or guidance that does not match the model config.
    """

    def __init__(self, config: TrainConfig, data: TrainingData, run_dir: str | os.PathLike,
                 guidance: Any = None, preprocessing: Mapping[str, Any] | None = None,
                 dist_info: DistInfo | None = None, guidance_reason: str = "") -> None:
        self.config = config.validate()
        self.data = data
        self.run_dir = Path(run_dir)
        self.log = RunLog(self.run_dir)
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
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.students = {k: DistributedDataParallel(net, device_ids=ids) for k, net in self.model.nets.items()}
        self.optimizers = {v.name: torch.optim.SGD(self.model[v.name].parameters(), lr=config.schedule.base_lr,
                                                   momentum=config.momentum, weight_decay=config.weight_decay)
                           for v in self.model.views}
        self.iteration = 0
        self.use_bf16 = config.bf16 and self.device.type == "cuda"
        self._progress: tqdm | None = None

    # --- the run -------------------------------------------------------------------------
    def fit(self, resume: bool = False, callback: Callable[[int, dict], None] | None = None) -> TrainResult:
        """Train to ``schedule.iterations``.

        Args:
            resume: continue from ``run_dir/checkpoint.pt``.
            callback: ``callback(iteration, values)`` after every iteration (it may raise to stop).

        Returns:
            :class:`TrainResult`.

        Raises:
            InputError: the run folder holds a checkpoint and ``resume`` is False.
            FloatingPointError: the loss became NaN or infinite.
        """
        self.on_train_start(resume)
        try:
            while self.iteration < self.config.schedule.iterations:
                started = time.perf_counter()
                values = self.train_step(self.on_iteration_start(self.iteration))
                self.iteration += 1
                values["seconds"] = time.perf_counter() - started
                self.on_iteration_end(values)
                if callback is not None:
                    callback(self.iteration, values)
        finally:
            if self._progress is not None:
                self._progress.close()
                self._progress = None
        return self.on_train_end()

    def step(self, t: int) -> dict[str, float]:
        """One training iteration without the bookkeeping (no log, validation or checkpoint).

        Args:
            t: the 0-based iteration.

        Returns:
            The iteration's values (see :meth:`train_step`).
        """
        return self.train_step(self.on_iteration_start(t))

    # --- hooks ---------------------------------------------------------------------------
    def on_train_start(self, resume: bool) -> None:
        """Prepare the run folder: resume its checkpoint (or refuse to overwrite it), drop the
        log rows the checkpoint does not hold, open the progress bar.

        Args:
            resume: continue from ``run_dir/checkpoint.pt`` when it exists.

        Raises:
            InputError: a checkpoint exists and ``resume`` is False, or it belongs to another network.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
        elif self.checkpoint_path.exists() and not resume:
            raise InputError(f"{self.checkpoint_path} exists: pass --resume to continue it or use another run folder")
        if self.dist.main:
            self.log.truncate(self.iteration)
        if self.dist.main and self.config.progress:
            self._progress = tqdm(total=self.config.schedule.iterations, initial=self.iteration, desc="train",
                                  file=sys.stderr, dynamic_ncols=True)

    def on_iteration_start(self, t: int) -> IterationBatch:
        """Seed iteration ``t``'s randomness from ``(seed, rank, t)``, compute its schedule values
        and sample its patches (the same on every view).

        Args:
            t: the 0-based iteration.

        Returns:
            :class:`IterationBatch`.
        """
        cfg, sch = self.config, self.config.schedule
        torch.manual_seed(_iteration_seed(cfg.seed, self.dist.rank, t))
        alpha = S.distance_decay(t, sch)
        batch = sample_batch(self.data, t, alpha, cfg.patch_size, cfg.labeled_batch, cfg.unlabeled_batch,
                             cfg.seed, self.dist.rank, cfg.augment, self.model.views)
        return IterationBatch(t, batch, alpha, S.beta(t, sch), S.entropy_threshold(t, sch), S.learning_rate(t, sch))

    def train_step(self, batch: IterationBatch) -> dict[str, float]:
        """One optimisation step of the three views on ``batch``.

        Every view's network predicts the patches in one forward; each view's teacher certainty
        comes from ``teacher_passes`` noisy passes; the views' losses are summed and
        back-propagated once; the three SGD optimisers step at ``batch.lr``.

        Args:
            batch: the iteration's patches and schedule values (:meth:`on_iteration_start`).

        Returns:
            ``iteration`` (1-based), ``loss`` (the sum over views), ``sup`` and ``unsup`` (means
            over views), ``certain`` (fraction of certain teacher voxels), ``lr``, ``beta``,
            ``alpha``, ``threshold``; averaged over ranks when distributed.

        Raises:
            FloatingPointError: the loss is NaN or infinite.
        """
        cfg = self.config
        x, labels, weights = self._to_device(batch.batch)
        nl = batch.batch.n_labeled
        for net in self.model.nets.values():
            net.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = {k: net(x) for k, net in self.students.items()}
            masks = None
            if x.shape[0] > nl:
                masks = {k: certainty_mask(teacher_mean_probability(
                    self.model[k], x[nl:], cfg.teacher_passes, cfg.noise_std, cfg.noise_clip,
                    cfg.batched_teachers), batch.threshold) for k in self.students}
        losses = view_losses(logits, labels, weights, nl, masks, batch.beta, cfg.loss_form)
        total = torch.stack([v["total"] for v in losses.values()]).sum()
        for o in self.optimizers.values():
            for g in o.param_groups:
                g["lr"] = batch.lr
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
            torch_dist.all_reduce(values)
            values /= self.dist.world_size
        loss, sup, unsup, certain = values.tolist()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at iteration {batch.iteration}")
        return {"iteration": batch.iteration + 1, "loss": loss, "sup": sup, "unsup": unsup, "certain": certain,
                "lr": batch.lr, "beta": batch.beta, "alpha": batch.alpha, "threshold": batch.threshold}

    def on_iteration_end(self, values: dict[str, float]) -> None:
        """Validate when due, log the iteration, update the progress bar, save when due.

        Args:
            values: the iteration's values (validation scores are added to them).
        """
        if self._validation_due():
            self.on_validation_end(self.validation_step(), values)
        if self.dist.main:
            self.log.append(values)
        if self._progress is not None:
            self._progress.update(1)
            self._progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.0e}",
                                       beta=f"{values['beta']:.3f}", alpha=f"{values['alpha']:.3f}")
        every = max(1, self.config.checkpoint_every)
        if self.iteration % every == 0 or self.iteration == self.config.schedule.iterations:
            self.save_checkpoint()

    def validation_step(self) -> ValidationScores:
        """Dice/HD95 of the model on the validation cases (eval mode, no gradients, no random draws).

        Returns:
            :class:`ValidationScores`.
        """
        return validate(self.model, self.data.validation, self.config.patch_size, bf16=self.use_bf16)

    def on_validation_end(self, scores: ValidationScores, values: dict[str, float]) -> None:
        """Record a validation: its scores into ``values`` and the history; a new best Dice
        writes ``best.pt`` (the weights only) and sets ``values["best"]``.

        Args:
            scores: the validation's scores.
            values: the iteration's values.
        """
        values["val_dice"], values["val_hd95"] = scores.dice, scores.hd95 if scores.hd95 is not None else math.nan
        self.validation["history"].append({"iteration": self.iteration, **scores.as_dict()})
        best = self.validation["best_dice"]
        if best is None or scores.dice > best:
            self.validation.update(best_dice=scores.dice, best_iteration=self.iteration)
            values["best"] = 1.0
            checkpoints.save_checkpoint(self.model_state(), self.run_dir / BEST_NAME)

    def on_train_end(self) -> TrainResult:
        """Draw the loss curve if no save did (a finished run resumed) and sum the run up.

        Returns:
            :class:`TrainResult`.
        """
        curve = self.log.curve() if self.dist.main else None
        best = self.run_dir / BEST_NAME
        guidance = {"enabled": self.guidance is not None, "reason": self.guidance_reason}
        return TrainResult(self.checkpoint_path, self.iteration, self.log.path, curve, guidance,
                           {**self.validation, "history": list(self.validation["history"])},
                           best if best.exists() and self.validation["best_iteration"] is not None else None)

    def _validation_due(self) -> bool:
        """Every ``validate_every`` iterations and at the last one, on the main rank, with cases."""
        every, total = self.config.validate_every, self.config.schedule.iterations
        return bool(every and self.data.validation and self.dist.main
                    and (self.iteration % every == 0 or self.iteration == total))

    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, dict, dict]:
        dev = self.device
        x = torch.from_numpy(batch.image).to(dev, non_blocking=True)
        labels = {k: torch.from_numpy(v).to(dev, non_blocking=True) for k, v in batch.labels.items()}
        weights = {k: torch.from_numpy(v).to(dev, non_blocking=True) for k, v in batch.weights.items()}
        return x, labels, weights

    # --- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        """``run_dir/checkpoint.pt``: the resumable state of the run."""
        return self.run_dir / CHECKPOINT_NAME

    def model_state(self) -> dict[str, Any]:
        """Weights and everything inference needs (no optimiser or RNG state; not collective).

        Returns:
            The state ``best.pt`` holds (``checkpoint.pt`` adds optimisers and RNG states).
        """
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
        """The full resumable state (collective when distributed: every rank must call it).

        Returns:
            :meth:`model_state` plus the optimiser states and every rank's RNG states.
        """
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {**self.model_state(), "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "rng": all_gather_objects(rng, self.dist)}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` (main rank, atomically) and redraw the loss curve.

        Collective when distributed: every rank must call it.

        Returns:
            The checkpoint's path.
        """
        state = self.state()  # collective when distributed: every rank builds it
        if self.dist.main:
            checkpoints.save_checkpoint(state, self.checkpoint_path)
            self.log.plot()
        barrier(self.dist)
        return self.checkpoint_path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, optimisers, iteration, validation history and this rank's RNG states.

        Args:
            path: a checkpoint written by :meth:`save_checkpoint`.

        Raises:
            InputError: an unreadable checkpoint or one of another network configuration.
        """
        state = checkpoints.load_checkpoint(path)
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

    Raises:
        InputError: a bad setting or guidance, or a run folder that cannot be used.
    """
    config.validate()
    choice = choose_guidance(guidance, config.model.head.guided)
    config = with_guidance(config, choice)
    return Trainer(config, data, run_dir, choice.embeddings, preprocessing,
                   guidance_reason=choice.reason).fit(resume, callback)


__all__ = ["TrainConfig", "Guidance", "Trainer", "TrainResult", "IterationBatch", "train", "CHECKPOINT_NAME",
           "BEST_NAME"]

"""Ramps and schedules of RADA training (METHOD.md sections 2 and 5), as pure functions of
the iteration ``t`` so that a resumed run recomputes them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from rada.errors import InputError


def sigmoid_ramp(x: float, length: float) -> float:
    """The sigmoid ramp-up of Laine & Aila, ``exp(-5 (1 - clip(x, 0, L) / L)^2)``.

    Args:
        x: the position on the ramp.
        length: ``L``, where the ramp reaches 1.

    Returns:
        A value in (0, 1]; 1 when ``length`` is 0.
    """
    if length <= 0:
        return 1.0
    p = min(max(float(x), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - p) ** 2))


@dataclass(frozen=True)
class ScheduleConfig:
    """Every number of the schedules; defaults are METHOD.md's.

    Attributes:
        iterations: length of the run.
        base_lr: learning rate before the first milestone.
        lr_milestones: iterations where the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: that factor.
        alpha_start: decay base of the voxel weights before the first refresh.
        alpha_refresh: alpha is recomputed every this many iterations.
        alpha_step: ``t // alpha_step`` indexes the cosine.
        alpha_steps: cosine length, in steps (alpha reaches 0 after it).
        beta_max: final weight of the cross-view loss.
        beta_step: ``t // beta_step`` is the position on the beta ramp.
        beta_steps: length of the beta ramp, in steps.
        entropy_base: certainty threshold at the start, in units of ``ln 2``.
        entropy_gain: added to it by the end of the ramp.
        entropy_ramp: length of the threshold's ramp; None: the run's length.
    """

    iterations: int = 6000
    base_lr: float = 0.01
    lr_milestones: tuple[int, ...] = (2500, 5000)
    lr_gamma: float = 0.1
    alpha_start: float = 0.95
    alpha_refresh: int = 1000         # alpha is recomputed every this many iterations
    alpha_step: int = 150             # t // alpha_step indexes the cosine
    alpha_steps: int = 40
    beta_max: float = 0.1
    beta_step: int = 150
    beta_steps: int = 40
    entropy_base: float = 0.75
    entropy_gain: float = 0.25
    entropy_ramp: int | None = None   # None: the run's length (6000)

    def scaled(self, iterations: int) -> "ScheduleConfig":
        """The same schedule shape compressed (or stretched) to ``iterations``.

        The lr milestones, alpha refresh/step, beta step and entropy ramp scale with the run
        (for reduced or time-boxed runs); every scaled step is at least 1.

        Args:
            iterations: length of the new run.

        Returns:
            A new :class:`ScheduleConfig`.
        """
        f = iterations / self.iterations

        def sc(v: int) -> int:
            return max(1, round(v * f))

        return replace(self, iterations=iterations, lr_milestones=tuple(sc(m) for m in self.lr_milestones),
                       alpha_refresh=sc(self.alpha_refresh), alpha_step=sc(self.alpha_step),
                       beta_step=sc(self.beta_step),
                       entropy_ramp=None if self.entropy_ramp is None else sc(self.entropy_ramp))


def learning_rate(t: int, cfg: ScheduleConfig = ScheduleConfig()) -> float:
    """Step schedule applied to ALL optimisers: ``base_lr * gamma^(#milestones <= t)``.

    Args:
        t: the iteration.
        cfg: the schedule.

    Returns:
        The learning rate at ``t``.
    """
    return cfg.base_lr * cfg.lr_gamma ** sum(t >= m for m in cfg.lr_milestones)


def distance_decay(t: int, cfg: ScheduleConfig = ScheduleConfig()) -> float:
    """The decay base of the voxel weights ``decay ** d`` at iteration ``t`` (METHOD.md's alpha).

    ``alpha_start`` before the first refresh, then, refreshed every ``alpha_refresh``
    iterations, ``0.5 (cos(pi min(t'//150, 40) / 40) + 1)`` at ``t'`` the last refresh
    (1000 -> 0.946, 2000 -> 0.761, 3000 -> 0.5, 4000 -> 0.273, 5000 -> 0.074). The config keys
    keep METHOD.md's name, ``alpha_*``.

    Args:
        t: the iteration.
        cfg: the schedule.

    Returns:
        The decay base in [0, 1].
    """
    refreshed = (t // cfg.alpha_refresh) * cfg.alpha_refresh
    if refreshed == 0:
        return cfg.alpha_start
    k = min(refreshed // cfg.alpha_step, cfg.alpha_steps)
    return 0.5 * (math.cos(math.pi * k / cfg.alpha_steps) + 1.0)


def beta(t: int, cfg: ScheduleConfig = ScheduleConfig()) -> float:
    """Unsupervised weight ``beta_max * ramp(t // 150, 40)``.

    Args:
        t: the iteration.
        cfg: the schedule.

    Returns:
        The weight of the cross-view loss at ``t``.
    """
    return cfg.beta_max * sigmoid_ramp(t // cfg.beta_step, cfg.beta_steps)


def entropy_threshold(t: int, cfg: ScheduleConfig = ScheduleConfig()) -> float:
    """Certainty threshold on the teachers' entropy: ``(0.75 + 0.25 ramp(t, T)) ln 2``.

    Args:
        t: the iteration.
        cfg: the schedule.

    Returns:
        The threshold in nats.
    """
    length = cfg.iterations if cfg.entropy_ramp is None else cfg.entropy_ramp
    return (cfg.entropy_base + cfg.entropy_gain * sigmoid_ramp(t, length)) * math.log(2.0)


def voxel_weights(distance: np.ndarray, annotated: np.ndarray, decay: float) -> np.ndarray:
    """The voxel weights of a pseudo-label, ``decay ** distance`` (METHOD.md 2's alpha^d).

    Args:
        distance: slices from each voxel to its view's nearest annotated slice.
        annotated: bool mask of the annotated voxels (same shape).
        decay: the decay base (METHOD.md's alpha), in [0, 1].

    Returns:
        float32 weights, exactly 1 on annotated voxels.

    Raises:
        InputError: shapes differ or ``decay`` is outside [0, 1].
    """
    known = np.asarray(annotated, dtype=bool)
    if known.shape != np.shape(distance):
        raise InputError(f"annotated mask shape {known.shape} differs from the distance map {np.shape(distance)}")
    if not 0.0 <= decay <= 1.0:
        raise InputError(f"the decay base (alpha) must be in [0, 1], got {decay}")
    w = np.power(np.float32(decay), np.asarray(distance).astype(np.float32))
    w[known] = 1.0
    return w


__all__ = ["ScheduleConfig", "sigmoid_ramp", "learning_rate", "distance_decay", "beta", "entropy_threshold",
           "voxel_weights"]

"""Planning: which slice reaches which, from which seed, through which registrations.

Per axis, every slice of the reachable range takes its label from its nearest annotated
(seed) slice; a :class:`Chain` steps away from one seed in one direction, and each step
needs one registration of neighbouring image slices, named by its cache key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rada.annotation import SparseAnnotation, take_slice
from rada.propagation.cache import pair_key
from rada.propagation.config import PropagationConfig
from rada.propagation.registration import normalise
from rada.views import AXIS_OF, VIEW_NAMES

#: One registration to run: ``(fixed, moving, in-plane spacing, registration parameters)``.
RegistrationTask = tuple[np.ndarray, np.ndarray, tuple[float, float], dict[str, Any]]
Box = tuple[slice, slice, slice]


@dataclass
class Chain:
    """Propagation from one seed slice in one direction.

    Attributes:
        axis: the array axis.
        seed: the annotated slice it starts from.
        steps: the slices to reach, in order.
        keys: the registration of each step.
        done: steps already warped.
        label: the current 2D label (in the crop's plane).
        dead: the label went empty: every further step is background.
    """

    axis: int
    seed: int
    steps: list[int]
    keys: list[str] = field(default_factory=list)  # the registration of each step
    done: int = 0            # steps already warped
    label: np.ndarray | None = None  # current 2D label (in the crop's plane)
    dead: bool = False       # the label went empty: every further step is background


@dataclass
class Plan:
    """Every chain, the registrations they need and the reach per view.

    Attributes:
        chains: every chain.
        tasks: registration key -> task, first need first.
        ranges: view name -> the slices ``[lo, hi)`` propagation may reach.
    """

    chains: list[Chain]
    tasks: dict[str, RegistrationTask]
    ranges: dict[str, tuple[int, int]]


def in_plane(values: Sequence[Any], axis: int) -> tuple[Any, ...]:
    """The in-plane part of a per-array-axis triple.

    Args:
        values: one entry per array axis (a box's slices, a spacing).
        axis: the axis the slices are fixed on.

    Returns:
        The two entries of the other axes, in array order.
    """
    return tuple(v for i, v in enumerate(values) if i != axis)


def territories(seeds: Sequence[int], lo: int, hi: int) -> list[tuple[int, int, list[int]]]:
    """Split ``[lo, hi)`` between the seed slices of one axis.

    Args:
        seeds: the annotated slice indices, ascending.
        lo: first reachable slice.
        hi: one past the last reachable slice.

    Returns:
        Chains ``(seed, direction, slices)``: each slice goes to its nearest seed (ties to the
        lower one) and is reached by stepping away from that seed.
    """
    out = []
    for k, s in enumerate(seeds):
        up_end = hi - 1 if k + 1 == len(seeds) else min(hi - 1, (s + seeds[k + 1]) // 2)
        down_end = lo if k == 0 else max(lo, (seeds[k - 1] + s) // 2 + 1)
        up = [i for i in range(s + 1, up_end + 1) if lo <= i < hi]
        down = [i for i in range(s - 1, down_end - 1, -1) if lo <= i < hi]
        out += [(s, 1, up), (s, -1, down)]
    return out


def reach(annotation: SparseAnnotation, axis: int, box: Box, cfg: PropagationConfig) -> tuple[int, int]:
    """The slices ``[lo, hi)`` propagation may reach along ``axis``.

    Args:
        annotation: the sparse annotation.
        axis: the array axis.
        box: the crop.
        cfg: ``stop_at_extent`` and ``extent_slack`` decide.

    Returns:
        The crop's range on that axis, narrowed to the structure's extent when ``stop_at_extent``.
    """
    if not cfg.stop_at_extent:
        return box[axis].start, box[axis].stop
    extent = annotation.extent()
    return (max(box[axis].start, extent[axis].start - cfg.extent_slack),
            min(box[axis].stop, extent[axis].stop + cfg.extent_slack))


class _NormalisedSlices:
    """The crop's slices of one axis, normalised for registration once each."""

    def __init__(self, image: np.ndarray, axis: int, box: Box, percentiles: tuple[float, float]) -> None:
        self.image, self.axis, self.plane, self.percentiles = image, axis, in_plane(box, axis), percentiles
        self._memo: dict[int, np.ndarray] = {}

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self._memo:
            self._memo[index] = normalise(take_slice(self.image, self.axis, index)[self.plane], self.percentiles)
        return self._memo[index]


def plan_chains(image: np.ndarray, annotation: SparseAnnotation, box: Box, cfg: PropagationConfig,
                spacing_zyx: Sequence[float]) -> Plan:
    """Chains of every view and the registrations they need.

    Args:
        image: the image voxels, float32 ``[z, y, x]``.
        annotation: the sparse annotation (its seed slices and labels).
        box: the crop registrations run in.
        cfg: the validated configuration.
        spacing_zyx: voxel spacing in array order.

    Returns:
        The :class:`Plan`; a chain whose seed label is empty is dead from the start and needs
        no registration.
    """
    params = cfg.registration_params()
    chains: list[Chain] = []
    tasks: dict[str, RegistrationTask] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for name in VIEW_NAMES:
        a = AXIS_OF[name]
        lo, hi = ranges[name] = reach(annotation, a, box, cfg)
        plane = in_plane(box, a)
        spacing2d = tuple(float(s) for s in in_plane(spacing_zyx, a))
        slices = _NormalisedSlices(image, a, box, cfg.percentiles)
        for seed, _, steps in territories(annotation.annotated_slices(a), lo, hi):
            seed_label = annotation.slice_mask(a, seed)[plane]
            chain = Chain(a, seed, steps, label=seed_label, dead=not seed_label.any())
            if not chain.dead:
                for prev, i in zip([seed] + steps[:-1], steps):
                    key = pair_key(slices[i], slices[prev], spacing2d, params)  # type: ignore[arg-type]
                    chain.keys.append(key)
                    tasks[key] = (slices[i], slices[prev], spacing2d, params)  # type: ignore[assignment]
            chains.append(chain)
    return Plan(chains, tasks, ranges)


__all__ = ["Chain", "Plan", "RegistrationTask", "in_plane", "plan_chains", "reach", "territories"]

"""How to propagate (:class:`PropagationConfig`, the registration resolutions) and what comes out."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rada.errors import InputError

#: Transforms ANTs may run between neighbouring slices.
TRANSFORMS = ("SyNRA", "SyN")
#: Registration resolutions: ``full`` = ANTs defaults on the slices; ``half`` registers slices
#: downsampled 2x in-plane (the transform is physical, so it is applied to the full-resolution label).
RESOLUTIONS: dict[str, dict[str, Any]] = {
    "full": {"downsample": 1, "reg_iterations": (40, 20, 0)},
    "half": {"downsample": 2, "reg_iterations": (40, 20, 0)},
}

#: ``progress(fraction in [0, 1], message)``.
ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class PropagationConfig:
    """How to propagate; every default follows METHOD.md section 2.

    A script that calls :func:`propagate` with the default ``spawn`` start method needs
    ``if __name__ == "__main__":``, like any multiprocessing program.

    Attributes:
        transform: ANTs ``type_of_transform`` between neighbouring slices (``SyNRA`` or ``SyN``).
        resolution: ``full`` (ANTs defaults) or ``half`` (slices registered downsampled 2x).
        seed: registration seed (given to ANTs as ``seed + 1``: ANTs ignores 0).
        workers: registration processes (None = the CPUs this process may use).
        margin: voxels added around the annotated extent when ``crop`` is on.
        kernel: side of the square opening/closing after every warp (0 or 1 = none).
        stop_at_extent: stop each axis at the structure's extent seen on the other annotated
            axes (plus ``extent_slack`` slices); off = go to the crop box (or volume) edge.
        extent_slack: slices added to that extent.
        crop: register only inside the annotated extent plus ``margin`` (off = full slices).
        percentiles: per-slice intensity clip before registration.
        crop_quantum: the crop box's bounds are rounded outward to multiples of this, so that
            a refinement whose extent grows a little keeps the box, and so its cached
            registrations.
        start_method: how the pool starts workers. ``spawn`` (default) is safe in a process
            that holds threads (torch, a server).
        isolate: run registrations in worker processes with one ITK thread each, even with
            one worker (off = in this process: faster to start, but the transforms then depend
            on this process's ITK thread count, so results may differ from the isolated ones).
    """

    transform: str = "SyNRA"
    resolution: str = "full"
    seed: int = 0
    workers: int | None = None
    margin: int = 10
    kernel: int = 5
    stop_at_extent: bool = True
    extent_slack: int = 0
    crop: bool = True
    percentiles: tuple[float, float] = (1.0, 99.0)
    crop_quantum: int = 8
    start_method: str = "spawn"
    isolate: bool = True

    def validated(self) -> PropagationConfig:
        """Check every field.

        Returns:
            Self, unchanged.

        Raises:
            InputError: naming the bad field.
        """
        if self.transform not in TRANSFORMS:
            raise InputError(f"unknown transform {self.transform!r}; use one of {', '.join(TRANSFORMS)}")
        if self.resolution not in RESOLUTIONS:
            raise InputError(f"unknown registration resolution {self.resolution!r}; use one of {', '.join(RESOLUTIONS)}")
        if self.workers is not None and int(self.workers) < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        if self.margin < 0 or self.extent_slack < 0:
            raise InputError("margin and extent_slack must not be negative")
        if self.crop_quantum < 1:
            raise InputError(f"crop_quantum must be at least 1, got {self.crop_quantum}")
        if self.kernel < 0 or (self.kernel > 1 and self.kernel % 2 == 0):
            raise InputError(f"kernel must be 0, 1 or an odd size, got {self.kernel}")
        if not 0 <= self.seed < 2**31 - 1:
            raise InputError(f"seed must be in [0, 2**31 - 2], got {self.seed}")
        if self.start_method not in multiprocessing.get_all_start_methods():
            raise InputError(f"start_method {self.start_method!r} is not available here; use one of "
                             f"{', '.join(multiprocessing.get_all_start_methods())}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        return self

    def registration_params(self) -> dict[str, Any]:
        """Everything that changes a registration's result (part of the cache key).

        Returns:
            Transform, ANTs seed, percentiles and the resolution's settings, JSON-ready.
        """
        return {"transform": self.transform, "ants_seed": self.seed + 1, "percentiles": list(self.percentiles),
                **{k: list(v) if isinstance(v, tuple) else v for k, v in RESOLUTIONS[self.resolution].items()}}

    def n_workers(self) -> int:
        """Registration processes to use: ``workers``, or the CPUs this process may use.

        Returns:
            At least 1 when ``workers`` is None.
        """
        if self.workers is not None:
            return int(self.workers)
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - macOS / Windows
            return max(1, os.cpu_count() or 1)


@dataclass
class ViewPropagation:
    """One view's pseudo-label and each voxel's distance (slices) to its nearest seed slice.

    Attributes:
        axis: the view's name: ``axial``, ``coronal`` or ``sagittal``.
        label: uint8 0/1 on the full grid, annotated voxels pasted in.
        distance: int16 on the full grid: ``|slice - nearest annotated slice|`` along the
            view's axis.
    """

    axis: str            # the view's propagation axis: 'axial', 'coronal' or 'sagittal'
    label: np.ndarray    # uint8 0/1, full grid, annotated voxels pasted in
    distance: np.ndarray  # int16, full grid: |slice - nearest annotated slice| along ``axis``


@dataclass
class PropagationResult:
    """Per-view pseudo-labels, the fused 3D estimate and run statistics.

    Attributes:
        views: view name -> :class:`ViewPropagation`.
        fused: uint8 0/1, majority of the views, annotated voxels exact.
        stats: timings, registration counts and cache use, for reports.
    """

    views: dict[str, ViewPropagation]
    fused: np.ndarray                      # uint8 0/1, majority of the views, annotated voxels exact
    stats: dict[str, Any] = field(default_factory=dict)


__all__ = ["PropagationConfig", "PropagationResult", "ProgressFn", "RESOLUTIONS", "TRANSFORMS",
           "ViewPropagation"]

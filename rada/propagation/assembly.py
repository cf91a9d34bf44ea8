"""``propagate()``: the whole propagation as a short sequence of named steps."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from rada.annotation import SparseAnnotation, crop_box
from rada.errors import InputError
from rada.propagation.cache import RegistrationCache
from rada.propagation.config import ProgressFn, PropagationConfig, PropagationResult, ViewPropagation
from rada.propagation.planning import Box, in_plane, plan_chains
from rada.propagation.scheduling import ChainRun
from rada.views import AXIS_OF, VIEW_NAMES
from rada.volume import Volume


def propagate(image: Volume, annotation: SparseAnnotation, config: PropagationConfig = PropagationConfig(),
              progress: ProgressFn | None = None, cache: RegistrationCache | None = None) -> PropagationResult:
    """Propagate the annotated slices through the volume along each axis (METHOD.md 2).

    Args:
        image: the image.
        annotation: the sparse annotation on the image's grid.
        config: how to propagate.
        progress: ``progress(fraction, message)``, called as registrations finish.
        cache: keeps the registrations for a later call on the same image.

    Returns:
        The per-view pseudo-labels and distances, the fused estimate and ``stats``:
        ``registrations_planned`` (slice pairs the chains may need), ``registrations_run``
        (computed now), ``registrations_cached`` (found in ``cache``), ``registrations_skipped``
        (not needed: a chain went empty), ``identity_transforms`` (slices too small or flat to
        register), ``workers``, ``transform``, ``resolution``, ``ranges`` (per view, the slices
        propagation may reach, ``[lo, hi)``), ``box`` (the crop, ``[start, stop)`` per array
        axis) and ``seconds``.

    Raises:
        InputError: an unusable image, annotation or configuration.
    """
    t_start = time.perf_counter()
    cfg = config.validated()
    voxels = _checked_voxels(image, annotation)
    box = crop_box(annotation, cfg.margin, quantum=cfg.crop_quantum) if cfg.crop else tuple(
        slice(0, n) for n in voxels.shape)
    spacing_zyx = tuple(reversed(image.spacing))
    plan = plan_chains(voxels, annotation, box, cfg, spacing_zyx)
    run = ChainRun(plan, cfg, spacing_zyx, cache, progress)
    run.run()
    views = assemble_views(run.reached, annotation, box)
    fused = annotation.paste(majority(views))
    stats = {**run.stats, "transform": cfg.transform, "resolution": cfg.resolution,
             "ranges": {k: list(v) for k, v in plan.ranges.items()}, "box": [[s.start, s.stop] for s in box],
             "seconds": round(time.perf_counter() - t_start, 3)}
    if progress is not None:
        progress(1.0, "propagation done")
    return PropagationResult(views, fused, stats)


def assemble_views(reached: dict[int, dict[int, np.ndarray]], annotation: SparseAnnotation,
                   box: Box) -> dict[str, ViewPropagation]:
    """Each view's reached slices placed on the full grid, the annotated voxels pasted in.

    Args:
        reached: per array axis, the 2D label (in the crop's plane) of every slice reached.
        annotation: the sparse annotation.
        box: the crop the labels are in.

    Returns:
        One :class:`ViewPropagation` per view, in :data:`rada.views.VIEW_NAMES` order; slices
        never reached are background.
    """
    shape = annotation.shape
    views: dict[str, ViewPropagation] = {}
    for name in VIEW_NAMES:
        a = AXIS_OF[name]
        plane = in_plane(box, a)
        label = np.zeros(shape, np.uint8)
        for i, lab in reached[a].items():
            label[(slice(None),) * a + (i,)][plane] = lab
        annotation.paste(label)
        views[name] = ViewPropagation(name, label, seed_distance(shape, a, annotation.annotated_slices(a)))
    return views


def majority(views: dict[str, ViewPropagation]) -> np.ndarray:
    """Majority vote of the views.

    Args:
        views: the three views' propagations.

    Returns:
        uint8 0/1: voxels that at least two of the three views call structure.
    """
    votes = sum(v.label.astype(np.uint8) for v in views.values())
    return (votes >= 2).astype(np.uint8)


def seed_distance(shape: Sequence[int], axis: int, seeds: Sequence[int]) -> np.ndarray:
    """Distance in slices from every voxel to the nearest seed slice along ``axis``.

    Args:
        shape: the volume's shape.
        axis: the array axis.
        seeds: the annotated slice indices on that axis.

    Returns:
        int16 array of ``shape``.
    """
    idx = np.arange(shape[axis])
    d = np.min(np.abs(idx[:, None] - np.asarray(seeds)[None, :]), axis=1).astype(np.int16)
    view = [1, 1, 1]
    view[axis] = shape[axis]
    return np.ascontiguousarray(np.broadcast_to(d.reshape(view), tuple(shape)))


def _checked_voxels(image: Volume, annotation: SparseAnnotation) -> np.ndarray:
    """The image voxels as float32, once image and annotation are known to be usable."""
    if not isinstance(image, Volume):
        raise InputError(f"image must be a rada.volume.Volume, got {type(image).__name__}")
    if not isinstance(annotation, SparseAnnotation):
        raise InputError(f"annotation must be a rada.annotation.SparseAnnotation, got {type(annotation).__name__}")
    annotation.validate(image)
    arr = np.asarray(image.array)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"image voxels must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError("the image has NaN or infinite voxels")
    return arr


__all__ = ["assemble_views", "majority", "propagate", "seed_distance"]

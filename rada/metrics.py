"""Overlap and surface metrics: Dice, Jaccard, HD95 and ASD.

Surface distances follow medpy's semantics, which the papers' tables use: the surface of a
mask is the mask minus its erosion by the 6-connected cross; HD95 is the 95th percentile of
the distances pooled in both directions; ASD is the mean distance from the prediction's
surface to the reference's. Distances are given in voxels (as the papers report them) and
in millimetres (using the spacing). An empty prediction or reference has no surface: it is
reported as such (``empty`` set, surface metrics ``None``), never scored as zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one prediction against one reference; distances are None when undefined.

    Attributes:
        dice: Dice coefficient.
        jaccard: Jaccard index.
        hd95: 95th-percentile symmetric surface distance, in voxels.
        asd: average surface distance from prediction to reference, in voxels.
        hd95_mm: ``hd95`` in mm (None without spacing).
        asd_mm: ``asd`` in mm (None without spacing).
        empty: ``prediction``, ``reference``, ``both`` or None (then every distance is None).
    """

    dice: float
    jaccard: float
    hd95: float | None
    asd: float | None
    hd95_mm: float | None
    asd_mm: float | None
    empty: str | None = None  # "prediction", "reference", "both" or None

    def as_dict(self) -> dict:
        """The scores as a dict.

        Returns:
            Field name -> value.
        """
        return asdict(self)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two binary masks.

    Args:
        pred: the prediction (non-zero is foreground).
        ref: the reference, same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both are empty.
    """
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    total = p.sum() + r.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(p, r).sum() / total)


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index (intersection over union) of two binary masks.

    Args:
        pred: the prediction (non-zero is foreground).
        ref: the reference, same shape.

    Returns:
        Jaccard in [0, 1]; 1.0 when both are empty.
    """
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    union = np.logical_or(p, r).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, r).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, iterations=1)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distances from each surface voxel of ``pred`` to the nearest surface voxel of ``ref``.

    Args:
        pred: binary mask.
        ref: binary mask, same shape.
        spacing: per array axis (``[z, y, x]`` order for SimpleITK arrays); None = voxels.

    Returns:
        One distance per surface voxel of ``pred``.

    Raises:
        ValueError: either mask is empty.
    """
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if not p.any() or not r.any():
        raise ValueError("surface distances are undefined for an empty mask")
    dist_to_ref = ndimage.distance_transform_edt(~_surface(r), sampling=spacing)
    return dist_to_ref[_surface(p)]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the symmetric surface distances.

    Args:
        pred: binary mask.
        ref: binary mask, same shape.
        spacing: per array axis; None = voxels.

    Returns:
        The distance, in mm with ``spacing``, else in voxels.

    Raises:
        ValueError: either mask is empty.
    """
    both = np.concatenate([surface_distances(pred, ref, spacing), surface_distances(ref, pred, spacing)])
    return float(np.percentile(both, 95))


def asd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average surface distance from the prediction's surface to the reference's (directed).

    Arguments, units and errors as :func:`hd95`.
    """
    return float(surface_distances(pred, ref, spacing).mean())


def evaluate(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float] | None = None) -> SegmentationScores:
    """All scores of one case.

    Args:
        pred: the prediction (non-zero is foreground).
        ref: the reference, same shape.
        spacing_zyx: voxel size in array order; adds the distances in mm.

    Returns:
        The :class:`SegmentationScores`; distances are None when either mask is empty.

    Raises:
        ValueError: the shapes differ.
    """
    p, r = np.asarray(pred) > 0, np.asarray(ref) > 0
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    empty = {(True, True): "both", (True, False): "prediction", (False, True): "reference"}.get(
        (not p.any(), not r.any()))
    if empty:
        return SegmentationScores(dice(p, r), jaccard(p, r), None, None, None, None, empty)
    mm = spacing_zyx is not None
    fwd = surface_distances(p, r)
    back = surface_distances(r, p)
    fwd_mm = surface_distances(p, r, spacing_zyx) if mm else None
    back_mm = surface_distances(r, p, spacing_zyx) if mm else None
    return SegmentationScores(
        dice=dice(p, r),
        jaccard=jaccard(p, r),
        hd95=float(np.percentile(np.concatenate([fwd, back]), 95)),
        asd=float(fwd.mean()),
        hd95_mm=float(np.percentile(np.concatenate([fwd_mm, back_mm]), 95)) if mm else None,
        asd_mm=float(fwd_mm.mean()) if mm else None,
    )


def summarize(scores: Sequence[SegmentationScores]) -> dict[str, dict[str, float | int]]:
    """Mean and standard deviation of each metric over cases, as in the papers' tables.

    Cases with an empty prediction or reference are counted, not averaged into the surface
    metrics (``n`` says how many cases each mean is over).

    Args:
        scores: one entry per case.

    Returns:
        Metric -> ``{"mean", "std", "n"}`` (metrics without any value are left out), plus
        ``"empty": {"n": ...}``.
    """
    out: dict[str, dict[str, float | int]] = {}
    for key in ("dice", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm"):
        values = np.array([getattr(s, key) for s in scores if getattr(s, key) is not None], dtype=float)
        if values.size:
            out[key] = {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}
    out["empty"] = {"n": int(sum(s.empty is not None for s in scores))}
    return out

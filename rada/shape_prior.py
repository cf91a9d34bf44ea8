"""What the painted slices alone say about the 3D shape, before any registration or model.

Annotated slices on three orthogonal axes bound the structure on every axis. Two cheap
estimates follow from that:

* the *visual hull*: the intersection of every annotated slice's mask extruded along its
  axis (a voxel is kept only if each axis's nearest annotated slice covers it);
* *extent-matched warps*: for each axis, the nearest annotated slice's mask is stretched and
  shifted, slice by slice, so that its extents match the structure's extents seen on the
  annotated slices of the two other axes (which cut through every slice of this axis).

Both run in well under a second on a full LA volume. The pipeline averages the three
axes' warps into a soft shape prior.
"""

from __future__ import annotations

import numpy as np

from rada.annotation import AXIS_NAMES, SparseAnnotation


def _in_plane_axes(axis: int) -> tuple[int, int]:
    b, c = (i for i in range(3) if i != axis)
    return b, c


def _nearest(indices: list[int], t: int) -> int:
    return min(indices, key=lambda s: (abs(s - t), s))


def visual_hull(annotation: SparseAnnotation) -> np.ndarray:
    """Intersection of the annotated masks extruded along their axes (nearest slice per axis)."""
    fg = annotation.foreground()
    hull = np.ones(annotation.shape, bool)
    for axis in range(3):
        seeds = annotation.annotated_slices(axis)
        n = annotation.shape[axis]
        # Each position along the axis takes the mask of its nearest annotated slice.
        nearest = np.array([_nearest(seeds, t) for t in range(n)])
        hull &= np.take(fg, nearest, axis=axis)
    return hull


def _interval(line: np.ndarray) -> tuple[int, int] | None:
    nz = np.flatnonzero(line)
    return (int(nz[0]), int(nz[-1])) if nz.size else None


def _fit_map(pairs: list[tuple[tuple[int, int], tuple[int, int]]]) -> tuple[float, float] | None:
    """Least-squares ``seed = scale * target + shift`` from matched (target, seed) intervals."""
    if not pairs:
        return None
    tgt = np.array([v for t, _ in pairs for v in t], float)
    src = np.array([v for _, s in pairs for v in s], float)
    if np.ptp(tgt) == 0:  # a single point: shift only
        return 1.0, float(src.mean() - tgt.mean())
    scale, shift = np.polyfit(tgt, src, 1)
    return float(scale), float(shift)


def extent_matched_warp(annotation: SparseAnnotation, axis: int) -> np.ndarray:
    """Propagate ``axis``'s annotated masks through the volume by matching extents.

    For a target slice ``t`` along ``axis``, its nearest annotated slice ``s`` is resampled
    (nearest neighbour) with an independent scale and shift per in-plane axis. The map for
    in-plane axis ``c`` is fitted to the foreground intervals along ``c`` that every
    annotated slice of the third axis ``b`` shows at ``t`` (target) and at ``s`` (source).
    Slices where the orthogonal annotations show no structure stay empty.
    """
    fg = annotation.foreground()
    b, c = _in_plane_axes(axis)
    seeds = annotation.annotated_slices(axis)
    planes = {b: annotation.annotated_slices(b), c: annotation.annotated_slices(c)}
    # Reorder once so that fg_t[t, u, v] is (axis=t, b=u, c=v).
    vol = np.transpose(fg, (axis, b, c))
    out = np.zeros_like(vol)
    for t in range(vol.shape[0]):
        s = _nearest(seeds, t)
        if t == s:
            out[t] = vol[s]
            continue
        maps = []
        # Along c: intervals on the lines (t, i_b, :) of the annotated b-planes; along b likewise.
        for along, across in ((1, planes[c]), (2, planes[b])):
            pairs = []
            for i in across:
                line_t = vol[t, :, i] if along == 1 else vol[t, i, :]
                line_s = vol[s, :, i] if along == 1 else vol[s, i, :]
                it, is_ = _interval(line_t), _interval(line_s)
                if it is not None and is_ is not None:
                    pairs.append((it, is_))
            maps.append(_fit_map(pairs))
        if maps[0] is None or maps[1] is None:
            continue
        n_b, n_c = vol.shape[1:]
        src_b = np.rint(maps[0][0] * np.arange(n_b) + maps[0][1]).astype(int)
        src_c = np.rint(maps[1][0] * np.arange(n_c) + maps[1][1]).astype(int)
        ok_b = (src_b >= 0) & (src_b < n_b)
        ok_c = (src_c >= 0) & (src_c < n_c)
        out[t][np.ix_(ok_b, ok_c)] = vol[s][np.ix_(src_b[ok_b], src_c[ok_c])]
    return np.transpose(out, np.argsort((axis, b, c)))


def shape_prior(annotation: SparseAnnotation) -> dict[str, np.ndarray]:
    """Extent-matched warps of all three axes, by axis name (bool arrays on the grid)."""
    return {AXIS_NAMES[a]: extent_matched_warp(annotation, a) for a in range(3)}

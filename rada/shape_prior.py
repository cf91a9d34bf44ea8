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

from scipy import ndimage

from rada.annotation import SparseAnnotation, take_slice
from rada.metrics import dice
from rada.views import VIEW_OF_AXIS


def _in_plane_axes(axis: int) -> tuple[int, int]:
    b, c = (i for i in range(3) if i != axis)
    return b, c


def _nearest(indices: list[int], t: int) -> int:
    return min(indices, key=lambda s: (abs(s - t), s))


def visual_hull(annotation: SparseAnnotation) -> np.ndarray:
    """Intersection of the annotated masks extruded along their axes (nearest slice per axis).

    Only :func:`shaped_axes` take part.

    Args:
        annotation: the sparse annotation.

    Returns:
        Bool ``[z, y, x]`` hull.
    """
    fg = annotation.foreground()
    hull = np.ones(annotation.shape, bool)
    for axis in shaped_axes(annotation):
        seeds = annotation.annotated_slices(axis)
        n = annotation.shape[axis]
        # Each position along the axis takes the mask of its nearest annotated slice.
        nearest = np.array([_nearest(seeds, t) for t in range(n)])
        hull &= np.take(fg, nearest, axis=axis)
    return hull


def shaped_axes(annotation: SparseAnnotation) -> list[int]:
    """Axes with at least one painted slice that shows structure: only those carry a shape.

    An axis whose painted slices are all empty (cropped away, or painted "nothing here")
    says where the structure is not; that is background evidence, not a shape to extrude.

    Args:
        annotation: the sparse annotation.

    Returns:
        Array axes (0, 1, 2) in increasing order.
    """
    fg = annotation.foreground()
    return [a for a in range(3)
            if any(take_slice(fg, a, i).any() for i in annotation.annotated_slices(a))]


def _signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """2D signed distance in mm, positive inside; an empty mask is far outside everywhere."""
    if not mask.any():
        return np.full(mask.shape, -float(max(mask.shape) * max(spacing)), np.float32)
    if mask.all():
        return np.full(mask.shape, float(max(mask.shape) * max(spacing)), np.float32)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (inside - outside).astype(np.float32)


def _box_with_ring(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The 2D mask's bounding box grown by one pixel where the slice allows; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))


def _bracket(indices: list[int], t: int) -> tuple[int, int]:
    """The painted slices just below and above ``t`` (the same one twice outside their range)."""
    below = [s for s in indices if s <= t]
    above = [s for s in indices if s >= t]
    lo = max(below) if below else min(above)
    hi = min(above) if above else max(below)
    return lo, hi


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


def _target_intervals(vol: np.ndarray, t: int, along: int,
                      planes: list[int]) -> list[tuple[int, tuple[int, int] | None]]:
    """Foreground interval of target slice ``t`` along in-plane axis ``along`` (1 or 2) on each painted plane."""
    return [(i, _interval(vol[t, :, i] if along == 1 else vol[t, i, :])) for i in planes]


def _line_intervals(vol: np.ndarray, targets: list[tuple[int, tuple[int, int] | None]], s: int, along: int,
                    read_at: tuple[float, float]) -> tuple[list[tuple[tuple[int, int], tuple[int, int]]], bool]:
    """Matched (target, source) foreground intervals along in-plane axis ``along`` (1 or 2).

    ``targets`` holds the target's interval on each painted plane ``i``
    (:func:`_target_intervals`); the source is read on the line that the other in-plane map
    sends to ``i`` (``read_at``: scale, shift), because that is the source line the warp
    will put there. Also says whether either slice shows anything.
    """
    n_other = vol.shape[2 if along == 1 else 1]
    pairs, seen = [], False
    for i, it in targets:
        j = min(max(int(round(read_at[0] * i + read_at[1])), 0), n_other - 1)
        is_ = _interval(vol[s, :, j] if along == 1 else vol[s, j, :])
        seen = seen or it is not None or is_ is not None
        if it is not None and is_ is not None:
            pairs.append((it, is_))
    return pairs, seen


def _fit_maps(vol: np.ndarray, targets: dict[int, list[tuple[int, tuple[int, int] | None]]], s: int,
              rounds: int = 2) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """The two in-plane maps (scale, shift) taking the target slice's coordinates to slice ``s``'s.

    ``targets`` holds the target's intervals on the painted planes, by in-plane axis
    (:func:`_target_intervals`): its lines stay put between rounds, only where the source is
    read moves.

    Each map is fitted to the intervals on the painted planes of the other in-plane axis.
    The first fit reads the source on the same lines as the target; each further round
    reads it where the other map sends those lines (a wide target slice maps a plane's line
    onto another line of a narrow source), so that the two maps agree with each other.
    A direction whose planes show the source but miss the target keeps the source as it is
    when the other direction matched; one whose planes show the target but miss the source is
    read where the matched direction's map sends its lines; with neither matched both maps
    are None.
    """
    maps: list[tuple[float, float] | None] = [None, None]
    read = [(1.0, 0.0), (1.0, 0.0)]  # where the source lines are read: identity first
    for round_ in range(1 + rounds):
        fitted, matched = [], []
        for along, at in ((1, read[1]), (2, read[0])):
            pairs, seen = _line_intervals(vol, targets[along], s, along, at)
            # Planes that cross neither slice's structure (e.g. only an empty painted plane)
            # say nothing about this direction: keep the source as it is along it.
            fitted.append(_fit_map(pairs) if seen else (1.0, 0.0))
            # matched with a measurable extent (a one-voxel tip defines a shift, not a size)
            matched.append(len({v for t_iv, _ in pairs for v in t_iv}) > 1)
        if round_ == 0 and matched[0] != matched[1]:
            # One direction matched, so the structure is at t. If the other direction's planes
            # show the source but miss the target, the target's narrower cross-section slips
            # between them and its extent along it is unknown: keep the source as it is there.
            # (Planes that miss the source but show the target leave t to the other source.)
            lost = 0 if matched[1] else 1
            if fitted[lost] is None and not any(it is not None for _, it in targets[lost + 1]):
                fitted[lost] = (1.0, 0.0)
            elif fitted[lost] is None:
                # The lost direction's planes cross the target's structure but miss the source's
                # on the same lines (the shape narrowed or moved in the plane): read the source
                # where the matched direction's map sends those lines, as later rounds do.
                pairs, _ = _line_intervals(vol, targets[lost + 1], s, lost + 1, fitted[1 - lost])
                fitted[lost] = _fit_map(pairs)
        if fitted[0] is None or fitted[1] is None:
            break  # keep the last consistent pair (None on the first round)
        maps = fitted
        read = [fitted[0], fitted[1]]
    return maps[0], maps[1]


def _line_agreement(mask: np.ndarray, painted: np.ndarray,
                    targets: dict[int, list[tuple[int, tuple[int, int] | None]]]) -> float:
    """Dice of ``mask`` and the painted structure ``painted`` of the same slice, on the lines
    where painted planes cross it (the only voxels of a target slice that are known)."""
    cols, rows = [i for i, _ in targets[1]], [i for i, _ in targets[2]]

    def on_lines(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[:, cols].ravel(), a[rows, :].ravel()])

    return dice(on_lines(mask), on_lines(painted))


def _span(intervals: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The smallest interval that holds all the given ones (None entries left out); None if none."""
    shown = [iv for iv in intervals if iv is not None]
    return (min(a for a, _ in shown), max(b for _, b in shown)) if shown else None


def _extent_maps(vol: np.ndarray, targets: dict[int, list[tuple[int, tuple[int, int] | None]]],
                 s: int) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The two in-plane maps that match the target's overall extent on the painted lines of each
    direction to the source's on the same lines (one interval each, so one scale and shift).

    Returns None when, along a direction, one of the two slices shows structure on those lines
    and the other does not; a direction where neither does keeps the source as it is.
    """
    maps = []
    for along in (1, 2):
        target = _span([iv for _, iv in targets[along]])
        source = _span([iv for _, iv in _target_intervals(vol, s, along, [i for i, _ in targets[along]])])
        if target is None and source is None:
            maps.append((1.0, 0.0))
        elif target is None or source is None:
            return None
        else:
            maps.append(_fit_map([(target, source)]))
    return maps[0], maps[1]


def _resample(source: np.ndarray, map_b: tuple[float, float], map_c: tuple[float, float]) -> np.ndarray:
    """A 2D mask resampled (nearest neighbour) by the two in-plane maps (target -> source
    coordinates); target pixels that map outside the source are background."""
    n_b, n_c = source.shape
    src_b = np.rint(map_b[0] * np.arange(n_b) + map_b[1]).astype(int)
    src_c = np.rint(map_c[0] * np.arange(n_c) + map_c[1]).astype(int)
    ok_b = (src_b >= 0) & (src_b < n_b)
    ok_c = (src_c >= 0) & (src_c < n_c)
    out = np.zeros(source.shape, bool)
    out[np.ix_(ok_b, ok_c)] = source[np.ix_(src_b[ok_b], src_c[ok_c])]
    return out


def _warp_slice(vol: np.ndarray, t: int, s: int,
                targets: dict[int, list[tuple[int, tuple[int, int] | None]]]) -> np.ndarray | None:
    """Slice ``s`` of ``vol`` (axis-first) resampled to slice ``t``'s extents; None if unknown there
    (no fit, or a fit that lands off all of the source's structure).

    ``targets``: slice ``t``'s intervals on the painted planes, by in-plane axis
    (:func:`_target_intervals`).

    With more than one painted plane in an in-plane direction, one straight-line map is a
    compromise between planes that cross the structure where it is shaped differently, and
    it can squeeze or stretch the source badly. The target's painted lines are known, so the
    fit is checked on them against two simpler candidates: the source as it is (unwarped),
    and the source stretched so that its overall extent on the lines of each direction
    matches the target's (:func:`_extent_maps`; one interval per direction cannot be
    compromised). The candidate that matches the lines best is kept, the fit on a tie. With
    one plane per direction the fit is made from the very lines it would be checked on, and
    is kept (on the development paintings the check chose worse there).
    """
    if t == s:
        return vol[s]
    if not vol[s].any():  # a painted "nothing here": its evidence is an empty slice
        return np.zeros(vol.shape[1:], bool)
    map_b, map_c = _fit_maps(vol, targets, s)
    if map_b is None or map_c is None:
        return None
    out = _resample(vol[s], map_b, map_c)
    # The source shows structure and the planes found it at t too: a warp that misses all of it
    # is a fit gone astray (from a rim slice's single line), not a painted "nothing here".
    if not out.any():
        return None
    if max(len(targets[1]), len(targets[2])) > 1:
        candidates = [out, vol[s]]
        extent = _extent_maps(vol, targets, s)
        if extent is not None:
            stretched = _resample(vol[s], *extent)
            if stretched.any():
                candidates.append(stretched)
        scores = [_line_agreement(c, vol[t], targets) for c in candidates]
        return candidates[int(np.argmax(scores))]
    return out


def extent_matched_warp(annotation: SparseAnnotation, axis: int,
                        spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Propagate ``axis``'s annotated masks through the volume by matching extents.

    For a target slice ``t`` along ``axis``, each of the two painted slices around it is
    resampled (nearest neighbour) with an independent scale and shift per in-plane axis. The
    map for in-plane axis ``c`` is fitted to the foreground intervals along ``c`` that every
    annotated slice of the third axis ``b`` shows at ``t`` (target) and at ``s`` (source); the
    source's interval is read on the line that the map along ``b`` sends to that plane (two
    rounds of refitting), so a small source slice cut near its rim is not over-stretched.
    Where more than one painted plane crosses in a direction, the fit is checked on the
    target's painted lines against the source as it is and the source matched to the lines'
    overall extent, and the best of the three is kept.
    Between two painted slices the two resampled masks are blended by interpolating their 2D
    signed distances (shape-based interpolation), so an empty painted slice (no structure)
    shrinks the shape towards it. Slices where the orthogonal annotations show no structure
    stay empty.

    Args:
        annotation: the sparse annotation.
        axis: the array axis whose painted slices are propagated.
        spacing_zyx: voxel size in array order (mm), for the in-plane signed distances.

    Returns:
        Bool ``[z, y, x]`` mask; empty when ``axis`` has no annotated slice.
    """
    fg = annotation.foreground()
    b, c = _in_plane_axes(axis)
    seeds = annotation.annotated_slices(axis)
    out_shape = tuple(annotation.shape[i] for i in (axis, b, c))
    if not seeds:
        return np.zeros(annotation.shape, bool)
    planes_b, planes_c = annotation.annotated_slices(b), annotation.annotated_slices(c)
    plane_spacing = (float(spacing_zyx[b]), float(spacing_zyx[c]))
    # Reorder once so that vol[t, u, v] is (axis=t, b=u, c=v).
    vol = np.transpose(fg, (axis, b, c))
    out = np.zeros(out_shape, bool)
    shown = [s for s in seeds if vol[s].any()]
    for t in range(vol.shape[0]):
        lo, hi = _bracket(seeds, t)
        if lo == hi and t != lo and not vol[lo].any() and shown:
            # Past the last painted slice, an empty one says nothing about this far side
            # (the second member of a pair): the nearest slice that shows structure does.
            lo = hi = min(shown, key=lambda s: (abs(s - t), s))
        # The target's lines on the painted planes, read once for both sources and every round.
        targets = {1: _target_intervals(vol, t, 1, planes_c), 2: _target_intervals(vol, t, 2, planes_b)}
        m_lo = _warp_slice(vol, t, lo, targets)
        if lo == hi or t == lo:
            out[t] = m_lo if m_lo is not None else False
            continue
        m_hi = _warp_slice(vol, t, hi, targets)
        if m_lo is None or m_hi is None:
            # The orthogonal planes show nothing at t for one source: keep the nearer known one.
            known = [(abs(t - s), m) for s, m in ((lo, m_lo), (hi, m_hi)) if m is not None]
            out[t] = min(known, key=lambda x: x[0])[1] if known else False
            continue
        w = (hi - t) / (hi - lo)
        # Outside both masks both distances are negative, so only their bounding box (plus a
        # ring of background that keeps every distance inside it exact) needs them.
        box = _box_with_ring(m_lo | m_hi)
        if box is None:
            continue
        m_lo, m_hi = m_lo[box], m_hi[box]
        d_lo, d_hi = _signed_distance(m_lo, plane_spacing), _signed_distance(m_hi, plane_spacing)
        # Towards an empty painted slice the shape shrinks to nothing about half way: its
        # distance is the other slice's depth, mirrored.
        if not m_lo.any() and m_hi.any():
            d_lo = np.full_like(d_lo, -max(float(d_hi.max()), min(plane_spacing)))
        if not m_hi.any() and m_lo.any():
            d_hi = np.full_like(d_hi, -max(float(d_lo.max()), min(plane_spacing)))
        out[t][box] = (w * d_lo + (1 - w) * d_hi) > 0
    return np.transpose(out, np.argsort((axis, b, c)))


def shape_prior(annotation: SparseAnnotation,
                spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """Extent-matched warps of the axes that carry a shape (:func:`shaped_axes`), by axis name.

    Args:
        annotation: the painted slices (0/1/255).
        spacing_zyx: voxel size in mm, array order (for the signed distances).

    Returns:
        Bool arrays on the annotation grid; empty dict when no axis shows structure.
    """
    return {VIEW_OF_AXIS[a]: extent_matched_warp(annotation, a, spacing_zyx) for a in shaped_axes(annotation)}

"""Grow from seeds: every voxel joins the painted label it reaches with the least change.

The competition behind Slicer's "Grow from seeds" (Fast GrowCut, Zhu et al. 2014): a voxel
takes the label of the seed from which it can be reached along a path of neighbouring
voxels with the least total absolute intensity change. Paths cross uniform tissue for free
and pay at every edge, so the result follows image boundaries wherever they are: around the
bends of a vessel, along a bone, into a piece of a pair that the painted shape misses.

Two uses, one algorithm (:func:`grow_from_seeds`, shortest paths with
``scipy.sparse.csgraph``):

* :func:`growcut_logit`: evidence for the fusion. The painted structure and the painted
  background compete on the image inside a region around the shape evidence (everything
  outside it is background), and the winner gives a log-odds of ``+1`` or ``-1``.
* :func:`refine_uncertain`: the last step of the fusion. Voxels whose fused probability is
  confident keep their label; the uncertain band between them is decided by the same
  competition on the probability map, so the boundary lands where the evidence changes
  fastest rather than at an arbitrary 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import dijkstra

from rada.annotation import SparseAnnotation

#: The 6 face neighbours, each undirected edge listed once.
_OFFSETS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


@dataclass
class GrowCutConfig:
    """Settings of the image competition (:func:`growcut_logit`).

    Attributes:
        region_margin: voxels around the shape evidence (visual hull and per-axis warps) in
            which the competition runs; outside it is background. Keeps the growth from
            leaking along same-intensity tissue far from anything painted.
        percentiles: intensities are scaled so that these percentiles of the region map to
            0 and 1 (robust to outliers and to the modality's units).
        tie_cost: a tiny cost per step, so that among equally uniform paths the shorter wins.
        max_voxels: larger crops compete on a coarser grid (same field of view) and the
            answer is brought back by nearest neighbour, so that a whole-organ crop stays at
            seconds. Coarse grids of 0.3-0.6 M voxels cost 0.002-0.004 mean Dice on the dev
            structures; at 1.5 M (which coarsens only the left-atrium crops, 2-3 M voxels,
            by a factor of about 1.2) the peers means are unchanged to the third decimal and
            the slowest LA case went from 5.2 s to under 4 s.
    """

    region_margin: int = 12
    percentiles: tuple[float, float] = (1.0, 99.0)
    tie_cost: float = 1e-4
    max_voxels: int = 1_500_000


def grow_from_seeds(intensity: np.ndarray, structure: np.ndarray, background: np.ndarray,
                    tie_cost: float = 1e-4) -> np.ndarray:
    """Label every voxel by the seed set it reaches with the least total intensity change.

    Args:
        intensity: float ``[z, y, x]`` (any scale; the cost is ``|I(p) - I(q)|`` per step
            between face neighbours, plus ``tie_cost``).
        structure: bool seeds of the structure.
        background: bool seeds of the background (wins where both are set).

    Returns:
        bool ``[z, y, x]``: True where the structure seeds win. With no structure seed,
        all False; with no background seed, all True (where reachable).
    """
    structure = np.asarray(structure, bool) & ~np.asarray(background, bool)
    background = np.asarray(background, bool)
    if not structure.any():
        return np.zeros(intensity.shape, bool)
    if not background.any():
        return np.ones(intensity.shape, bool)
    free = ~(structure | background)
    if not free.any():
        return structure.copy()
    # Only free voxels and the seeds touching them take part in the search.
    nodes_mask = ndimage.binary_dilation(free) | free
    index = np.full(intensity.shape, -1, np.int64)
    nodes = np.flatnonzero(nodes_mask)
    index.flat[nodes] = np.arange(nodes.size)
    value = np.asarray(intensity, np.float32)
    rows, cols, weights = [], [], []
    for offset in _OFFSETS:
        a = tuple(slice(0, n - d) for n, d in zip(value.shape, offset))
        b = tuple(slice(d, n) for n, d in zip(value.shape, offset))
        ia, ib = index[a], index[b]
        edge = (ia >= 0) & (ib >= 0) & (free[a] | free[b])  # seed-to-seed steps never matter
        rows.append(ia[edge])
        cols.append(ib[edge])
        weights.append(np.abs(value[a][edge] - value[b][edge]) + tie_cost)
    graph = sparse.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(nodes.size, nodes.size))
    seeds = np.concatenate([index[structure & nodes_mask], index[background & nodes_mask]])
    _, _, source = dijkstra(graph, directed=False, indices=seeds, min_only=True, return_predecessors=True)
    out = structure.copy()
    won = np.zeros(nodes.size, bool)
    reached = source >= 0
    won[reached] = structure.flat[nodes[source[reached]]]
    free_nodes = free.flat[nodes]
    out.flat[nodes[free_nodes]] = won[free_nodes]
    return out


def growcut_logit(image: np.ndarray, annotation: SparseAnnotation, shape_evidence: np.ndarray,
                  config: GrowCutConfig = GrowCutConfig()) -> np.ndarray:
    """Log-odds ``+1`` / ``-1`` from the competition of painted structure and background.

    Args:
        image: the working crop ``[z, y, x]``.
        annotation: the painted slices on the same grid (0/1/255).
        shape_evidence: bool, where the painted slices' shape says the structure may be (the
            visual hull and the per-axis warps); the competition runs within
            ``config.region_margin`` voxels of it.
        config: region and scaling.

    Returns:
        float32 ``[z, y, x]``: ``+1`` where the painted structure wins, ``-1`` elsewhere
        (everywhere ``-1`` when no structure is painted on the crop).
    """
    known, fg = annotation.known(), annotation.foreground()
    structure = known & fg
    region = ndimage.binary_dilation(shape_evidence, iterations=config.region_margin) \
        if config.region_margin else np.asarray(shape_evidence, bool)
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img[region], config.percentiles) if region.any() else (0.0, 1.0)
    scaled = (img - lo) / max(float(hi - lo), 1e-6)
    # outside the region is background, except what is painted as structure
    background = (known & ~fg) | (~region & ~structure)
    factor = (img.size / config.max_voxels) ** (1 / 3) if config.max_voxels else 1.0
    if factor <= 1.0:
        won = grow_from_seeds(scaled, structure, background, config.tie_cost)
        return np.where(won, 1.0, -1.0).astype(np.float32)
    coarse = tuple(max(2, int(round(n / factor))) for n in img.shape)
    zoom = np.asarray(coarse, float) / np.asarray(img.shape, float)
    structure_c, background_c = _coarse_seeds(structure, coarse), _coarse_seeds(background, coarse)
    both = structure_c & background_c  # a painted boundary collapsed onto one coarse voxel: no vote
    won = grow_from_seeds(ndimage.zoom(scaled, zoom, order=1, grid_mode=True, mode="nearest"), structure_c & ~both,
                          background_c & ~both, config.tie_cost)
    back = tuple(_coarse_index(n, c) for n, c in zip(img.shape, coarse))
    return np.where(won[np.ix_(*back)], 1.0, -1.0).astype(np.float32)


def _coarse_index(n: int, c: int) -> np.ndarray:
    """The coarse voxel (of ``c``) holding each of ``n`` fine voxels along one axis (exact integers,
    so that seeds go down and the answer comes back by the same map)."""
    return np.arange(n) * c // n


def _coarse_seeds(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Seed voxels moved to the coarse voxel that contains them (thin painted planes survive)."""
    out = np.zeros(shape, bool)
    out[tuple(_coarse_index(n, c)[i] for n, c, i in zip(mask.shape, shape, np.nonzero(mask)))] = True
    return out


def refine_uncertain(logit: np.ndarray, annotation: SparseAnnotation, confidence: float,
                     tie_cost: float = 1e-4) -> np.ndarray:
    """Threshold fused log-odds, deciding the uncertain band by the competition on the probability.

    Args:
        logit: fused log-odds ``[z, y, x]``.
        annotation: the painted slices (their voxels are seeds of their own label).
        confidence: voxels with probability above it (below ``1 - confidence``) are seeds of
            the structure (background); ``0.5`` is a plain threshold at 0.

    Returns:
        bool ``[z, y, x]`` label.
    """
    known, fg = annotation.known(), annotation.foreground()
    painted_fg, painted_bg = known & fg, known & ~fg
    if confidence <= 0.5:  # a plain threshold: no probabilities, no search
        return (logit > 0) & ~painted_bg | painted_fg
    prob = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logit, np.float32), -30.0, 30.0)))
    background = ((prob < 1.0 - confidence) & ~painted_fg) | painted_bg
    structure = ((prob > confidence) | painted_fg) & ~background
    return grow_from_seeds(prob, structure, background, tie_cost)

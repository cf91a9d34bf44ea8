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
  outside it is background). The winner votes ``+1`` or ``-1``, less where the two labels
  reach a voxel at nearly the same cost (:func:`path_cost_margin`).
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
            the slowest LA case went from 5.2 s to under 4 s. The soft vote needs the losing
            label's cost as well: at 1.0 M (factor about 1.35 on LA) the LA dev means moved by
            less than 0.001.
        softness: the vote is the difference of the two labels' least path costs (in the
            scaled intensity of ``percentiles``) over ``softness``, clipped to ``[-1, 1]``: a
            voxel that both labels reach at nearly the same cost votes little either way.
            ``0``: the winner's hard ``+1`` / ``-1``. Chosen on the dev split (0.02-0.05
            measured; 0.03 raised the LA means by 0.002 / 0.005 / 0.007 at k = 1 / 2 / 3).
    """

    region_margin: int = 12
    percentiles: tuple[float, float] = (1.0, 99.0)
    tie_cost: float = 1e-4
    max_voxels: int = 1_000_000
    softness: float = 0.03


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
    graph, nodes, index = _seed_graph(intensity, free, tie_cost)
    _, won = _winners(graph, nodes, index, structure, background)
    out = structure.copy()
    free_nodes = free.flat[nodes]
    out.flat[nodes[free_nodes]] = won[free_nodes]
    return out


def path_cost_margin(intensity: np.ndarray, structure: np.ndarray, background: np.ndarray,
                     tie_cost: float = 1e-4, limit: float = np.inf) -> np.ndarray:
    """How much cheaper the structure seeds reach each voxel than the background seeds do.

    The same paths as :func:`grow_from_seeds`, but both least costs count: the margin is
    ``cost(background) - cost(structure)``, positive where the structure wins (its sign is
    :func:`grow_from_seeds`'s answer) and near 0 where the two labels tie.

    One search finds each voxel's winner and its cost; a second one finds how much more the
    loser pays, on costs reduced by the first search's (Johnson's reweighting, so that every
    step still costs ``>= 0``). Started where the two labels' regions meet, that second search
    only has to reach as far as the margin is below ``limit``: near the meeting surface.

    Args:
        intensity: float ``[z, y, x]``.
        structure: bool seeds of the structure.
        background: bool seeds of the background (wins where both are set).
        tie_cost: cost per step on top of the intensity change.
        limit: margins beyond ``limit`` either way are given as ``+inf`` / ``-inf``
            (the default: all exact).

    Returns:
        float32 ``[z, y, x]``: ``+inf`` on structure seeds and where only the structure is
        reachable, ``-inf`` on background seeds and where the structure is not reachable.
    """
    structure = np.asarray(structure, bool) & ~np.asarray(background, bool)
    background = np.asarray(background, bool)
    out = np.where(structure, np.inf, -np.inf).astype(np.float32)
    free = ~(structure | background)
    if not structure.any() or not free.any():
        return out
    graph, nodes, index = _seed_graph(intensity, free, tie_cost)
    cost, won = _winners(graph, nodes, index, structure, background)
    excess = _loser_excess(graph, cost, won, limit)
    free_nodes = free.flat[nodes]
    out.flat[nodes[free_nodes]] = np.where(won, excess, -excess)[free_nodes]
    return out


def _winners(graph: sparse.csr_matrix, nodes: np.ndarray, index: np.ndarray, structure: np.ndarray,
             background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One search from all seeds: per node the least cost and whether the structure won.

    Every node is reached: a node is a free voxel or a seed touching one, and every component
    of free voxels borders a seed (the callers return early when there is none)."""
    seeds = np.concatenate([index[structure & (index >= 0)], index[background & (index >= 0)]])
    cost, _, source = dijkstra(graph, directed=False, indices=seeds, min_only=True, return_predecessors=True)
    return cost, structure.flat[nodes[source]]


def _loser_excess(graph: sparse.csr_matrix, cost: np.ndarray, won: np.ndarray, limit: float) -> np.ndarray:
    """Per node, how much more than the winner's ``cost`` the other label pays to reach it
    (``inf`` beyond ``limit``, or where it never arrives).

    The other label's cheapest path enters the node's region for the last time over an edge
    between the two regions and stays inside after it. With costs reduced by the winners'
    ``w + cost(a) - cost(b)`` (``>= 0``), a path's reduced length is its excess over the
    winner's cost, so one search from a virtual node joined to every region-crossing edge
    gives all excesses at once.
    """
    coo = graph.tocoo()
    a, b, w = coo.row, coo.col, coo.data
    n = cost.size
    inside = won[a] == won[b]
    # the winner's costs are shortest paths, so reduced steps inside a region are >= 0 (up to rounding)
    ai, bi, wi = a[inside], b[inside], w[inside]
    rows = np.concatenate([ai, bi])
    cols = np.concatenate([bi, ai])
    step = np.concatenate([wi + cost[ai] - cost[bi], wi + cost[bi] - cost[ai]])
    # across a boundary: the other label arrives at the far node at the near node's cost plus the step
    ac, bc, wc = a[~inside], b[~inside], w[~inside]
    entry = np.full(n, np.inf)
    np.minimum.at(entry, np.concatenate([bc, ac]), np.concatenate([wc + cost[ac] - cost[bc], wc + cost[bc] - cost[ac]]))
    start = np.flatnonzero(np.isfinite(entry))
    rows = np.concatenate([rows, np.full(start.size, n)])
    cols = np.concatenate([cols, start])
    step = np.maximum(np.concatenate([step, entry[start]]), 0.0)  # explicit zeros stay edges in csgraph
    reduced = sparse.csr_matrix((step, (rows, cols)), shape=(n + 1, n + 1))
    return dijkstra(reduced, directed=True, indices=n, limit=limit)[:n]


def _seed_graph(intensity: np.ndarray, free: np.ndarray,
                tie_cost: float) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """The face-neighbour graph of the free voxels and the seeds that touch them.

    Returns:
        (sparse graph with ``|I(p) - I(q)| + tie_cost`` per edge, flat voxel index of each
        node, node index per voxel or -1).
    """
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
    return graph, nodes, index


def growcut_logit(image: np.ndarray, annotation: SparseAnnotation, shape_evidence: np.ndarray,
                  config: GrowCutConfig = GrowCutConfig()) -> np.ndarray:
    """Log-odds in ``[-1, 1]`` from the competition of painted structure and background.

    Args:
        image: the working crop ``[z, y, x]``.
        annotation: the painted slices on the same grid (0/1/255).
        shape_evidence: bool, where the painted slices' shape says the structure may be (the
            visual hull and the per-axis warps); the competition runs within
            ``config.region_margin`` voxels of it.
        config: region and scaling.

    Returns:
        float32 ``[z, y, x]`` in ``[-1, 1]``: ``+1`` where the painted structure wins by at
        least ``config.softness`` of path cost, ``-1`` where the background does, in between
        where they nearly tie (only ``+1`` / ``-1`` with ``softness = 0``); everywhere ``-1``
        when no structure is painted on the crop.
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
        return _vote(scaled, structure, background, config)
    coarse = tuple(max(2, int(round(n / factor))) for n in img.shape)
    zoom = np.asarray(coarse, float) / np.asarray(img.shape, float)
    structure_c, background_c = _coarse_seeds(structure, coarse), _coarse_seeds(background, coarse)
    both = structure_c & background_c  # a painted boundary collapsed onto one coarse voxel: no vote
    vote = _vote(ndimage.zoom(scaled, zoom, order=1, grid_mode=True, mode="nearest"), structure_c & ~both,
                 background_c & ~both, config)
    back = tuple(_coarse_index(n, c) for n, c in zip(img.shape, coarse))
    return vote[np.ix_(*back)]


def _vote(scaled: np.ndarray, structure: np.ndarray, background: np.ndarray, config: GrowCutConfig) -> np.ndarray:
    """The competition's ``[-1, 1]`` vote: the path-cost margin over ``softness``, or the hard winner."""
    if config.softness > 0:
        margin = path_cost_margin(scaled, structure, background, config.tie_cost, limit=config.softness)
        return np.clip(margin / np.float32(config.softness), -1.0, 1.0).astype(np.float32)
    return np.where(grow_from_seeds(scaled, structure, background, config.tie_cost), 1.0, -1.0).astype(np.float32)


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

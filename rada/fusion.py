"""Fusing the evidence for one case into a label: shape prior, appearance, optional extras.

Everything is expressed as a per-voxel log-odds that the voxel belongs to the structure:

* the shape prior (the mean of the per-axis warps, smoothed) gives ``log(p / (1 - p))``;
* the appearance adds the log-odds of a pixel classifier trained on this case's painted
  voxels (``rada.appearance``);
* the competition of painted structure and background on the image (``rada.growcut``, the
  idea of Slicer's Grow from seeds) adds edge-following evidence;
* further sources (ANTs propagation, a trained model's probabilities) add their log-odds.

The sum is (optionally) smoothed and limited to a region around the shape evidence. Confident
voxels keep their label and the uncertain band between them is decided by the same
competition on the fused probability (``rada.growcut.refine_uncertain``). The label is then
cleaned: pieces that touch no painted structure voxel on any painted plane are dropped (a
pair's second member is kept when one plane shows it), holes are filled, and the painted
voxels are written back exactly (an empty painted slice stays empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from rada.annotation import SparseAnnotation
from rada.growcut import refine_uncertain


@dataclass
class FusionConfig:
    """Weights and smoothing of the evidence fusion.

    Defaults chosen on the development part of ``bench/peers_split.json`` (structures and LA
    validation cases, never the held-out ones).

    Attributes:
        prior_sigma: smoothing of the averaged shape warps, in voxels.
        prior_clip: keeps prior log-odds finite: p at most ``1 - clip``.
        prior_floor: the prior's probability is at least this. The warps stretch the
            painted shapes and miss what the slices do not show (a vessel's branches), so
            where none reaches, the prior speaks against the structure less firmly than it
            speaks for it inside them; the competition and the classifier decide there.
        prior_weight: weight of the shape prior's log-odds. Chosen on dev over 0.3-0.6 once the
            warps were checked on the painted lines (0.3 before): the mean rises slowly with
            the weight (0.9149 at 0.3, 0.9157 at 0.4 over the 78 dev paintings) while the
            worst k -> k + 1 step falls past 0.375 (-0.0088 at 0.4, -0.0106 at 0.45); 0.35
            and 0.375 had the smallest worst step (-0.0075), 0.35 fewer steps under -0.005.
        appearance_weight: weight of the per-case classifier's log-odds.
        appearance_clip: probability clip of the classifier before its log-odds. A forest
            trained on a few painted planes gives probabilities near 0 or 1 to tissue that
            no painted voxel resembles; they are not calibrated. Capped at ``logit(1 -
            clip)`` (2.2 at 0.1), it can be outvoted inside the warps by the prior and the
            competition together (up to 0.35 * 4.6 = 1.61, plus 1.0).
        growcut_weight: weight of the image competition's vote in ``[-1, 1]`` (``rada.growcut``).
        intensity_weight: weight of the histogram log-likelihood ratio (the old appearance).
        histogram_bins: bins of that histogram.
        logit_sigma: smoothing of the summed log-odds, in voxels (0: thin parts survive).
        region_margin: how far past the shape evidence the result may reach, in voxels.
        refine_confidence: fused probabilities above it (below ``1 - refine_confidence``)
            are kept as they are; the band between is decided by the competition on the
            probability map. ``0.5``: a plain threshold at log-odds 0.
    """

    prior_sigma: float = 1.0        # voxels: smoothing of the averaged shape warps
    prior_clip: float = 0.01        # keep prior log-odds finite: p <= 1 - clip
    prior_floor: float = 0.1        # p >= floor: outside every warp is weaker evidence than inside
    prior_weight: float = 0.35      # weight of the shape prior's log-odds
    appearance_weight: float = 1.0  # weight of the per-case classifier's log-odds
    appearance_clip: float = 0.1    # the classifier's log-odds stay within +-2.2
    growcut_weight: float = 1.0     # weight of the image competition's vote in [-1, 1] (rada.growcut)
    intensity_weight: float = 0.0   # weight of the histogram log-likelihood ratio (the old appearance)
    histogram_bins: int = 32
    logit_sigma: float = 0.0        # voxels: smoothing of the summed log-odds (0: thin parts survive)
    region_margin: int = 8          # voxels: how far past the shape evidence the result may reach
    refine_confidence: float = 0.97  # outside [1 - c, c] the fused probability decides alone


def probability_to_logit(p: np.ndarray, clip: float) -> np.ndarray:
    """Log-odds of a probability, clipped to stay finite.

    Args:
        p: probabilities.
        clip: ``p`` is clipped to ``[clip, 1 - clip]`` first.

    Returns:
        float32 ``log(p / (1 - p))``.
    """
    p = np.clip(np.asarray(p, np.float32), clip, 1.0 - clip)
    return np.log(p / (1.0 - p))


def intensity_log_likelihood_ratio(image: np.ndarray, annotation: SparseAnnotation, region: np.ndarray,
                                   bins: int = 32) -> np.ndarray:
    """``log p(I | structure) - log p(I | background)`` from histograms of the painted slices.

    Intensities are binned between the 1st and 99th percentile inside ``region``; the
    background histogram uses annotated background voxels inside ``region`` only, so that
    far-away tissue does not dilute it. Laplace smoothing keeps unseen bins finite.

    Args:
        image: the image ``[z, y, x]``.
        annotation: the sparse annotation on its grid.
        region: bool ``[z, y, x]``, the region of interest (not empty).
        bins: histogram bins.

    Returns:
        float32 ``[z, y, x]`` log-likelihood ratio.
    """
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img[region], [1, 99])
    q = np.clip(((img - lo) / max(hi - lo, 1e-6) * bins).astype(np.int64), 0, bins - 1)
    known, fg = annotation.known(), annotation.foreground()
    h_fg = np.bincount(q[known & fg], minlength=bins) + 1.0
    h_bg = np.bincount(q[known & ~fg & region], minlength=bins) + 1.0
    h_fg = ndimage.gaussian_filter1d(h_fg / h_fg.sum(), 1.0)
    h_bg = ndimage.gaussian_filter1d(h_bg / h_bg.sum(), 1.0)
    return np.log(h_fg / h_bg).astype(np.float32)[q]


def prior_logit(shape_warps: Sequence[np.ndarray], shape: tuple[int, ...], config: FusionConfig) -> np.ndarray:
    """Log-odds of the shape prior: the mean of the warps, smoothed, clipped.

    Args:
        shape_warps: warped 0/1 shape masks, each of ``shape``.
        shape: the grid's shape.
        config: ``prior_sigma``, ``prior_floor`` and ``prior_clip``.

    Returns:
        float32 log-odds of ``shape``; the logit of ``prior_floor`` everywhere when there is
        no warp.
    """
    if not len(shape_warps):
        prior = np.zeros(shape, np.float32)
    else:
        prior = ndimage.gaussian_filter(np.mean(np.stack(shape_warps), axis=0, dtype=np.float32), config.prior_sigma)
    return probability_to_logit(np.maximum(prior, np.float32(config.prior_floor)), config.prior_clip)


def keep_painted_components(mask: np.ndarray, annotation: SparseAnnotation) -> np.ndarray:
    """Drop connected components that touch no painted structure voxel; fill holes.

    Any painted plane counts: a left/right pair whose sagittal slice shows one member keeps
    the other one as long as the axial or coronal slice shows it.

    Args:
        mask: bool ``[z, y, x]`` segmentation.
        annotation: the sparse annotation on its grid.

    Returns:
        The cleaned bool mask.
    """
    labels, n = ndimage.label(mask)
    if n > 1:
        painted = np.unique(labels[annotation.foreground() & mask])
        mask = np.isin(labels, painted[painted > 0])
    return ndimage.binary_fill_holes(mask)


def fuse(image: np.ndarray, annotation: SparseAnnotation, shape_warps: Sequence[np.ndarray],
         hull: np.ndarray, config: FusionConfig = FusionConfig(),
         extra_logits: Sequence[np.ndarray] = (),
         appearance: np.ndarray | None = None,
         growcut: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Combine the evidence.

    Args:
        image: the working crop.
        annotation: the painted slices on the crop (0/1/255).
        shape_warps: bool shape estimates (per-axis warps, propagated labels); may be empty.
        hull: the visual hull; with the warps it bounds where the result may reach.
        config: weights and smoothing.
        extra_logits: further log-odds to add (a trained model).
        appearance: probability of the per-case classifier (optional).
        growcut: log-odds of the image competition (``rada.growcut.growcut_logit``,
            optional); where it says structure the result may also reach.

    Returns:
        (label mask, fused log-odds before thresholding).
    """
    if len(shape_warps):
        shape_any = np.logical_or.reduce([np.asarray(w, bool) for w in shape_warps]) | hull
    else:  # no axis shows structure on the crop: the painted voxels only
        shape_any = hull.copy()
    logit = config.prior_weight * prior_logit(shape_warps, image.shape, config)
    use_growcut = growcut is not None and config.growcut_weight > 0
    if use_growcut:
        shape_any = shape_any | (growcut > 0)
    # The region: any shape evidence (a warp reaches a pair's second member where the hull
    # may not; the image competition follows edges past both), plus a margin.
    region = ndimage.binary_dilation(shape_any, iterations=config.region_margin) \
        if config.region_margin else shape_any
    if config.intensity_weight and region.any():
        logit += config.intensity_weight * intensity_log_likelihood_ratio(
            image, annotation, region, config.histogram_bins)
    if appearance is not None and config.appearance_weight:
        logit += config.appearance_weight * probability_to_logit(appearance, config.appearance_clip)
    if use_growcut:
        logit += config.growcut_weight * growcut
    for extra in extra_logits:
        logit += extra
    if config.logit_sigma:
        logit = ndimage.gaussian_filter(logit, config.logit_sigma)
    logit = np.where(region, logit, np.float32(-30.0))  # outside the region: background
    mask = refine_uncertain(logit, annotation, config.refine_confidence)
    known = annotation.known()
    mask[known] = annotation.foreground()[known]
    mask = keep_painted_components(mask, annotation)
    mask[known] = annotation.foreground()[known]
    return mask, logit

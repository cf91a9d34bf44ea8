"""Appearance evidence learned from this case's painted pixels (ilastik-style pixel classifier).

Every voxel of the working crop gets a vector of multi-scale 3D filter responses (smoothed
intensity, gradient magnitude, Laplacian of Gaussian and the three Hessian eigenvalues at a
few scales). A random forest is trained on the painted voxels of this case only (structure
vs. painted background, balanced) and predicts every voxel. Unlike a single intensity
histogram it learns texture, edges and tubular/blob-ness, and it takes empty painted slices
as what they are: more background examples. Part of the background it learns from is drawn
from the painted tissue right next to the structure, where the boundary is decided, as an
ilastik user paints background along the border rather than anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier

from rada.annotation import SparseAnnotation, crop_box


@dataclass
class AppearanceConfig:
    """Features and forest of the per-case pixel classifier.

    Attributes:
        scales_mm: Gaussian scales of the features, in mm; 0 = the raw voxel.
        trees: trees of the random forest.
        max_depth: maximum depth of a tree.
        min_samples_leaf: minimum samples in a leaf. Chosen on the dev paintings of
            ``bench/peers.py`` over 4, 8, 16 and 32, each with forest seeds 0, 1 and 2, by the
            worst k -> k + 1 step over the seeds: -0.014, -0.011, -0.009 and -0.011. With leaves
            of 4 the worst step moved with the seed (-0.007 to -0.014); with 16 it stays within
            -0.008 to -0.009. Dev means moved by less than 0.003 either way.
        max_samples_per_class: painted voxels drawn per class to train.
        near_background_fraction: share of the background draw taken from painted background
            within ``near_background_px`` voxels of painted structure, where the boundary is
            decided (the rest is drawn from all painted background); 0: one uniform draw.
            Chosen on the dev split of ``bench/peers.py``: 0.3, 0.5, 0.7, 0.9 and 1.0 all beat
            the uniform draw on every mean, flat from 0.7 on.
        near_background_px: how close to painted structure "near" is, in voxels (2, 4, 6 and
            8 measured; 4 best).
        max_voxels: larger crops are classified on a coarser grid, then interpolated back.
        threads: the forest's ``n_jobs``.
        seed: the forest's and the sampling's random seed.
    """

    scales_mm: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # Gaussian scales; 0 = the raw voxel
    trees: int = 32
    max_depth: int = 14
    min_samples_leaf: int = 16  # coarser leaves: the result moves less with the forest's seed
    max_samples_per_class: int = 6000  # painted voxels drawn per class to train
    near_background_fraction: float = 0.7  # of the background draw: next to painted structure
    near_background_px: int = 4
    max_voxels: int = 250_000  # larger crops are classified on a coarser grid, then interpolated back
    threads: int = 2
    seed: int = 0


def normalise(image: np.ndarray) -> np.ndarray:
    """Robust z-score (median, spread between the 5th and 95th percentile): CT, MRI alike.

    Args:
        image: the image array.

    Returns:
        float32 ``(image - median) / (p95 - p5)``.
    """
    img = np.asarray(image, np.float32)
    lo, med, hi = np.percentile(img, [5, 50, 95])
    return (img - med) / max(float(hi - lo), 1e-6)


def features(image: np.ndarray, spacing_zyx: tuple[float, float, float],
             config: AppearanceConfig = AppearanceConfig()) -> np.ndarray:
    """Multi-scale filter responses, shape ``image.shape + (n_features,)``, float32.

    Args:
        image: the working crop, ``[z, y, x]``.
        spacing_zyx: voxel size in mm, array order; scales are physical so that anisotropic
            volumes are smoothed alike in every direction.
        config: the scales.

    Returns:
        The stacked feature volume.
    """
    img = normalise(image)
    sp = np.asarray(spacing_zyx, float)
    out = [img]
    for s in config.scales_mm:
        if s <= 0:
            continue
        sigma = np.maximum(s / sp, 0.5)  # at least half a voxel: a scale below the grid is noise
        out.append(ndimage.gaussian_filter(img, sigma))
        out.append(ndimage.gaussian_gradient_magnitude(img, sigma))
        h = {}
        for i in range(3):
            for j in range(i, 3):
                order = [0, 0, 0]
                order[i] += 1
                order[j] += 1
                h[i, j] = ndimage.gaussian_filter(img, sigma, order=order) * (s * s) / (sp[i] * sp[j])
        out.append(h[0, 0] + h[1, 1] + h[2, 2])  # scale-normalised LoG
        hess = np.stack([np.stack([h[min(i, j), max(i, j)] for j in range(3)], -1) for i in range(3)], -2)
        out.extend(np.moveaxis(np.linalg.eigvalsh(hess), -1, 0))  # blob / tube / sheet measures
    return np.stack(out, axis=-1).astype(np.float32)


def coarse_features(image: np.ndarray, spacing_zyx: tuple[float, float, float],
                    config: AppearanceConfig = AppearanceConfig()) -> np.ndarray:
    """:func:`features` on the working grid.

    The working grid is the crop itself, or a coarser grid over the same field of view when
    the crop has more than ``config.max_voxels`` voxels.

    Args:
        image: the crop ``[z, y, x]``.
        spacing_zyx: its voxel size in array order (mm).
        config: the feature settings.

    Returns:
        float32 features ``[z', y', x', n_features]`` on the working grid.
    """
    factor = max(1.0, (image.size / config.max_voxels) ** (1 / 3))
    if factor == 1.0:
        return features(image, spacing_zyx, config)
    coarse_shape = tuple(max(2, int(round(d / factor))) for d in image.shape)
    zoom = np.asarray(coarse_shape, float) / np.asarray(image.shape, float)
    small = ndimage.zoom(np.asarray(image, np.float32), zoom, order=1)
    return features(small, tuple(np.asarray(spacing_zyx) / zoom), config)


def sample_features(feats: np.ndarray, flat_index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Feature rows of the crop voxels ``flat_index`` (interpolated when ``feats`` is coarser).

    Args:
        feats: features from :func:`coarse_features`.
        flat_index: flat indices into the crop.
        shape: the crop's shape ``(z, y, x)``.

    Returns:
        ``[len(flat_index), n_features]``.
    """
    if feats.shape[:-1] == tuple(shape):
        return feats.reshape(-1, feats.shape[-1])[flat_index]
    # ndimage.zoom maps first and last voxels onto each other (grid_mode=False)
    ratio = (np.asarray(feats.shape[:-1]) - 1) / np.maximum(np.asarray(shape) - 1, 1)
    coords = np.stack(np.unravel_index(flat_index, shape)).astype(np.float32) * ratio[:, None]
    return np.stack([ndimage.map_coordinates(feats[..., c], coords, order=1, mode="nearest")
                     for c in range(feats.shape[-1])], axis=1)


def fit_forest(feats: np.ndarray, annotation: SparseAnnotation, config: AppearanceConfig = AppearanceConfig(),
               trees: int | None = None) -> RandomForestClassifier | None:
    """A forest trained on the painted voxels (balanced draw per class); None with one class only.

    Args:
        feats: :func:`coarse_features` of the crop the annotation lies on.
        annotation: the painted slices (0/1/255).
        config: forest settings.
        trees: override ``config.trees`` (a quick check needs fewer).

    Returns:
        The fitted classifier, or None when structure or background is unpainted.
    """
    known, fg = annotation.known(), annotation.foreground()
    pos, neg = np.flatnonzero(known & fg), np.flatnonzero(known & ~fg)
    if pos.size == 0 or neg.size == 0:
        return None
    rng = np.random.default_rng(config.seed)
    n = config.max_samples_per_class
    pos = rng.choice(pos, min(n, pos.size), replace=False)
    neg = _background_draw(annotation, n, config, rng)
    x = sample_features(feats, np.concatenate([pos, neg]), annotation.shape)
    y = np.concatenate([np.ones(pos.size, np.uint8), np.zeros(neg.size, np.uint8)])
    forest = RandomForestClassifier(n_estimators=trees or config.trees, max_depth=config.max_depth,
                                    min_samples_leaf=config.min_samples_leaf, class_weight="balanced",
                                    n_jobs=config.threads, random_state=config.seed)
    return forest.fit(x, y)


def _background_draw(annotation: SparseAnnotation, n: int, config: AppearanceConfig,
                     rng: np.random.Generator) -> np.ndarray:
    """Flat indices of up to ``n`` painted background voxels to train on.

    A uniform draw from all painted background is mostly tissue far from the structure that no
    voxel of the result is in doubt about; the hard examples, the tissue that touches the
    structure, are a thin ring on each painted plane. ``config.near_background_fraction`` of
    the draw comes from within ``config.near_background_px`` voxels of painted structure (as
    far as there is such background), the rest from all painted background.
    """
    structure = annotation.foreground()
    background = annotation.known() & ~structure
    if config.near_background_fraction <= 0 or config.near_background_px <= 0:
        idx = np.flatnonzero(background)
        return rng.choice(idx, min(n, idx.size), replace=False)
    r = config.near_background_px
    # the dilation on the painted structure's extent grown by r equals the one on the whole crop
    box = crop_box(annotation, r)
    near = np.zeros_like(background)
    near[box] = ndimage.binary_dilation(structure[box], iterations=r) & background[box]
    near_idx, far_idx = np.flatnonzero(near), np.flatnonzero(background & ~near)
    k_near = min(near_idx.size, int(config.near_background_fraction * n))
    k_far = min(far_idx.size, n - k_near)
    return np.concatenate([rng.choice(near_idx, k_near, replace=False), rng.choice(far_idx, k_far, replace=False)])


def appearance_probability(image: np.ndarray, annotation: SparseAnnotation, spacing_zyx: tuple[float, float, float],
                           config: AppearanceConfig = AppearanceConfig(),
                           feats: np.ndarray | None = None) -> np.ndarray:
    """Probability of structure per voxel from a forest trained on this case's painted voxels.

    Args:
        image: the working crop, ``[z, y, x]``.
        annotation: the painted slices on the same grid (0/1/255).
        spacing_zyx: voxel size in mm, array order.
        config: features and forest.
        feats: precomputed :func:`coarse_features` of ``image`` (optional).

    Returns:
        float32 probability volume; 0.5 everywhere when the painting has only one class.
    """
    feats = coarse_features(image, spacing_zyx, config) if feats is None else feats
    forest = fit_forest(feats, annotation, config)
    if forest is None:
        return np.full(image.shape, 0.5, np.float32)
    prob = forest.predict_proba(feats.reshape(-1, feats.shape[-1]))[:, 1].astype(np.float32)
    prob = prob.reshape(feats.shape[:-1])
    if prob.shape != image.shape:
        prob = np.clip(ndimage.zoom(prob, np.asarray(image.shape) / np.asarray(prob.shape), order=1), 0, 1)
    return prob

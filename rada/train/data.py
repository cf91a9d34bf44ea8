"""Training data: cases in memory, cached pseudo-labels, the two-stream sampler, augmentation.

Every random draw of iteration ``t`` comes from a generator seeded by ``(seed, rank, t)``:
the data a step sees depends on nothing but its index, so a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rada import propagation
from rada.annotation import SparseAnnotation
from rada.dataset import load_case
from rada.patches import centred_padding
from rada.safe_write import atomic_path
from rada.train.schedules import voxel_weights
from rada.train.validation import ValidationCase
from rada.views import VIEWS, View


@dataclass
class LabeledCase:
    """A labeled case: z-scored image, per-view pseudo-label and distance to its seed slice."""

    id: str                                # the case id in the dataset
    image: np.ndarray                      # float32 [z, y, x]
    labels: dict[str, np.ndarray]          # view -> uint8 0/1
    distance: dict[str, np.ndarray]        # view -> uint16 slices from the seed
    annotated: np.ndarray                  # bool: voxels on the annotated planes


@dataclass
class TrainingData:
    """What the trainer samples from: labeled cases and unlabeled images (z-scored).

    Attributes:
        labeled: the labeled cases (at least one).
        unlabeled: z-scored float32 images ``[z, y, x]`` without annotation.
        validation: :class:`rada.train.validation.ValidationCase` list (may be empty).

    Raises:
        ValueError: ``labeled`` is empty.
    """

    labeled: list[LabeledCase]
    unlabeled: list[np.ndarray]
    validation: list = field(default_factory=list)   # rada.train.validation.ValidationCase

    def __post_init__(self) -> None:
        if not self.labeled:
            raise ValueError("training needs at least one labeled case")


@dataclass
class Batch:
    """One iteration's input.

    Attributes:
        image: float32 ``[B_l + B_u, 1, Z, Y, X]``; the labeled patches come first.
        labels: view name -> int64 ``[B_l, Z, Y, X]`` pseudo-labels of the labeled patches.
        weights: view name -> float32 ``[B_l, Z, Y, X]`` voxel weights of those labels.
        n_labeled: ``B_l``, the number of labeled samples at the front of ``image``.
    """

    image: np.ndarray
    labels: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    n_labeled: int


def iteration_rng(seed: int, rank: int, t: int) -> np.random.Generator:
    """The random generator of one iteration on one rank (a resumed run draws the same).

    Args:
        seed: the run's seed.
        rank: this process's rank.
        t: the iteration.

    Returns:
        A generator seeded by ``(seed, rank, t)``.
    """
    return np.random.default_rng([seed, rank, t])


def crop_or_pad(arrays: Sequence[np.ndarray], patch: Sequence[int], rng: np.random.Generator,
                pad_values: Sequence[float] | None = None) -> list[np.ndarray]:
    """The same random ``patch`` window of every array.

    Args:
        arrays: arrays of one shape.
        patch: the window size.
        rng: the iteration's generator.
        pad_values: per array, the value to pad with where it is smaller than ``patch`` (0).

    Returns:
        The windows, in the order of ``arrays``.
    """
    shape = arrays[0].shape
    pad_values = pad_values or [0] * len(arrays)
    pads = centred_padding(shape, patch)
    if any(a or b for a, b in pads):
        arrays = [np.pad(a, pads, constant_values=v) for a, v in zip(arrays, pad_values)]
        shape = arrays[0].shape
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch)]
    window = tuple(slice(b, b + p) for b, p in zip(start, patch))
    return [a[window] for a in arrays]


def rot_flip(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random rot90 in the axial (y, x) plane and flip of a (y or x) axis for all arrays.

    A non-square axial patch is only rotated by 0 or 180 degrees so its shape stays.

    Args:
        arrays: ``[z, y, x]`` arrays of one shape.
        rng: the iteration's generator.

    Returns:
        The augmented arrays (contiguous copies).
    """
    _, ny, nx = arrays[0].shape
    k = int(rng.integers(0, 4)) if ny == nx else 2 * int(rng.integers(0, 2))
    axis = 1 + int(rng.integers(0, 2))
    return [np.ascontiguousarray(np.flip(np.rot90(a, k, axes=(1, 2)), axis=axis)) for a in arrays]


def sample_batch(data: TrainingData, t: int, decay: float, patch: Sequence[int], labeled_batch: int = 2,
                 unlabeled_batch: int = 2, seed: int = 0, rank: int = 0, augment: bool = True,
                 views: Sequence[View] = VIEWS) -> Batch:
    """Sample one iteration's batch from two streams, labeled and unlabeled patches.

    Labeled patches carry each view's pseudo-label and its voxel weights ``decay**d``
    (1 on annotated planes), cropped and augmented together with the image. Without
    unlabeled cases the unlabeled stream is empty.

    Args:
        data: the cases to sample from.
        t: iteration index; with ``seed`` and ``rank`` it seeds the generator, so a batch is
            reproducible (exact resume).
        decay: per-slice weight decay of a pseudo-label away from its seed plane.
        patch: patch size ``[z, y, x]``; smaller volumes are padded.
        labeled_batch: labeled patches per batch (cases drawn with replacement only when there
            are fewer cases than this).
        unlabeled_batch: unlabeled patches per batch.
        seed: run seed.
        rank: distributed rank (each rank draws different patches).
        augment: apply the same random axial rotation and flip to a patch and its labels.
        views: the views whose labels and weights are returned.

    Returns:
        The :class:`Batch`.
    """
    rng = iteration_rng(seed, rank, t)
    nl, nu = len(data.labeled), len(data.unlabeled)
    li = rng.choice(nl, labeled_batch, replace=nl < labeled_batch)
    ui = rng.choice(nu, unlabeled_batch, replace=nu < unlabeled_batch) if nu and unlabeled_batch else []
    images, labels, weights = [], {v.name: [] for v in views}, {v.name: [] for v in views}
    for i in li:
        c = data.labeled[int(i)]
        arrays = [c.image] + [c.labels[v.name] for v in views] + [c.distance[v.name] for v in views] + [c.annotated]
        pad = [float(c.image.min())] + [0] * len(views) + [np.iinfo(np.uint16).max] * len(views) + [False]
        arrays = crop_or_pad(arrays, patch, rng, pad)
        n = len(views)
        w = [voxel_weights(arrays[1 + n + j], arrays[-1], decay) for j in range(n)]
        group = [arrays[0]] + arrays[1:1 + n] + w
        if augment:
            group = rot_flip(group, rng)
        images.append(group[0])
        for j, v in enumerate(views):
            labels[v.name].append(group[1 + j])
            weights[v.name].append(group[1 + n + j])
    for i in ui:
        img = data.unlabeled[int(i)]
        (patch_img,) = crop_or_pad([img], patch, rng, [float(img.min())])
        if augment:
            (patch_img,) = rot_flip([patch_img], rng)
        images.append(patch_img)
    return Batch(np.stack(images)[:, None].astype(np.float32),
                 {k: np.stack(v).astype(np.int64) for k, v in labels.items()},
                 {k: np.stack(v).astype(np.float32) for k, v in weights.items()}, len(li))


# --- pseudo-labels -----------------------------------------------------------------------

def pseudo_labels_from_propagation(result: object, annotation: SparseAnnotation,
                                   views: Sequence[View] = VIEWS) -> tuple[dict, dict, np.ndarray]:
    """Per-view pseudo-labels and distances from a propagation, ready for training.

    Args:
        result: a :class:`rada.propagation.PropagationResult`.
        annotation: the sparse annotation; its annotated voxels (the ground truth) are pasted
            onto every view's pseudo-label.
        views: the views to take.

    Returns:
        ``(labels, distance, annotated)``: uint8 labels and uint16 distances by view (unknown
        distances become the largest, i.e. weight 0), and the bool mask of annotated voxels.
    """
    known = annotation.known()
    labels, distance = {}, {}
    for v in views:
        pv = result.views[v.name]  # type: ignore[attr-defined]
        labels[v.name] = annotation.paste(np.asarray(pv.label, np.uint8).copy())
        d = np.asarray(pv.distance, dtype=np.float64)
        # unknown / infinite / negative distances -> the largest: weight decay**65535 = 0
        d = np.where(np.isfinite(d) & (d >= 0), d, np.inf)
        distance[v.name] = np.minimum(d, np.iinfo(np.uint16).max).astype(np.uint16)
    return labels, distance, known


def _cache_key(image: np.ndarray, annotation: SparseAnnotation, config: object) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(image).tobytes())
    h.update(np.ascontiguousarray(annotation.array).tobytes())
    h.update(repr(config).encode())
    return h.hexdigest()[:16]


def cached_pseudo_labels(case_id: str, image, annotation: SparseAnnotation, cache_dir: str | os.PathLike,
                         propagate: Callable | None = None, config: object = None,
                         views: Sequence[View] = VIEWS) -> tuple[dict, dict, np.ndarray]:
    """Pseudo-labels of one labeled case, computed once by propagation and cached.

    Args:
        case_id: names the cache file, ``cache_dir/<id>.npz``.
        image: the case's image.
        annotation: its sparse annotation.
        cache_dir: where the cache file lives; the file is keyed by a hash of image,
            annotation and ``config``, so a change recomputes it.
        propagate: the propagation function (default :func:`rada.propagation.propagate`).
        config: its configuration (default :class:`rada.propagation.PropagationConfig`).
        views: the views to return.

    Returns:
        As :func:`pseudo_labels_from_propagation`.
    """
    cache = Path(cache_dir) / f"{case_id}.npz"
    key = _cache_key(image.array, annotation, config)
    if cache.exists():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return ({v.name: z[f"label_{v.name}"] for v in views},
                        {v.name: z[f"distance_{v.name}"] for v in views}, z["annotated"])
    if propagate is None:
        propagate = propagation.propagate
        config = config if config is not None else propagation.PropagationConfig()
    result = propagate(image, annotation, config) if config is not None else propagate(image, annotation)
    labels, distance, known = pseudo_labels_from_propagation(result, annotation, views)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, key=key, annotated=known, **{f"label_{k}": v for k, v in labels.items()},
                                **{f"distance_{k}": v for k, v in distance.items()})
    return labels, distance, known


def load_training_data(spec, cache_dir: str | os.PathLike, propagation_config: object = None,
                       transform: Callable[[np.ndarray], np.ndarray] | None = None,
                       progress: Callable[[str], None] | None = None) -> TrainingData:
    """Load a :class:`rada.dataset.DatasetSpec`'s training split.

    Images are loaded with the dataset's protocol and z-scored; pseudo-labels are propagated
    once per labeled case and cached in ``cache_dir``; cases without annotation become
    unlabeled images; the ``val`` split becomes the validation cases.

    Args:
        spec: the dataset spec.
        cache_dir: folder of the cached pseudo-labels.
        propagation_config: propagation settings for the pseudo-labels (None: the defaults).
        transform: applied to every array before use (e.g. a downscale, in tests).
        progress: called with each case id as it is loaded.

    Returns:
        The :class:`TrainingData`.

    Raises:
        ValueError: the split holds no annotated case.
    """
    tf = transform or (lambda a: a)
    labeled, unlabeled = [], []
    for c in spec.split("train"):
        if progress:
            progress(c.id)
        image, ann, _ = load_case(spec, c)  # the dataset's protocol (e.g. CT window/crop/spacing), z-scored
        if ann is None:
            unlabeled.append(tf(image.array))
            continue
        labels, dist, known = cached_pseudo_labels(c.id, image, ann, cache_dir, config=propagation_config)
        labeled.append(LabeledCase(c.id, tf(image.array), {k: tf(v) for k, v in labels.items()},
                                   {k: tf(v) for k, v in dist.items()}, tf(known)))
    return TrainingData(labeled, unlabeled, load_validation(spec, transform))


def load_validation(spec, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> list:
    """The ``val`` split's cases that carry a dense ``label``.

    Args:
        spec: the :class:`rada.dataset.DatasetSpec`.
        transform: applied to the image and the label before use.

    Returns:
        :class:`~rada.train.validation.ValidationCase` list (z-scored image, binary label);
        empty when no validation case has a label.
    """
    tf = transform or (lambda a: a)
    cases = []
    for c in spec.split("val"):
        if c.label is None:
            continue
        image, _, label = load_case(spec, c, with_label=True)
        cases.append(ValidationCase(c.id, tf(image.array), tf(label.array > 0)))
    return cases


__all__ = ["LabeledCase", "TrainingData", "Batch", "sample_batch", "crop_or_pad", "rot_flip", "iteration_rng",
           "cached_pseudo_labels", "pseudo_labels_from_propagation", "load_training_data"]


"""Dataset preprocessing protocols (METHOD.md section 1), applied before the z-score.

CT (KiTS19 / LiTS, as DeSCO): clip to an HU window, crop to the body and to the organ's
z-range +- a margin, resample to a target spacing. A ``dataset.json`` opts in with::

    "preprocessing": {"hu_window": [-160, 240], "crop_body": true, "organ_margin": 10,
                      "spacing": [1.5, 1.5, 3.0]}

(``spacing`` is x, y, z in mm like every spacing in RADA.) The organ's z-range comes from
the case's sparse annotation (its sagittal and coronal slices show the organ's z-extent) or
from its dense label (validation cases); unlabeled cases are cropped to the body only.
Crops keep the world position of every voxel (the origin moves with the crop); resampling
keeps origin and direction. A sparse annotation is resampled plane by plane: each
annotated slice lands on the nearest slice of the new grid, so it stays one slice per axis.
The checkpoint records the protocol; inference applies the window and spacing and brings
the prediction back to the input grid (:func:`to_model_grid`, :func:`to_input_grid`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from rada.annotation import IGNORE, SparseAnnotation
from rada.config import load_config
from rada.errors import InputError
from rada.volume import Volume

BODY_HU = -500.0  # air is about -1000 HU, soft tissue about 0


@dataclass(frozen=True)
class Protocol:
    """Preprocessing of a dataset; every field off by default (the MRI / LA2018 protocol).

    Attributes:
        hu_window: ``(low, high)`` intensity clip (CT, in HU), or None.
        crop_body: crop to the largest connected region above the body threshold (drops the
            table).
        organ_margin: crop z to the organ's extent plus this many slices, or None.
        spacing: target spacing ``(x, y, z)`` in mm, or None (no resampling).
    """

    hu_window: tuple[float, float] | None = None
    crop_body: bool = False
    organ_margin: int | None = None                  # slices kept beyond the organ's z-range
    spacing: tuple[float, float, float] | None = None  # target spacing x, y, z (mm)

    @property
    def active(self) -> bool:
        """True when any step is on (otherwise :func:`apply` returns the case as it is)."""
        return any(v not in (None, False) for v in asdict(self).values())

    def as_json(self) -> dict[str, Any]:
        """The protocol as JSON (tuples as lists).

        Returns:
            Field name -> value.
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> "Protocol":
        """From ``dataset.json``'s ``preprocessing`` (validated, one-line errors).

        Args:
            raw: the ``preprocessing`` object, or None (every step off).

        Returns:
            The :class:`Protocol`.

        Raises:
            InputError: an unknown field, a wrong type, ``hu_window`` not low < high, a spacing not
                positive, or a negative ``organ_margin``.
        """
        protocol = load_config(cls, dict(raw or {}), where="preprocessing.")
        if protocol.hu_window is not None and not protocol.hu_window[0] < protocol.hu_window[1]:
            raise InputError(f"preprocessing.hu_window must be [low, high] with low < high, got {protocol.hu_window}")
        if protocol.spacing is not None and min(protocol.spacing) <= 0:
            raise InputError(f"preprocessing.spacing must be positive, got {protocol.spacing}")
        if protocol.organ_margin is not None and protocol.organ_margin < 0:
            raise InputError("preprocessing.organ_margin must be at least 0")
        return protocol


def window(image: Volume, hu_window: Sequence[float] | None) -> Volume:
    """Intensities clipped to ``hu_window`` (float32).

    Args:
        image: the image.
        hu_window: ``(low, high)``, or None (the image is returned as it is).

    Returns:
        The clipped image, same geometry.
    """
    if hu_window is None:
        return image
    return image.with_array(np.clip(image.array.astype(np.float32), hu_window[0], hu_window[1]))


def body_box(image: Volume, threshold: float = BODY_HU) -> tuple[slice, slice, slice]:
    """Bounding box of the largest connected region above ``threshold`` (the body; drops the table).

    Args:
        image: a CT image (HU).
        threshold: intensity above which a voxel is body.

    Returns:
        Array slices ``[z, y, x]``; the whole volume when no voxel is above ``threshold``.
    """
    from scipy import ndimage

    mask = image.array > threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return tuple(slice(0, s) for s in image.shape)  # type: ignore[return-value]
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    box = ndimage.find_objects((labels == 1 + int(np.argmax(sizes))).astype(np.uint8))[0]
    return box  # type: ignore[return-value]


def organ_z_range(mask: np.ndarray, margin: int, depth: int) -> slice | None:
    """The z-range of ``mask``'s foreground +- ``margin`` slices.

    Args:
        mask: ``[z, y, x]`` foreground mask.
        margin: slices added on both sides.
        depth: number of slices (the range is clipped to ``[0, depth)``).

    Returns:
        The slice along z, or None if the mask is empty.
    """
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if z.size == 0:
        return None
    return slice(max(int(z[0]) - margin, 0), min(int(z[-1]) + 1 + margin, depth))


def _resample(volume: Volume, spacing_xyz: Sequence[float], interpolator: int,
              reference: sitk.Image | None = None, default: float | None = None) -> Volume:
    image = volume.to_sitk()
    if reference is None:
        size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing_xyz)]
        reference = sitk.Image(size, sitk.sitkUInt8)
        reference.SetSpacing([float(s) for s in spacing_xyz])
        reference.SetOrigin(image.GetOrigin())
        reference.SetDirection(image.GetDirection())
    if default is None:
        default = float(volume.array.min()) if volume.array.size else 0.0
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())
    return Volume.from_sitk(out)


def resample_image(image: Volume, spacing_xyz: Sequence[float]) -> Volume:
    """Linear resampling to ``spacing_xyz``; origin and direction kept, the extent covered.

    Args:
        image: the image (resampled as float32).
        spacing_xyz: target spacing ``(x, y, z)`` in mm.

    Returns:
        The resampled image; voxels outside take the image's minimum.
    """
    return _resample(image.with_array(image.array.astype(np.float32)), spacing_xyz, sitk.sitkLinear)


def resample_label(label: Volume, reference: Volume, default: float = 0) -> Volume:
    """Nearest-neighbour resampling of a label onto ``reference``'s grid.

    Args:
        label: the label volume.
        reference: the target grid.
        default: value outside ``label``'s extent.

    Returns:
        The label on ``reference``'s grid, in ``label``'s dtype.
    """
    return _resample(label, reference.spacing, sitk.sitkNearestNeighbor, reference.to_sitk(), default)


def resample_annotation(annotation: SparseAnnotation, reference: Volume) -> SparseAnnotation:
    """A sparse annotation on ``reference``'s grid.

    Each annotated slice goes to the nearest slice of the new grid (its mask resampled
    in-plane, nearest neighbour); everything else is unknown.

    Args:
        annotation: the sparse annotation.
        reference: the target grid (same direction; typically :func:`resample_image`'s output).

    Returns:
        The resampled :class:`SparseAnnotation`.
    """
    out = np.full(reference.shape, IGNORE, np.uint8)
    src = annotation.labels
    for axis in range(3):
        for index in annotation.annotated_slices(axis):
            # Broadcast the slice along its axis, resample, and keep the plane nearest to it.
            plane = np.take(annotation.array, index, axis=axis)
            extruded = np.repeat(np.expand_dims(plane, axis), src.shape[axis], axis=axis)
            moved = resample_label(src.with_array(extruded), reference, IGNORE).array
            xyz = [0.0, 0.0, 0.0]
            xyz[2 - axis] = float(index)
            world = src.to_sitk().TransformContinuousIndexToPhysicalPoint(xyz)
            new = reference.to_sitk().TransformPhysicalPointToContinuousIndex(world)[2 - axis]
            k = int(np.clip(round(new), 0, reference.shape[axis] - 1))
            sel = (slice(None),) * axis + (k,)
            out[sel] = moved[sel]
    return SparseAnnotation(reference.with_array(out))


@dataclass
class PreparedCase:
    """A case after the protocol, before the z-score.

    Attributes:
        image: the preprocessed image.
        annotation: the sparse annotation on the image's grid, if given.
        label: the dense label on the image's grid, if given.
    """

    image: Volume
    annotation: SparseAnnotation | None = None
    label: Volume | None = None


def apply(protocol: Protocol, image: Volume, annotation: SparseAnnotation | None = None,
          label: Volume | None = None) -> PreparedCase:
    """Window, crop (body, organ z-range) and resample a case; the annotation and label follow.

    The organ z-range comes from the annotation's foreground, else from the label. The crop
    never removes an annotated slice.

    Args:
        protocol: the dataset's preprocessing.
        image: the image.
        annotation: its sparse annotation, or None.
        label: its dense label, or None.

    Returns:
        The :class:`PreparedCase`; the inputs unchanged when the protocol is inactive.
    """
    if not protocol.active:
        return PreparedCase(image, annotation, label)
    image = window(image, protocol.hu_window)
    box = [slice(0, s) for s in image.shape]
    if protocol.crop_body:
        box = list(body_box(image, BODY_HU if protocol.hu_window is None else max(BODY_HU, protocol.hu_window[0])))
    if protocol.organ_margin is not None:
        organ = annotation.foreground() if annotation is not None else (label.array > 0 if label is not None else None)
        z = organ_z_range(organ, protocol.organ_margin, image.shape[0]) if organ is not None else None
        if z is not None:
            box[0] = slice(max(box[0].start, z.start), min(box[0].stop, z.stop))
    if annotation is not None:  # never crop an annotated slice away
        for axis in range(3):
            for index in annotation.annotated_slices(axis):
                box[axis] = slice(min(box[axis].start, index), max(box[axis].stop, index + 1))
    bounds = tuple(box)
    image = image.crop(bounds)
    annotation = SparseAnnotation(annotation.labels.crop(bounds)) if annotation is not None else None
    label = label.crop(bounds) if label is not None else None
    if protocol.spacing is not None:
        image = resample_image(image, protocol.spacing)
        annotation = resample_annotation(annotation, image) if annotation is not None else None
        label = resample_label(label, image) if label is not None else None
    return PreparedCase(image, annotation, label)


def to_model_grid(image: Volume, preprocessing: Mapping[str, Any]) -> Volume:
    """The input as the model was trained on it: HU window and target spacing of a checkpoint.

    Args:
        image: the input image.
        preprocessing: the checkpoint's ``preprocessing`` entry (its ``protocol`` is used).

    Returns:
        The windowed image, resampled when its spacing differs from the protocol's.

    Raises:
        InputError: the stored protocol is invalid.
    """
    protocol = Protocol.from_json(preprocessing.get("protocol"))
    image = window(image, protocol.hu_window)
    if protocol.spacing is not None and not np.allclose(image.spacing, protocol.spacing, rtol=1e-3):
        image = resample_image(image, protocol.spacing)
    return image


def to_input_grid(probability: Volume, input_image: Volume) -> Volume:
    """A probability map brought back (linear) onto the input's grid: geometry of the input.

    Args:
        probability: the map on the model's grid.
        input_image: the original input.

    Returns:
        The map on ``input_image``'s grid (``probability`` itself when the grids already match).
    """
    if probability.same_grid(input_image):
        return probability
    return _resample(probability, input_image.spacing, sitk.sitkLinear, input_image.to_sitk())


__all__ = ["Protocol", "PreparedCase", "apply", "window", "body_box", "organ_z_range", "resample_image",
           "resample_label", "resample_annotation", "to_model_grid", "to_input_grid"]

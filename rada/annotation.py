"""Sparse annotations: a few fully labeled slices of a volume, everything else unknown.

On disk and in memory a sparse annotation is a uint8 label volume on the image grid:
``1`` = structure, ``0`` = background, ``255`` = not annotated (nnU-Net v2's ignore label).
A slice is *annotated* when it holds no 255. Axes are named by their view
(:mod:`rada.views`): for an array in SimpleITK order ``[z, y, x]``, axial = fixed z,
coronal = fixed y, sagittal = fixed x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from rada.errors import InputError
from rada.views import AXIS_OF, VIEW_NAMES, VIEW_OF_AXIS
from rada.volume import Volume

BACKGROUND, FOREGROUND, IGNORE = 0, 1, 255


def axis_index(axis: int | str) -> int:
    """Array axis (0, 1, 2) of an axis given by number or by view name.

    Args:
        axis: 0, 1, 2, or a view name (:data:`rada.views.VIEW_NAMES`).

    Returns:
        The array axis in ``[z, y, x]`` order.

    Raises:
        InputError: an unknown name or number.
    """
    if isinstance(axis, str):
        if axis not in AXIS_OF:
            raise InputError(f"unknown axis {axis!r}; use one of {', '.join(VIEW_NAMES)}")
        return AXIS_OF[axis]
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    return int(axis)


def take_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` of ``array`` along array ``axis``.

    Args:
        array: a 3D array.
        axis: the array axis.
        index: the slice index on that axis.

    Returns:
        The slice, a view of ``array`` (not a copy).
    """
    return array[(slice(None),) * axis + (index,)]


@dataclass(frozen=True)
class SparseAnnotation:
    """Labels (0/1/255) on the image grid; the annotated slices are those without 255.

    Attributes:
        labels: uint8 volume: 0 background, 1 structure, 255 not annotated (other integer
            dtypes are converted).

    Raises:
        InputError: values other than 0, 1 and 255.
    """

    labels: Volume

    def __post_init__(self) -> None:
        values = np.unique(self.labels.array)
        bad = sorted(set(values.tolist()) - {BACKGROUND, FOREGROUND, IGNORE})
        if bad:
            shown = ", ".join(str(v) for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise InputError(f"sparse annotation has values {shown}; only 0 (background), 1 (structure) "
                             f"and 255 (not annotated) are allowed")
        if self.labels.array.dtype != np.uint8:
            object.__setattr__(self, "labels", self.labels.with_array(self.labels.array.astype(np.uint8)))

    @property
    def array(self) -> np.ndarray:
        """The label array ``[z, y, x]`` (uint8 0/1/255)."""
        return self.labels.array

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid's shape ``(z, y, x)``."""
        return self.labels.shape

    def annotated_slices(self, axis: int | str) -> list[int]:
        """The annotated slices along one axis.

        Args:
            axis: array axis or view name.

        Returns:
            Ascending indices of the slices that carry no 'not annotated' (255) voxel.
        """
        a = axis_index(axis)
        other = tuple(i for i in range(3) if i != a)
        return np.flatnonzero(~(self.array == IGNORE).any(axis=other)).tolist()

    def slices(self) -> dict[str, list[int]]:
        """Annotated slice indices for every axis.

        Returns:
            View name (``sagittal``, ``coronal``, ``axial``) -> ascending indices.
        """
        return {name: self.annotated_slices(name) for name in VIEW_NAMES}

    def slice_mask(self, axis: int | str, index: int) -> np.ndarray:
        """The structure mask of one annotated slice.

        Args:
            axis: array axis or view name.
            index: an annotated slice on that axis.

        Returns:
            bool 2D mask, True on structure.

        Raises:
            InputError: the slice is not annotated.
        """
        a = axis_index(axis)
        if index not in self.annotated_slices(a):
            raise InputError(f"slice {index} of the {VIEW_OF_AXIS[a]} axis is not annotated")
        return take_slice(self.array, a, index) == FOREGROUND

    def known(self) -> np.ndarray:
        """Bool mask of every annotated voxel.

        Returns:
            ``[z, y, x]``, True where the label is not 255.
        """
        return self.array != IGNORE

    def foreground(self) -> np.ndarray:
        """Bool mask of every voxel annotated as structure.

        Returns:
            ``[z, y, x]``, True where the label is 1.
        """
        return self.array == FOREGROUND

    def paste(self, label: np.ndarray) -> np.ndarray:
        """Put the annotated voxels' values (the ground truth) into a dense 0/1 label.

        Args:
            label: a 0/1 label on the annotation's grid; changed in place.

        Returns:
            ``label``, every annotated voxel now exactly as annotated.
        """
        known = self.known()
        label[known] = self.array[known]
        return label

    def validate(self, image: Volume | None = None,
                 required_axes: Sequence[str] = VIEW_NAMES) -> "SparseAnnotation":
        """Check the annotation is usable.

        Args:
            image: when given, the annotation must lie on its grid.
            required_axes: views that need at least one annotated slice, checked in this order.

        Returns:
            Self.

        Raises:
            InputError: one line naming the first problem (grid, missing view, no structure).
        """
        if image is not None:
            mismatch = image.grid_mismatch(self.labels)
            if mismatch:
                raise InputError(f"annotation geometry differs from the image: {mismatch}")
        for name in required_axes:
            if not self.annotated_slices(name):
                raise InputError(f"no annotated {name} slice: paint the structure on at least one {name} "
                                 f"slice (a slice counts as annotated when none of its voxels is 255)")
        if not self.foreground().any():
            raise InputError("the annotation marks no structure voxel (no 1 on any annotated slice)")
        return self

    def extent(self) -> tuple[slice, slice, slice]:
        """Bounding box of the structure implied by the annotated slices, per array axis.

        Along an axis, the structure cannot reach past the range covered on the annotated
        slices of the *other* two axes (they cut the whole structure). That bound is what
        the three painted slices already tell us, before any registration.

        Returns:
            Slices ``[z, y, x]`` of the structure voxels' bounding box.

        Raises:
            ValueError: no voxel is annotated as structure.
        """
        fg = self.foreground()
        bounds = []
        for a in range(3):
            coords = np.flatnonzero(fg.any(axis=tuple(i for i in range(3) if i != a)))
            bounds.append(slice(int(coords.min()), int(coords.max()) + 1))
        return tuple(bounds)  # type: ignore[return-value]

    @classmethod
    def from_dense(cls, label: Volume, slices: str | Mapping[str, int | Sequence[int]] = "auto",
                   foreground_value: int | None = None) -> "SparseAnnotation":
        """Simulate the annotation protocol from a dense label.

        Args:
            label: the dense label volume.
            slices: ``"auto"`` (per axis, the slice with the largest foreground area), ``"x,y,z"``
                indices as the CLI takes them, or a mapping ``{"axial": 40, "coronal": [50, 60]}``.
            foreground_value: the structure's label value (None = every non-zero value).

        Returns:
            The sparse annotation: the chosen slices exact, everything else 255.

        Raises:
            InputError: an empty label or a slice outside the volume.
        """
        fg = label.array > 0 if foreground_value is None else label.array == foreground_value
        if not fg.any():
            raise InputError("the dense label has no foreground voxel")
        chosen = pick_largest_slices(fg) if slices == "auto" else _parse_slices(slices, fg.shape)
        sparse = np.full(fg.shape, IGNORE, np.uint8)
        for name, indices in chosen.items():
            a = AXIS_OF[name]
            for idx in indices:
                index = (slice(None),) * a + (idx,)
                sparse[index] = fg[index].astype(np.uint8)
        return cls(label.with_array(sparse))


def crop_box(annotation: SparseAnnotation, margin: int, fraction: float = 0.0,
             quantum: int = 1) -> tuple[slice, slice, slice]:
    """The box RADA works in: the painted structure's extent, grown and clipped to the volume.

    The one crop of RADA: the pipeline crops with it (margin and fraction of
    ``SegmentConfig``), and propagation narrows that crop again with the same function
    (``PropagationConfig.margin`` and ``crop_quantum``).

    Args:
        annotation: the sparse annotation; its :meth:`SparseAnnotation.extent` is grown.
        margin: voxels added on every side.
        fraction: plus this fraction of the extent's largest side (long thin shapes bend out).
        quantum: bounds are rounded outward to multiples of this, so that a slightly larger
            extent (a refinement) keeps the same box.

    Returns:
        One ``slice`` per array axis ``[z, y, x]``.
    """
    extent = annotation.extent()
    grow = margin + int(round(fraction * max(e.stop - e.start for e in extent)))
    return tuple(slice(max(0, (e.start - grow) // quantum * quantum),  # type: ignore[return-value]
                       min(n, -(-(e.stop + grow) // quantum) * quantum))
                 for e, n in zip(extent, annotation.shape))


def from_painting(painted: Volume, min_area: int = 4) -> SparseAnnotation:
    """Sparse annotation from a painted mask, as a user paints in Slicer (no 255 anywhere).

    The user paints the structure on a few slices; which slices those were is not stored,
    so it is recovered: painted slices are planes of many painted voxels, while any other
    slice only crosses them in thin lines. Greedily, the slice (over all three axes) with
    the most unexplained painted voxels is taken as painted, its voxels become explained,
    and so on until every painted voxel is explained. On each painted slice, unpainted
    voxels are background; everything else is 'not annotated'.

    Args:
        painted: the painting (non-zero is painted).
        min_area: once a slice is chosen, stop when the best remaining slice explains fewer
            painted voxels than this (stray clicks off the painted planes).

    Returns:
        The :class:`SparseAnnotation` on the painting's grid.

    Raises:
        InputError: nothing is painted.
    """
    mask = np.asarray(painted.array) > 0
    if not mask.any():
        raise InputError("nothing is painted: paint the structure on one slice of each axis")
    left = mask.copy()
    chosen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    while left.any():
        best = max(((int(left.sum(axis=tuple(i for i in range(3) if i != a)).max()), a) for a in range(3)))
        area, a = best
        if area < min_area and any(chosen.values()):
            break  # stray voxels: a few clicks off the painted planes are not a slice of their own
        idx = int(np.argmax(left.sum(axis=tuple(i for i in range(3) if i != a))))
        chosen[a].append(idx)
        left[(slice(None),) * a + (idx,)] = False
    sparse = np.full(mask.shape, IGNORE, np.uint8)
    for a, indices in chosen.items():
        for idx in indices:
            index = (slice(None),) * a + (idx,)
            sparse[index] = mask[index]
    return SparseAnnotation(painted.with_array(sparse))


def pick_largest_slices(foreground: np.ndarray) -> dict[str, list[int]]:
    """Per axis, the slice with the largest foreground area (first one on ties).

    Args:
        foreground: bool ``[z, y, x]`` mask.

    Returns:
        View name -> a one-element list with the slice index.
    """
    out = {}
    for name in VIEW_NAMES:
        a = AXIS_OF[name]
        areas = foreground.sum(axis=tuple(i for i in range(3) if i != a))
        out[name] = [int(np.argmax(areas))]
    return out


def protocol_slices(foreground: np.ndarray, per_axis: int = 1) -> dict[str, list[int]]:
    """The interactive painting protocol of ``shared/data/README.md``: ``per_axis`` slices per axis.

    Args:
        foreground: dense bool mask of the structure, ``[z, y, x]``.
        per_axis: k, the number of painted slices per axis.

    Returns:
        Slice indices by axis name. k = 1 is the largest-area slice; k >= 2 are the centres of
        k equal parts of the structure's extent along that axis (such a slice may show no
        structure, e.g. between the two members of a pair: a valid painting).
    """
    if per_axis < 1:
        raise InputError(f"need at least one slice per axis, got {per_axis}")
    if per_axis == 1:
        return pick_largest_slices(foreground)
    out = {}
    for name in VIEW_NAMES:
        a = AXIS_OF[name]
        present = np.flatnonzero(foreground.any(axis=tuple(i for i in range(3) if i != a)))
        lo, hi = int(present.min()), int(present.max())
        centres = lo + (hi - lo + 1) * (np.arange(per_axis) + 0.5) / per_axis
        out[name] = sorted({min(hi, int(c)) for c in centres})
    return out


def _parse_slices(slices: str | Mapping[str, int | Sequence[int]], shape: Sequence[int]) -> dict[str, list[int]]:
    if isinstance(slices, str):
        # "x,y,z" as in the CLI: sagittal (x), coronal (y), axial (z) indices.
        parts = [p.strip() for p in slices.split(",")]
        if len(parts) != 3:
            raise InputError(f"--slices expects 'auto' or three indices x,y,z, got {slices!r}")
        try:
            x, y, z = (int(p) for p in parts)
        except ValueError:
            raise InputError(f"--slices expects integers x,y,z, got {slices!r}") from None
        slices = {"sagittal": x, "coronal": y, "axial": z}
    out: dict[str, list[int]] = {}
    for name, value in slices.items():
        a = axis_index(name)
        indices = [int(value)] if np.isscalar(value) else [int(v) for v in value]
        for idx in indices:
            if not 0 <= idx < shape[a]:
                raise InputError(f"{VIEW_OF_AXIS[a]} slice {idx} is outside the volume (0..{shape[a] - 1})")
        out[VIEW_OF_AXIS[a]] = indices
    return out


def check_annotation_values(labels: Volume, what: str = "annotation") -> Volume:
    """Refuse label values an annotation cannot hold; return the labels as uint8.

    Only 0, 1 and 255 are meaningful. Anything else (511, 255.4, -1, 2 ...) is refused
    rather than read as "painted": a wrong "not annotated" value would otherwise turn the
    whole volume into a painting.

    Args:
        labels: the annotation or painting as read from its file.
        what: how to name it in the message (usually its path).

    Returns:
        The labels as uint8 (bool is converted to 0/1).

    Raises:
        InputError: with the offending values.
    """
    array = np.asarray(labels.array)
    if array.dtype == bool:
        return labels.with_array(array.astype(np.uint8))
    values = np.unique(array)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise InputError(f"{what} has NaN or infinite values; expected 0/1 (a painting) or 0/1/255 "
                         f"(a sparse annotation, 255 = not annotated)")
    bad = [v for v in values.tolist() if v not in (BACKGROUND, FOREGROUND, IGNORE)]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise InputError(f"{what} has values {shown}; expected 0/1 (a painting) or 0/1/255 "
                         f"(a sparse annotation, 255 = not annotated)")
    return labels if array.dtype == np.uint8 else labels.with_array(array.astype(np.uint8))


def as_annotation(labels: Volume, what: str = "annotation") -> SparseAnnotation:
    """A label volume as a sparse annotation: 0/1/255 as is; a plain 0/1 mask is a painting.

    Args:
        labels: the annotation or painting.
        what: how to name it in messages (usually its path).

    Returns:
        The :class:`SparseAnnotation` (via :func:`from_painting` when no voxel is 255).

    Raises:
        InputError: values other than 0, 1 and 255 (:func:`check_annotation_values`), or an
            empty painting.
    """
    labels = check_annotation_values(labels, what)
    if (labels.array == IGNORE).any():
        return SparseAnnotation(labels)
    return from_painting(labels)

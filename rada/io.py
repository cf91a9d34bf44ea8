"""Reading and writing volumes and Slicer segmentations without losing geometry.

Volumes go through SimpleITK (NIfTI, NRRD, MHA/MHD, a DICOM series folder); Slicer
``.seg.nrrd`` files go through slicerio. Every writer is atomic: it writes a temporary file
beside the target and renames it, so a failure never leaves a partial output behind
(:mod:`rada.safe_write`); every reader checks its input first (:mod:`rada.inputs`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from rada.annotation import IGNORE, SparseAnnotation, as_annotation, check_annotation_values
from rada.errors import InputError
from rada.inputs import MIB, ReadLimits, check_data_complete, check_finite, place_on_grid, probe_image_file
from rada.safe_write import VOLUME_SUFFIXES, OutputSet
from rada.volume import Volume

SEG_NRRD_SUFFIX = ".seg.nrrd"


def _is_seg_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(SEG_NRRD_SUFFIX)


def _series_files(folder: Path) -> list[str]:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"no DICOM series in folder {folder}")
    if len(series) > 1:
        raise InputError(f"{len(series)} DICOM series in folder {folder}; point to a folder with one")
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def read_volume(path: str | os.PathLike, limits: ReadLimits | None = None) -> Volume:
    """Read a scalar 3D volume from a file (any SimpleITK format) or a DICOM series folder.

    The header is checked first (3D, scalar, under ``limits``), then the data are checked
    to be complete (see :mod:`rada.inputs`) and finite. A ``.seg.nrrd`` is read as a label
    volume (segment i -> label i + 1; 0/1 with one segment). A 4D file with one time point
    is read as 3D.

    Args:
        path: the file or DICOM folder.
        limits: size limits (default :class:`~rada.inputs.ReadLimits`, from the environment).

    Returns:
        The :class:`Volume` with the file's geometry.

    Raises:
        InputError: one line naming ``path``: missing, unreadable, truncated, too large,
            not scalar 3D, or holding NaN/Inf voxels.
    """
    p = Path(path)
    limits = limits or ReadLimits()
    if not p.exists():
        raise InputError(f"no such file or folder: {p}")
    if _is_seg_nrrd(p):
        return read_segmentation(p, limits).labelmap()
    try:
        if p.is_dir():
            files = _series_files(p)
            first = probe_image_file(Path(files[0]), limits)
            if first.nbytes * len(files) > limits.max_volume_bytes:
                raise InputError(f"DICOM series in {p} holds {len(files)} slices of {first.nbytes / MIB:.1f} MiB, "
                                 f"over the limit of {limits.max_volume_bytes / MIB:.0f} MiB "
                                 f"(set RADA_MAX_VOLUME_MB to raise it)")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        elif not p.is_file():
            raise InputError(f"cannot read {p}: not a regular file")
        else:
            info = probe_image_file(p, limits)
            check_data_complete(p, info)
            image = sitk.ReadImage(str(p))
            if image.GetDimension() == 4 and image.GetSize()[3] == 1:
                image = image[:, :, :, 0]
    except RuntimeError as exc:  # SimpleITK reports unreadable files as RuntimeError
        first_lines = str(exc).strip().splitlines()
        raise InputError(f"cannot read {p}: {first_lines[-1] if first_lines else 'unknown format'}") from None
    except OSError as exc:  # permission denied, I/O error while checking the data
        raise InputError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        volume = Volume.from_sitk(image)
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None
    return check_finite(volume, str(p))


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True,
                 outputs: OutputSet | None = None) -> Path:
    """Write a volume; the format follows the file name (``.nii.gz``, ``.nrrd``, ``.mha``, ``.seg.nrrd``).

    Args:
        volume: what to write (geometry kept exactly).
        path: the target, taken literally (``x.nii.nii.gz`` is written as that name).
        compress: compress the data where the format allows.
        outputs: stage the file in this :class:`~rada.safe_write.OutputSet` (renamed when
            the set commits); without it the file is written atomically on its own.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: unknown format, unwritable place, or a writer error, naming ``path``.
    """
    target = Path(path)
    if _is_seg_nrrd(target):
        return write_segmentation(Segmentation.from_labelmap(volume), target, outputs=outputs)
    with _staging(outputs) as out:
        tmp = out.stage(target, VOLUME_SUFFIXES)
        try:
            sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=compress)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1].replace(str(tmp), str(target))  # the user's name only
            raise InputError(f"cannot write {target}: {reason}") from None
        if tmp.stat().st_size == 0:
            raise InputError(f"cannot write {target}: the writer produced an empty file")
    return target


@contextlib.contextmanager
def _staging(outputs: OutputSet | None) -> Iterator[OutputSet]:
    """The caller's output set, or a fresh one committed at the end of the block."""
    if outputs is not None:
        yield outputs
    else:
        with OutputSet() as own:
            yield own


@dataclass
class Segment:
    """One segment of a Slicer segmentation: its name, colour and 0/1 mask on the grid.

    Attributes:
        name: the segment's name.
        mask: bool ``[z, y, x]`` on the segmentation's grid.
        color: RGB in [0, 1].
        segment_id: Slicer's segment id, if known.
    """

    name: str
    mask: np.ndarray  # bool, [z, y, x]
    color: tuple[float, float, float] = (0.9, 0.4, 0.3)
    segment_id: str | None = None


@dataclass
class Segmentation:
    """A Slicer segmentation: a grid (geometry of ``reference``) and named segments.

    Attributes:
        reference: a volume giving the grid (its voxels are not used).
        segments: the segments; they may overlap.
    """

    reference: Volume
    segments: list[Segment]

    def labelmap(self) -> Volume:
        """Segments as one label volume (segment i -> label i+1; later segments win overlaps).

        Returns:
            uint8 label volume (uint16 from 256 segments) on the reference grid.
        """
        labels = np.zeros(self.reference.shape, dtype=np.uint8 if len(self.segments) < 256 else np.uint16)
        for i, seg in enumerate(self.segments):
            labels[seg.mask] = i + 1
        return self.reference.with_array(labels)

    def segment(self, name: str) -> Segment:
        """A segment by name or id.

        Args:
            name: the segment's name or Slicer id.

        Returns:
            The first matching :class:`Segment`.

        Raises:
            InputError: no segment has that name or id (the message lists the names).
        """
        for seg in self.segments:
            if seg.name == name or seg.segment_id == name:
                return seg
        names = ", ".join(s.name for s in self.segments) or "none"
        raise InputError(f"no segment named {name!r} (segments: {names})")

    @classmethod
    def from_labelmap(cls, labels: Volume, names: Sequence[str] | None = None) -> "Segmentation":
        """One segment per non-zero label value.

        Args:
            labels: the label volume.
            names: segment names in increasing label order (default ``Segment_<value>``).

        Returns:
            The :class:`Segmentation` on ``labels``' grid; segment ids are ``Segment_<value>``.

        Raises:
            InputError: the number of names differs from the number of label values.
        """
        values = [int(v) for v in np.unique(labels.array) if v != 0]
        names = list(names) if names is not None else [f"Segment_{v}" for v in values]
        if len(names) != len(values):
            raise InputError(f"{len(values)} label values but {len(names)} segment names")
        segs = [Segment(n, labels.array == v, segment_id=f"Segment_{v}") for n, v in zip(names, values)]
        return cls(labels.with_array(np.zeros(labels.shape, np.uint8)), segs)


def _ijk_to_lps(volume: Volume) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = volume.direction_matrix * np.asarray(volume.spacing)[None, :]
    m[:3, 3] = volume.origin
    return m


def read_segmentation(path: str | os.PathLike, limits: ReadLimits | None = None) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (any layout, overlapping segments included) with slicerio.

    The header's declared size is checked against ``limits`` before the voxels are read.

    Args:
        path: the ``.seg.nrrd`` file.
        limits: size limits (default :class:`~rada.inputs.ReadLimits`).

    Returns:
        The :class:`Segmentation` on the file's grid (Slicer's possibly cropped extent).

    Raises:
        InputError: the file is missing, truncated, too large or malformed.
    """
    import slicerio

    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    check_data_complete(p, probe_image_file(p, limits or ReadLimits(), scalar_3d=False, what="segmentation "))
    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as exc:  # slicerio/pynrrd raise several types for malformed files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"cannot read segmentation {p}: {reason}") from None
    voxels = np.asarray(seg["voxels"])
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing[None, :]
    spatial = voxels.shape[-3:]
    reference = Volume(np.zeros(spatial[::-1], np.uint8), tuple(spacing), tuple(ijk_to_lps[:3, 3]),
                       tuple(direction.ravel()))
    segments = []
    for info in seg.get("segments", []):
        mask_ijk = slicerio.segment_mask(seg, info) if voxels.ndim == 4 else voxels == info["labelValue"]
        segments.append(
            Segment(
                name=str(info.get("name", info.get("id", "segment"))),
                mask=np.ascontiguousarray(np.asarray(mask_ijk, dtype=bool).transpose(2, 1, 0)),
                color=tuple(float(c) for c in info.get("color", (0.9, 0.4, 0.3))),
                segment_id=info.get("id"),
            )
        )
    return Segmentation(reference, segments)


def write_segmentation(segmentation: Segmentation, path: str | os.PathLike,
                       outputs: OutputSet | None = None) -> Path:
    """Write a Slicer ``.seg.nrrd`` atomically (segments may overlap; slicerio adds layers).

    Args:
        segmentation: what to write.
        path: the target file.
        outputs: stage the file in this output set instead of committing it at once.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: a segment's mask does not match the grid, or the file cannot be written.
    """
    import slicerio

    ref = segmentation.reference
    seg = slicerio.create_segmentation(ref.shape[::-1], _ijk_to_lps(ref))
    for s in segmentation.segments:
        if s.mask.shape != ref.shape:
            raise InputError(f"segment {s.name!r} has shape {s.mask.shape}, grid is {ref.shape}")
        info = {"name": s.name, "color": list(s.color)}
        if s.segment_id:
            info["id"] = s.segment_id
        slicerio.add_segment(seg, np.asarray(s.mask, bool).transpose(2, 1, 0), info)
    target = Path(path)
    with _staging(outputs) as out:
        slicerio.write_segmentation(str(out.stage(target, (SEG_NRRD_SUFFIX,))), seg)
    return target


@dataclass
class PaintedAnnotation:
    """An annotation as read from a file, with the painted segment's name and colour if it had one.

    Attributes:
        annotation: the sparse annotation.
        segment_name: the painted segment's name (``.seg.nrrd`` only).
        color: its RGB colour in [0, 1] (``.seg.nrrd`` only).
    """

    annotation: SparseAnnotation
    segment_name: str | None = None
    color: tuple[float, float, float] | None = None


def load_annotation(path: str | os.PathLike, segment: str | None = None,
                    reference: Volume | None = None, limits: ReadLimits | None = None) -> PaintedAnnotation:
    """Read a sparse annotation (0/1/255 volume) or a painting (0/1 volume or ``.seg.nrrd``).

    Args:
        path: the annotation file.
        segment: the painted segment's name or id in a ``.seg.nrrd`` with several.
        reference: the image grid. A painting saved on a sub-box of it (Slicer crops
            ``.seg.nrrd`` files to their extent) is placed onto it when spacing and
            direction agree and the box lies inside; otherwise the grid is left as read
            and the caller's geometry check reports the difference.
        limits: size limit for the file.

    Returns:
        The annotation and, for a ``.seg.nrrd``, the painted segment's name and colour.

    Raises:
        InputError: unreadable file, values other than 0/1/255, or no/ambiguous segment.
    """
    p = Path(path)
    name = color = None
    if _is_seg_nrrd(p):
        seg = read_segmentation(p, limits)
        if not seg.segments:
            raise InputError(f"{p} has no segments: paint the structure in a segment of Slicer's "
                             f"Segment Editor and save the segmentation again")
        if segment is None and len(seg.segments) != 1:
            names = ", ".join(repr(s.name) for s in seg.segments)
            raise InputError(f"{p} has {len(seg.segments)} segments ({names}); pick the painted one with "
                             f"--segment NAME")
        chosen = seg.segment(segment) if segment else seg.segments[0]
        labels, name, color = seg.reference.with_array(chosen.mask.astype(np.uint8)), chosen.name, chosen.color
    else:
        labels = read_volume(p, limits)
    labels = check_annotation_values(labels, str(p))
    if reference is not None and not labels.same_grid(reference) and not (labels.array == IGNORE).any():
        # Only paintings: in a sparse annotation, voxels outside the box would be unknown (255),
        # which would unmark the annotated slices instead of completing them.
        placed = place_on_grid(labels, reference, fill=0)
        labels = placed if placed is not None else labels
    return PaintedAnnotation(as_annotation(labels, str(p)), name, color)


def read_annotation(path: str | os.PathLike, segment: str | None = None,
                    reference: Volume | None = None) -> SparseAnnotation:
    """Read a sparse annotation or a painting (see :func:`load_annotation`).

    Args:
        path: the annotation file.
        segment: the painted segment's name or id in a ``.seg.nrrd`` with several.
        reference: the image grid (a cropped painting is placed onto it).

    Returns:
        The :class:`SparseAnnotation`.

    Raises:
        InputError: unreadable file, values other than 0/1/255, or no/ambiguous segment.
    """
    return load_annotation(path, segment, reference).annotation

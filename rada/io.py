"""Reading and writing volumes and Slicer segmentations without losing geometry.

Volumes go through SimpleITK (NIfTI, NRRD, MHA/MHD, a DICOM series folder); Slicer
``.seg.nrrd`` files go through slicerio. Every writer is atomic: it writes a temporary file
beside the target and renames it, so a failure never leaves a partial output behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from rada.annotation import SparseAnnotation, as_annotation
from rada.errors import InputError
from rada.volume import Volume

SEG_NRRD_SUFFIX = ".seg.nrrd"


def _is_seg_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(SEG_NRRD_SUFFIX)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a scalar 3D volume from a file (any SimpleITK format) or a DICOM series folder.

    A ``.seg.nrrd`` with one segment is read as a 0/1 label volume.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file or folder: {p}")
    if _is_seg_nrrd(p):
        return read_segmentation(p).labelmap()
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise InputError(f"no DICOM series in folder {p}")
            if len(series) > 1:
                raise InputError(f"{len(series)} DICOM series in folder {p}; point to a folder with one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(p), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(p))
    except RuntimeError as exc:  # SimpleITK reports unreadable files as RuntimeError
        first = str(exc).strip().splitlines()
        raise InputError(f"cannot read {p}: {first[-1] if first else 'unknown format'}") from None
    return Volume.from_sitk(image)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the full suffix (e.g. .nii.gz) so writers pick the right format from the name.
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give outputs the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a volume atomically; the format follows the file name (``.nii.gz``, ``.nrrd``, ``.mha``...)."""
    target = Path(path)
    if _is_seg_nrrd(target):
        return write_segmentation(Segmentation.from_labelmap(volume), target)
    with atomic_path(target) as tmp:
        try:
            sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=compress)
        except RuntimeError as exc:
            raise InputError(f"cannot write {target}: {str(exc).strip().splitlines()[-1]}") from None
    return target


@dataclass
class Segment:
    """One segment of a Slicer segmentation: its name, colour and 0/1 mask on the grid."""

    name: str
    mask: np.ndarray  # bool, [z, y, x]
    color: tuple[float, float, float] = (0.9, 0.4, 0.3)
    segment_id: str | None = None


@dataclass
class Segmentation:
    """A Slicer segmentation: a grid (geometry of ``reference``) and named segments."""

    reference: Volume
    segments: list[Segment]

    def labelmap(self) -> Volume:
        """Segments as one label volume (segment i -> label i+1; later segments win overlaps)."""
        labels = np.zeros(self.reference.shape, dtype=np.uint8 if len(self.segments) < 256 else np.uint16)
        for i, seg in enumerate(self.segments):
            labels[seg.mask] = i + 1
        return self.reference.with_array(labels)

    def segment(self, name: str) -> Segment:
        for seg in self.segments:
            if seg.name == name or seg.segment_id == name:
                return seg
        names = ", ".join(s.name for s in self.segments) or "none"
        raise InputError(f"no segment named {name!r} (segments: {names})")

    @classmethod
    def from_labelmap(cls, labels: Volume, names: Sequence[str] | None = None) -> "Segmentation":
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


def read_segmentation(path: str | os.PathLike) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (any layout, overlapping segments included) with slicerio."""
    import slicerio

    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as exc:  # slicerio/pynrrd raise several types for malformed files
        raise InputError(f"cannot read segmentation {p}: {exc}") from None
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


def write_segmentation(segmentation: Segmentation, path: str | os.PathLike) -> Path:
    """Write a Slicer ``.seg.nrrd`` atomically (segments may overlap; slicerio adds layers)."""
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
    with atomic_path(target) as tmp:
        slicerio.write_segmentation(str(tmp), seg)
    return target


def read_annotation(path: str | os.PathLike, segment: str | None = None) -> SparseAnnotation:
    """Read a sparse annotation (0/1/255 volume) or a painting (0/1 volume or ``.seg.nrrd``).

    For a ``.seg.nrrd`` with several segments, ``segment`` names the painted one.
    """
    p = Path(path)
    if _is_seg_nrrd(p):
        seg = read_segmentation(p)
        if segment is None and len(seg.segments) != 1:
            names = ", ".join(s.name for s in seg.segments) or "none"
            raise InputError(f"{p.name} has {len(seg.segments)} segments ({names}); name the painted one")
        chosen = seg.segment(segment) if segment else seg.segments[0]
        return as_annotation(seg.reference.with_array(chosen.mask.astype(np.uint8)))
    return as_annotation(read_volume(p))

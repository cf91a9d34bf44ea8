"""Checks every input volume passes before RADA uses it (the CLI and the service share them).

* **Size first.** The header is read alone (SimpleITK's ``ReadImageInformation``) and the
  decoded size is checked against :class:`ReadLimits` before any voxel is read, so a tiny
  file that declares 2000^3 voxels is refused at once instead of filling the memory.
* **Complete data.** ITK's NIfTI reader fills a truncated file with zeros without a word,
  so NIfTI data are checked here: a ``.nii`` must hold ``vox_offset`` + the voxel bytes,
  a ``.nii.gz`` must be a complete gzip stream (CRC and length checked) that holds them.
  NRRD and MetaImage readers already fail on short data, and their errors are passed on.
* **Finite values.** RADA refuses NaN/Inf voxels rather than guessing a replacement: a
  NaN in an image usually means a broken conversion or resampling upstream, and a
  replacement value would silently change intensity statistics the segmentation uses.
* **Exact label values** for annotations (see :func:`rada.annotation.check_annotation_values`).
"""

from __future__ import annotations

import bz2
import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rada.errors import InputError
from rada.volume import GEOMETRY_TOLERANCE, Volume

MIB = 2**20
#: Decoded size limit of one volume (the service's ``RADA_MAX_VOLUME_MB`` default too).
DEFAULT_MAX_VOLUME_BYTES = 4096 * MIB
_CHUNK = 4 * MIB


def _env_max_volume_bytes() -> int:
    text = os.environ.get("RADA_MAX_VOLUME_MB")
    if not text:
        return DEFAULT_MAX_VOLUME_BYTES
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"RADA_MAX_VOLUME_MB must be a number of MiB, got {text!r}") from None
    if value <= 0:
        raise InputError(f"RADA_MAX_VOLUME_MB must be positive, got {text!r}")
    return int(value * MIB)


@dataclass(frozen=True)
class ReadLimits:
    """Limits applied to a volume file before its voxels are read.

    Attributes:
        max_volume_bytes: largest decoded volume accepted (default: ``RADA_MAX_VOLUME_MB``
            MiB from the environment, else 4096 MiB, as in the service).
    """

    max_volume_bytes: int = field(default_factory=_env_max_volume_bytes)


@dataclass(frozen=True)
class ImageInfo:
    """What a volume file's header declares (read without its voxels).

    Attributes:
        size_xyz: voxels per axis, ITK order.
        components: values per voxel (1 for a scalar image).
        dtype: the voxel type.
    """

    size_xyz: tuple[int, ...]
    components: int
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded voxels."""
        return int(np.prod(self.size_xyz, dtype=np.float64)) * self.components * self.dtype.itemsize


def _dtype_of(pixel_id: int) -> np.dtype:
    # A 1-voxel image of the same pixel type tells numpy's dtype without a lookup table.
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype


def _sitk_reason(exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines or "Unable to determine ImageIO reader" in lines[-1]:
        return "not a volume format RADA reads (NIfTI, NRRD, MHA/MHD, DICOM folder, .seg.nrrd)"
    return lines[-1]


def probe_image_file(path: Path, limits: ReadLimits, scalar_3d: bool = True, what: str = "") -> ImageInfo:
    """Read only the header of a volume file; refuse it if it is too large or not scalar 3D.

    Args:
        path: an existing file in any format SimpleITK reads.
        limits: the size limit to apply.
        scalar_3d: also require one component per voxel and three axes (``False`` for a
            ``.seg.nrrd``, whose overlapping segments are stored as layers).
        what: the kind of file, for the message (e.g. ``"segmentation "``).

    Returns:
        The declared size (x, y, z[, ...]), components per voxel and voxel type.

    Raises:
        InputError: unreadable header, not 3D, not scalar, or over the size limit.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read {what}{path}: {_sitk_reason(exc)}") from None
    size = tuple(int(s) for s in reader.GetSize())
    info = ImageInfo(size, int(reader.GetNumberOfComponents()), _dtype_of(reader.GetPixelID()))
    _check_size(path, info, limits)
    if not scalar_3d:
        return info
    # 4D files with a single time point are 3D volumes in practice (SimpleITK keeps 4 axes).
    spatial = size[:3] if len(size) == 4 and size[3] == 1 else size
    if len(spatial) != 3:
        raise InputError(f"{path} is {len(size)}D ({'x'.join(map(str, size))}); expected a 3D volume")
    if info.components != 1:
        raise InputError(f"{path} has {info.components} components per voxel; expected a scalar volume")
    return info


def _check_size(path: Path, info: ImageInfo, limits: ReadLimits) -> None:
    size = info.size_xyz
    if info.nbytes > limits.max_volume_bytes:
        raise InputError(f"{path} declares {'x'.join(map(str, size))} voxels of {info.dtype} "
                         f"({info.nbytes / MIB:.0f} MiB), over the limit of {limits.max_volume_bytes / MIB:.0f} MiB "
                         f"(set RADA_MAX_VOLUME_MB to raise it)")


def _nifti_layout(header: bytes, path: Path) -> tuple[str, int]:
    """Byte order (``<`` or ``>``) and ``vox_offset`` of a NIfTI-1 or NIfTI-2 header."""
    if len(header) >= 4:
        for endian in "<>":
            sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
            if sizeof_hdr == 348 and len(header) >= 112:
                return endian, int(struct.unpack(endian + "f", header[108:112])[0])
            if sizeof_hdr == 540 and len(header) >= 176:
                return endian, int(struct.unpack(endian + "q", header[168:176])[0])
    raise InputError(f"{path} is truncated or not NIfTI: its header is incomplete")


class _NiftiScan:
    """Fed a NIfTI byte stream in chunks: counts its bytes and the non-finite float voxels.

    ITK's NIfTI reader turns NaN voxels into 0 without a word, so they can only be seen
    in the file's own bytes.
    """

    def __init__(self, path: Path, info: ImageInfo):
        self.path, self.info = path, info
        self.length, self.nonfinite = 0, 0
        self._pending, self._carry = b"", b""
        self._start: int | None = None
        self._dtype: np.dtype | None = None

    def _read_header(self) -> None:
        endian, self._start = _nifti_layout(self._pending, self.path)
        if np.issubdtype(self.info.dtype, np.floating):
            self._dtype = self.info.dtype.newbyteorder(endian)
        pending, self._pending = self._pending, b""
        self._count(pending, 0)

    def feed(self, chunk: bytes) -> None:
        """Account for the next ``chunk`` of the file's (decompressed) bytes."""
        if self._start is None:  # the header's layout is known after its first 540 bytes
            self._pending += chunk
            self.length = len(self._pending)
            if self.length >= 540:
                self._read_header()
            return
        begin = self.length
        self.length += len(chunk)
        self._count(chunk, begin)

    def _count(self, chunk: bytes, begin: int) -> None:
        if self._dtype is None or self._start is None:
            return
        lo = max(self._start - begin, 0)
        hi = min(self._start + self.info.nbytes - begin, len(chunk))
        if hi <= lo:
            return
        data = self._carry + chunk[lo:hi]
        usable = len(data) - len(data) % self._dtype.itemsize
        values = np.frombuffer(data[:usable], dtype=self._dtype)
        self.nonfinite += values.size - int(np.count_nonzero(np.isfinite(values)))
        self._carry = data[usable:]

    def finish(self) -> None:
        """Raise if the stream was short or held non-finite voxels."""
        if self._start is None:  # a file shorter than a NIfTI-2 header: a tiny volume or a truncated one
            self._read_header()
        needed = self._start + self.info.nbytes
        if self.length < needed:
            raise InputError(f"{self.path} is truncated: it holds {self.length} bytes of NIfTI data, its header "
                             f"declares {needed} (an incomplete copy or download?)")
        if self.nonfinite:
            raise InputError(_nonfinite_message(str(self.path), self.nonfinite, int(np.prod(self.info.size_xyz))))


def _nrrd_data_start(path: Path) -> tuple[int, dict[str, str]] | None:
    """Offset of an attached-data NRRD's data and its header fields (None if detached or not NRRD)."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    end = head.find(b"\n\n")
    crlf = head.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        end, skip = crlf, 4
    else:
        skip = 2
    if not head.startswith(b"NRRD") or end < 0:
        return None
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#") and ":=" not in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip().lower()
    if "data file" in fields or "datafile" in fields:
        return None
    return end + skip, fields


def _check_nrrd_stream(path: Path, info: ImageInfo) -> None:
    """A gzip/bzip2 NRRD's compressed data must be complete: every voxel, CRC and length trailer.

    Teem (ITK's NRRD reader) accepts a gzip stream that stops inside its trailer, so a copy
    cut a few bytes short would be read as if nothing were wrong.
    """
    layout = _nrrd_data_start(path)
    if layout is None:
        return
    start, fields = layout
    encoding = fields.get("encoding", "raw")
    if encoding not in ("gzip", "gz", "bzip2", "bz2"):
        return
    opener = gzip.GzipFile if encoding in ("gzip", "gz") else bz2.BZ2File
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(start)
            with opener(fileobj=raw, mode="rb") as fh:
                while chunk := fh.read(_CHUNK):
                    total += len(chunk)
    except EOFError:
        raise InputError(f"{path} is truncated: its {encoding} data end early (an incomplete copy or download?)") from None
    except (OSError, zlib.error) as exc:
        raise InputError(f"{path} is corrupt: its {encoding} data do not decompress ({exc})") from None
    if "byte skip" not in fields and "byteskip" not in fields and total < info.nbytes:
        raise InputError(f"{path} is truncated: it holds {total} bytes of voxels, its header declares {info.nbytes}")


def check_data_complete(path: Path, info: ImageInfo) -> None:
    """Refuse a file whose data are shorter than its header declares, badly compressed, or NaN in NIfTI.

    NIfTI (``.nii``, ``.nii.gz``): length, gzip CRC, and NaN/Inf voxels (ITK reads NaN as 0).
    NRRD (``.nrrd``, ``.seg.nrrd``) with gzip/bzip2 data: the whole stream with its trailer.
    Other formats pass: their readers already fail on short data, and they keep NaN for
    :func:`check_finite` to see.

    Args:
        path: the file.
        info: its header, from :func:`probe_image_file`.

    Raises:
        InputError: truncated, corrupt, or non-finite data, naming ``path``.
    """
    name = path.name.lower()
    if name.endswith(".nrrd"):
        _check_nrrd_stream(path, info)
        return
    if not name.endswith((".nii", ".nii.gz")):
        return
    scan = _NiftiScan(path, info)
    gz = name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            while chunk := fh.read(_CHUNK):
                scan.feed(chunk)
    except EOFError:
        raise InputError(f"{path} is truncated: its gzip stream ends early (an incomplete copy or download?)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{path} is corrupt: {exc}") from None
    scan.finish()


def _nonfinite_message(what: str, bad: int, total: int) -> str:
    kind = "every voxel is" if bad == total else f"{bad} of {total} voxels are"
    return (f"{what}: {kind} NaN or infinite; RADA needs finite values (replace them, e.g. with the "
            f"background value, before segmenting)")


def check_finite(volume: Volume, what: str) -> Volume:
    """Refuse a volume with NaN or infinite voxels (RADA never invents replacement values).

    Args:
        volume: the volume to check (integer volumes pass at no cost).
        what: how to name it in the message (usually its path).

    Returns:
        ``volume`` unchanged.

    Raises:
        InputError: with the count of non-finite voxels.
    """
    array = volume.array
    if not np.issubdtype(array.dtype, np.floating):
        return volume
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(_nonfinite_message(what, bad, array.size))
    return volume


def place_on_grid(part: Volume, grid: Volume, fill: int = 0) -> Volume | None:
    """A volume saved on a sub-box of ``grid`` (as Slicer saves a cropped ``.seg.nrrd``), padded onto it.

    Args:
        part: the cropped volume.
        grid: the full grid it belongs to (usually the image).
        fill: value of the voxels outside the box.

    Returns:
        ``part`` on ``grid`` (same shape and geometry as ``grid``), or ``None`` when it does
        not fit: other spacing or direction, an origin between voxels, or a box that reaches
        outside ``grid``.
    """
    tol = GEOMETRY_TOLERANCE
    if not (np.allclose(part.spacing, grid.spacing, atol=tol, rtol=0)
            and np.allclose(part.direction, grid.direction, atol=tol, rtol=0)):
        return None
    # Index of the part's first voxel in the grid: solve origin offset = D @ (index * spacing).
    offset = np.linalg.solve(grid.direction_matrix, np.asarray(part.origin) - np.asarray(grid.origin))
    index_xyz = offset / np.asarray(grid.spacing)
    start_xyz = np.round(index_xyz)
    if not np.allclose(index_xyz, start_xyz, atol=1e-3, rtol=0):
        return None
    start = start_xyz.astype(int)[::-1]   # [z, y, x]
    stop = start + np.asarray(part.shape)
    if (start < 0).any() or (stop > np.asarray(grid.shape)).any():
        return None
    array = np.full(grid.shape, fill, dtype=part.array.dtype)
    array[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = part.array
    return grid.with_array(array)

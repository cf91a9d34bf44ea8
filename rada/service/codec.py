"""NRRD bytes <-> :class:`~rada.volume.Volume`, in memory, with the full geometry.

The wire format between the Slicer module and the job server is a plain attached-data NRRD
(what Slicer, ITK and pynrrd all read and write), so a volume can also be sent with curl.

* Encoding writes ``space: left-posterior-superior``, ``space directions`` (direction
  columns times spacing) and ``space origin`` with shortest round-trip float text, plus two
  ``rada_spacing:=`` / ``rada_direction:=`` key-value lines. Other readers ignore those; our
  decoder uses them (when they agree with ``space directions``) so spacing and direction come
  back bit for bit instead of through a norm and a division.
* Decoding is strict and bounded, because the bytes come from the network: attached data
  only (a ``data file:`` field would make the server open a client-chosen path), 3D scalar
  data, known types and encodings (raw, gzip, bzip2, ascii), LPS/RAS/LAS spaces, a header
  under 64 KiB and a decoded size under a limit checked *before* decompressing. Every
  problem raises :class:`CodecError` with one line saying what is wrong.
"""

from __future__ import annotations

import bz2
import math
import re
import zlib

import numpy as np

from rada.errors import InputError
from rada.volume import Volume

MAX_HEADER_BYTES = 64 * 1024
MEDIA_TYPE = "application/octet-stream"


class CodecError(InputError):
    """The bytes are not a NRRD volume we accept; the message is one line."""


class VolumeTooLargeError(CodecError):
    """The decoded volume would exceed the size limit."""


_TYPES: dict[str, str] = {}
for _names, _dtype in (
    (("signed char", "int8", "int8_t"), "i1"),
    (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    (("int", "signed int", "int32", "int32_t"), "i4"),
    (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
      "int64_t"), "i8"),
    (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    (("float",), "f4"),
    (("double",), "f8"),
):
    for _n in _names:
        _TYPES[_n] = _dtype

_TYPE_NAMES = {"i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16", "i4": "int32", "u4": "uint32",
               "i8": "int64", "u8": "uint64", "f4": "float", "f8": "double"}

#: Sign flips that take a space's coordinates to LPS.
_SPACES: dict[str, tuple[float, float, float]] = {
    "left-posterior-superior": (1.0, 1.0, 1.0), "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0), "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0), "las": (1.0, -1.0, 1.0),
}

_IGNORED_FIELDS = {"kinds", "labels", "units", "space units", "measurement frame", "content", "thicknesses",
                   "centerings", "centers", "min", "max", "old min", "oldmin", "old max", "oldmax",
                   "axis mins", "axismins", "axis maxs", "axismaxs", "sample units", "sampleunits", "number"}


def _float_text(v: float) -> str:
    return repr(float(v))


def _vector_text(values) -> str:
    return "(" + ",".join(_float_text(v) for v in values) + ")"


def encode_nrrd(volume: Volume, compress: bool | int = True) -> bytes:
    """The volume as NRRD bytes (LPS, little-endian; gzip level 1 unless ``compress`` says).

    Args:
        volume: the volume; its spacing, origin and direction go into the header.
        compress: ``False``/``0`` raw, ``True`` gzip level 1, an int 1-9 that gzip level.

    Returns:
        The NRRD file's bytes (header and attached data).
    """
    array = np.asarray(volume.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    code = array.dtype.kind + str(array.dtype.itemsize)
    if code not in _TYPE_NAMES:
        raise CodecError(f"cannot encode voxels of type {array.dtype} as NRRD")
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    direction = volume.direction_matrix
    spacing = np.asarray(volume.spacing)
    columns = [direction[:, i] * spacing[i] for i in range(3)]
    level = 0 if compress is False else (1 if compress is True else int(compress))
    lines = [
        "NRRD0004",
        "# written by rada.service.codec",
        f"type: {_TYPE_NAMES[code]}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {array.shape[2]} {array.shape[1]} {array.shape[0]}",
        "space directions: " + " ".join(_vector_text(c) for c in columns),
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {'gzip' if level else 'raw'}",
        "space origin: " + _vector_text(volume.origin),
        "rada_spacing:=" + " ".join(_float_text(v) for v in volume.spacing),
        "rada_direction:=" + " ".join(_float_text(v) for v in volume.direction),
    ]
    if level:
        packer = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    return ("\n".join(lines) + "\n\n").encode("ascii") + data


def _split_header(data: bytes) -> tuple[list[str], bytes]:
    if not data.startswith(b"NRRD"):
        raise CodecError("not a NRRD file (it does not start with 'NRRD')")
    head = data[:MAX_HEADER_BYTES]
    candidates = [i for i in (head.find(b"\n\n"), head.find(b"\n\r\n")) if i >= 0]
    if not candidates:
        if len(data) <= MAX_HEADER_BYTES:
            raise CodecError("NRRD header has no blank line before the data (truncated or detached header)")
        raise CodecError(f"NRRD header is longer than {MAX_HEADER_BYTES // 1024} KiB")
    end = min(candidates)
    body_start = end + (2 if head[end:end + 2] == b"\n\n" else 3)
    try:
        text = head[:end].decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("NRRD header has non-ASCII bytes") from None
    return [line.rstrip("\r") for line in text.split("\n")], data[body_start:]


def _parse_vector(text: str, what: str) -> list[float]:
    t = text.strip()
    if not (t.startswith("(") and t.endswith(")")):
        raise CodecError(f"NRRD {what} {text.strip()[:60]!r} is not a vector like (1,0,0)")
    try:
        values = [float(v) for v in t[1:-1].split(",")]
    except ValueError:
        raise CodecError(f"NRRD {what} {t[:60]!r} holds a non-number") from None
    if len(values) != 3:
        raise CodecError(f"NRRD {what} {t[:60]!r} must have 3 components")
    if not all(math.isfinite(v) for v in values):
        raise CodecError(f"NRRD {what} {t[:60]!r} is not finite")
    return values


def _parse_numbers(text: str, n: int, what: str, cast=float) -> list:
    parts = text.split()
    if len(parts) != n:
        raise CodecError(f"NRRD {what} must have {n} values, got {text.strip()[:60]!r}")
    try:
        values = [cast(p) for p in parts]
    except ValueError:
        raise CodecError(f"NRRD {what} {text.strip()[:60]!r} holds a non-number") from None
    if cast is float and not all(math.isfinite(v) for v in values):
        raise CodecError(f"NRRD {what} {text.strip()[:60]!r} is not finite")
    return values


def parse_header(data: bytes) -> tuple[dict[str, str], dict[str, str], bytes]:
    """Split NRRD bytes into their header fields, key/value pairs and data.

    Args:
        data: the NRRD file's bytes.

    Returns:
        ``(fields, key_values, body)``; field names lower-cased.

    Raises:
        CodecError: not an NRRD header this codec reads (one line).
    """
    lines, body = _split_header(data)
    magic = lines[0].strip()
    if not (magic.startswith("NRRD000") and magic[7:].isdigit() and 1 <= int(magic[7:]) <= 5):
        raise CodecError(f"unsupported NRRD version line {magic[:20]!r}")
    fields: dict[str, str] = {}
    keys: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        if ":=" in line:
            k, v = line.split(":=", 1)
            keys[k.strip()] = v.strip()
            continue
        if ": " not in line:
            raise CodecError(f"malformed NRRD header line {line[:60]!r}")
        k, v = line.split(": ", 1)
        k = k.strip().lower()
        if k in fields:
            raise CodecError(f"NRRD header field {k!r} appears twice")
        fields[k] = v.strip()
    return fields, keys, body


def decode_nrrd(data: bytes, max_bytes: int | None = None) -> Volume:
    """A :class:`Volume` from NRRD bytes (see the module docstring for what is accepted).

    Args:
        data: the NRRD file's bytes.
        max_bytes: the largest decoded volume accepted (guards against compression bombs).

    Returns:
        The volume with its full geometry.

    Raises:
        CodecError: malformed or unsupported NRRD (one line).
        VolumeTooLargeError: the decoded volume would exceed ``max_bytes``.
    """
    fields, keys, body = parse_header(bytes(data))
    if "data file" in fields or "datafile" in fields:
        raise CodecError("detached NRRD data ('data file:') is not accepted: send the data attached")
    for k in ("line skip", "lineskip", "byte skip", "byteskip"):
        if k in fields and fields[k].strip() != "0":
            raise CodecError(f"NRRD '{k}' other than 0 is not supported")
    for k in ("type", "dimension", "sizes", "encoding"):
        if k not in fields:
            raise CodecError(f"NRRD header has no '{k}' field")
    unknown = set(fields) - _IGNORED_FIELDS - {
        "type", "dimension", "sizes", "encoding", "endian", "space", "space dimension", "space directions",
        "space origin", "spacings", "line skip", "lineskip", "byte skip", "byteskip", "block size", "blocksize"}
    if unknown:
        raise CodecError(f"unknown NRRD header field {sorted(unknown)[0]!r}")

    type_name = fields["type"].strip().lower()
    if type_name not in _TYPES:
        raise CodecError(f"unsupported NRRD voxel type {fields['type'][:40]!r}")
    if fields["dimension"].strip() != "3":
        raise CodecError(f"expected a 3D NRRD volume, got dimension {fields['dimension'][:20]!r}")
    sizes = _parse_numbers(fields["sizes"], 3, "sizes", int)
    if min(sizes) < 1:
        raise CodecError(f"NRRD sizes must be positive, got {sizes}")
    dtype = np.dtype(_TYPES[type_name])
    nbytes = int(np.prod(sizes, dtype=object)) * dtype.itemsize
    if max_bytes is not None and nbytes > max_bytes:
        raise VolumeTooLargeError(f"volume of {nbytes / 2**20:.0f} MiB ({sizes[0]}x{sizes[1]}x{sizes[2]} "
                                  f"{_TYPE_NAMES[dtype.str[1:]]}) exceeds the server limit of "
                                  f"{max_bytes / 2**20:.0f} MiB")
    if dtype.itemsize > 1:
        endian = fields.get("endian", "").strip().lower()
        if endian not in ("little", "big") and fields["encoding"].strip().lower() not in ("ascii", "text", "txt"):
            raise CodecError("NRRD header needs 'endian: little' or 'endian: big' for multi-byte voxels")
        dtype = dtype.newbyteorder("<" if endian != "big" else ">")

    raw = _decode_body(fields["encoding"].strip().lower(), body, nbytes, dtype)
    array = raw.reshape(sizes[2], sizes[1], sizes[0])
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    spacing, origin, direction = _geometry(fields, keys)
    try:
        return Volume(array, spacing, origin, direction)
    except InputError as exc:
        raise CodecError(f"NRRD geometry: {exc}") from None


def _decode_body(encoding: str, body: bytes, nbytes: int, dtype: np.dtype) -> np.ndarray:
    if encoding in ("ascii", "text", "txt"):
        try:
            values = np.array(body.decode("ascii").split(), dtype=np.float64)
        except (UnicodeDecodeError, ValueError):
            raise CodecError("NRRD ascii data holds something other than numbers") from None
        if values.size != nbytes // dtype.itemsize:
            raise CodecError(f"NRRD ascii data has {values.size} values, sizes say {nbytes // dtype.itemsize}")
        return values.astype(dtype.newbyteorder("="))
    if encoding == "raw":
        out = body
    elif encoding in ("gzip", "gz"):
        try:
            unpacker = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header
            out = unpacker.decompress(body, nbytes + 1)
        except zlib.error as exc:
            raise CodecError(f"NRRD gzip data is corrupt ({exc})") from None
    elif encoding in ("bzip2", "bz2"):
        try:
            out = bz2.BZ2Decompressor().decompress(body, nbytes + 1)
        except (OSError, ValueError) as exc:
            raise CodecError(f"NRRD bzip2 data is corrupt ({exc})") from None
    else:
        raise CodecError(f"unsupported NRRD encoding {encoding[:20]!r} (use raw, gzip, bzip2 or ascii)")
    if len(out) != nbytes:
        what = "more" if len(out) > nbytes else "less"
        raise CodecError(f"NRRD {encoding} data holds {what} than the {nbytes} bytes that sizes and type say "
                         f"({'truncated upload?' if what == 'less' else 'wrong sizes?'})")
    return np.frombuffer(out, dtype=dtype)


def _geometry(fields: dict[str, str], keys: dict[str, str]):
    space = fields.get("space", "").strip().lower()
    if space:
        if space not in _SPACES:
            raise CodecError(f"unsupported NRRD space {fields['space'][:40]!r} (use LPS, RAS or LAS)")
        flip = np.asarray(_SPACES[space])
    else:
        if fields.get("space dimension", "3").strip() != "3":
            raise CodecError("NRRD space dimension must be 3")
        flip = np.ones(3)
    if "space directions" in fields:
        parts = re.findall(r"\([^)]*\)|none", fields["space directions"], flags=re.IGNORECASE)
        if len(parts) != 3 or any(p.lower() == "none" for p in parts):
            raise CodecError("NRRD space directions must be three vectors (no 'none' axis in a 3D volume)")
        columns = np.array([_parse_vector(p, "space direction") for p in parts]).T * flip[:, None]
        spacing = np.linalg.norm(columns, axis=0)
        if np.any(spacing <= 0):
            raise CodecError("NRRD space directions include a zero vector")
        direction = columns / spacing[None, :]
    else:
        spacing = np.asarray(_parse_numbers(fields["spacings"], 3, "spacings") if "spacings" in fields
                             else [1.0, 1.0, 1.0])
        if np.any(spacing <= 0):
            raise CodecError(f"NRRD spacings must be positive, got {spacing.tolist()}")
        direction = np.diag(flip)
        columns = direction * spacing[None, :]
    origin = (np.asarray(_parse_vector(fields["space origin"], "space origin")) * flip
              if "space origin" in fields else np.zeros(3))
    # Our own files carry the exact spacing and direction; use them when they agree.
    try:
        exact_spacing = np.array([float(v) for v in keys["rada_spacing"].split()])
        exact_direction = np.array([float(v) for v in keys["rada_direction"].split()]).reshape(3, 3)
        if (exact_spacing.shape == (3,) and np.all(exact_spacing > 0)
                and np.allclose(exact_direction * exact_spacing[None, :], columns, rtol=1e-9, atol=1e-12)):
            spacing, direction = exact_spacing, exact_direction
    except (KeyError, ValueError):
        pass
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())

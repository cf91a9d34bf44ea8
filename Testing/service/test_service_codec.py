"""NRRD codec of the service: exact geometry round trips, interop with ITK, strict decoding."""

from __future__ import annotations

import bz2
import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from rada.service.codec import CodecError, VolumeTooLargeError, decode_nrrd, encode_nrrd
from rada.volume import Volume

from service_helpers import OBLIQUE


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64,
                                   np.int64])
@pytest.mark.parametrize("compress", [False, True, 6])
def test_round_trip_is_exact(dtype, compress, rng):
    array = (rng.normal(0, 100, (5, 7, 9))).astype(dtype)
    v = Volume(array, **OBLIQUE)
    w = decode_nrrd(encode_nrrd(v, compress))
    assert w.spacing == v.spacing and w.origin == v.origin and w.direction == v.direction
    assert w.array.dtype == np.dtype(dtype) and np.array_equal(w.array, v.array)


def test_bool_is_sent_as_uint8():
    v = Volume(np.eye(4, dtype=bool)[None].repeat(3, 0))
    w = decode_nrrd(encode_nrrd(v))
    assert w.array.dtype == np.uint8 and np.array_equal(w.array, v.array)


def test_itk_reads_ours_and_we_read_itks(tmp_path, rng):
    v = Volume(rng.integers(-1000, 3000, (6, 5, 4)).astype(np.int16), **OBLIQUE)
    ours = tmp_path / "ours.nrrd"
    ours.write_bytes(encode_nrrd(v))
    read = Volume.from_sitk(sitk.ReadImage(str(ours)))
    assert read.grid_mismatch(v, 1e-9) is None and np.array_equal(read.array, v.array)
    for compress in (False, True):
        theirs = tmp_path / f"itk{compress}.nrrd"
        sitk.WriteImage(v.to_sitk(), str(theirs), compress)
        back = decode_nrrd(theirs.read_bytes())
        assert back.grid_mismatch(v, 1e-9) is None and np.array_equal(back.array, v.array)


def _header(**fields: str) -> bytes:
    base = {"type": "short", "dimension": "3", "sizes": "2 3 4", "encoding": "raw", "endian": "little"}
    base.update(fields)
    return ("NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in base.items() if v is not None) + "\n").encode()


def test_ras_space_big_endian_bzip2_and_ascii_are_understood():
    values = np.arange(24, dtype=">i2").reshape(4, 3, 2)
    ras = _header(space="right-anterior-superior", **{"space directions": "(2,0,0) (0,3,0) (0,0,4)",
                                                      "space origin": "(10,20,30)", "endian": "big",
                                                      "encoding": "bzip2"}) + bz2.compress(values.tobytes())
    v = decode_nrrd(ras)
    assert v.spacing == (2.0, 3.0, 4.0) and v.origin == (-10.0, -20.0, 30.0)
    assert v.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert np.array_equal(v.array, values.astype(np.int16)) and v.array.dtype == np.int16
    text = _header(encoding="ascii", endian=None, spacings="0.5 0.5 2") + " ".join(map(str, range(24))).encode()
    a = decode_nrrd(text)
    assert a.spacing == (0.5, 0.5, 2.0) and np.array_equal(a.array.ravel(), np.arange(24))
    windows = _header(encoding="gzip").replace(b"\n", b"\r\n") + gzip.compress(values.astype("<i2").tobytes())
    assert np.array_equal(decode_nrrd(windows).array, values.astype(np.int16))


@pytest.mark.parametrize("data, reason", [
    (b"", "does not start with 'NRRD'"),
    (b"NRRD0004\ntype: short\n", "no blank line"),
    (b"NRRD0004\n" + b"# " + b"x" * 70000 + b"\n\n", "longer than 64 KiB"),
    (_header(type="complex"), "unsupported NRRD voxel type"),
    (_header(sizes="2 3"), "sizes must have 3 values"),
    (_header(sizes="2 0 4"), "sizes must be positive"),
    (_header(endian=None) + bytes(48), "needs 'endian"),
    (_header(encoding="hex") + bytes(48), "unsupported NRRD encoding"),
    (_header() + bytes(47), "holds less than the 48 bytes"),
    (_header() + bytes(49), "holds more than the 48 bytes"),
    (_header(**{"data file": "/etc/passwd"}), "detached NRRD data"),
    (_header(space="scanner-xyz") + bytes(48), "unsupported NRRD space"),
    (_header(**{"space directions": "(1,0,0) (0,1,0) none"}) + bytes(48), "no 'none' axis"),
    (_header(**{"space directions": "(1,0,0) (0,1,0) (0,0,0)"}) + bytes(48), "zero vector"),
    (_header(**{"space origin": "(1,nan,0)"}) + bytes(48), "not finite"),
    (_header(spacings="1 -1 1") + bytes(48), "spacings must be positive"),
    (_header(frobnicate="1") + bytes(48), "unknown NRRD header field"),
    (b"NRRD0004\ntype: short\ntype: short\n\n", "appears twice"),
    (b"NRRD0004\nnonsense line\n\n", "malformed NRRD header line"),
    (b"NRRD0004\n\xff\xfe\n\n", "non-ASCII"),
])
def test_malformed_input_raises_one_line(data, reason):
    with pytest.raises(CodecError) as err:
        decode_nrrd(data)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_size_limit_is_checked_before_decompressing():
    bomb = _header(sizes="1024 1024 1024", encoding="gzip", type="uchar") + gzip.compress(b"\0" * 1024)
    with pytest.raises(VolumeTooLargeError, match="1024 MiB .* exceeds the server limit of 64 MiB"):
        decode_nrrd(bomb, max_bytes=64 * 2**20)
    # Within the limit the declared size is still enforced on the decompressed stream.
    small_bomb = _header(sizes="8 8 8", encoding="gzip", type="uchar") + gzip.compress(b"\0" * 10**6)
    with pytest.raises(CodecError, match="holds more than the 512 bytes"):
        decode_nrrd(small_bomb, max_bytes=2**20)


def test_foreign_key_values_do_not_override_geometry():
    v = Volume(np.zeros((2, 2, 2), np.uint8), **OBLIQUE)
    data = encode_nrrd(v, False).replace(b"rada_spacing:=0.7", b"rada_spacing:=9.7")
    w = decode_nrrd(data)  # inconsistent key-values are ignored; space directions win
    assert w.grid_mismatch(v, 1e-9) is None

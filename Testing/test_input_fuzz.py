"""Property-based fuzzing (hypothesis) of the readers and of ``rada segment`` / ``prepare-sparse``
on mutated real files (a crop of an LA2018 MRI case and its label).

Properties: a reader returns a finite 3D volume or raises InputError (never anything else);
a truncated file is always refused; a command exits 0 or 2 without a traceback; on exit 2
the output folder holds nothing new, on exit 0 the output is complete and on the image grid;
no hidden temporary file is ever left behind.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from input_helpers import write_la_crop
from rada.cli import main
from rada.errors import InputError
from rada.inputs import MIB, ReadLimits
from rada.io import read_annotation, read_volume, write_volume
from rada.safe_write import TMP_PREFIX

#: A mutated header may declare any size; the fuzz keeps allocations small.
LIMIT_MB = 64
def fuzz(examples: int) -> settings:
    """Reproducible runs (derandomized, no example database), no deadline: commands take ~0.3 s."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
STATS: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module")
def base(la_dir, la_case_ids, tmp_path_factory) -> dict[str, bytes]:
    """The real files every mutation starts from, by name (the suffix picks the reader)."""
    folder = tmp_path_factory.mktemp("fuzz_base")
    case = write_la_crop(la_dir / la_case_ids[1], folder)
    write_volume(case.image_volume, folder / "image.nii", compress=False)
    write_volume(case.image_volume, folder / "image.nrrd")
    write_volume(case.image_volume, folder / "image.mha", compress=False)
    write_volume(case.image_volume, folder / "image_z.mha")
    write_volume(case.label_volume, folder / "label.seg.nrrd")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def small_limit():
    old = os.environ.get("RADA_MAX_VOLUME_MB")
    os.environ["RADA_MAX_VOLUME_MB"] = str(LIMIT_MB)
    yield
    if old is None:
        os.environ.pop("RADA_MAX_VOLUME_MB", None)
    else:
        os.environ["RADA_MAX_VOLUME_MB"] = old
    for name, counts in STATS.items():
        print(f"\nfuzz {name}: {counts}")


@st.composite
def mutations(draw, names: tuple[str, ...]):
    """(file name, how, mutate(bytes) -> bytes): truncation, byte flips, header edits, gzip-level edits."""
    name = draw(st.sampled_from(names))
    how = draw(st.sampled_from(["truncate", "flip", "header", "inner"]))
    if how == "truncate":
        if draw(st.booleans()):  # a few bytes off the end: a gzip trailer, the last voxels
            tail = draw(st.integers(1, 16))
            return name, how, lambda data: data[:-tail]
        fraction = draw(st.floats(0.0, 0.9999))
        return name, how, lambda data: data[: int(len(data) * fraction)]
    if how == "flip":
        flips = draw(st.lists(st.tuples(st.floats(0, 0.9999), st.integers(1, 255)), min_size=1, max_size=4))
        return name, how, lambda data: _flip(data, flips)
    if how == "header":  # the first 400 bytes: NIfTI/NRRD/MHA headers live there
        flips = draw(st.lists(st.tuples(st.integers(0, 399), st.integers(1, 255)), min_size=1, max_size=3))
        return name, how, lambda data: _flip(data, [(min(p, len(data) - 1) / len(data), v) for p, v in flips])
    # "inner": edit the decompressed bytes of a .gz and compress again (a valid gzip, wrong content)
    flips = draw(st.lists(st.tuples(st.floats(0, 0.9999), st.integers(1, 255)), min_size=1, max_size=3))
    cut = draw(st.one_of(st.none(), st.floats(0.0, 0.9999)))
    return name, how, lambda data: _inner(data, flips, cut)


def _flip(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for where, value in flips:
        out[int(where * len(out))] ^= value
    return bytes(out)


def _inner(data: bytes, flips, cut) -> bytes:
    if not data.startswith(b"\x1f\x8b"):
        return _flip(data, flips)
    raw = gzip.decompress(data)
    raw = _flip(raw, [(w * 352 / len(raw), v) for w, v in flips])  # the NIfTI header
    return gzip.compress(raw[: int(len(raw) * cut)] if cut is not None else raw)


def _count(test: str, outcome: str) -> None:
    STATS.setdefault(test, {})
    STATS[test][outcome] = STATS[test].get(outcome, 0) + 1


READABLE = ("image.nii.gz", "image.nii", "image.nrrd", "image.mha", "image_z.mha", "label.nii.gz", "sparse.nrrd",
            "label.seg.nrrd")


@fuzz(400)
@given(mutation=mutations(READABLE))
def test_readers_return_a_finite_volume_or_one_input_error(base, tmp_path_factory, mutation):
    name, how, mutate = mutation
    original = base[name]
    data = mutate(original)
    folder = tmp_path_factory.mktemp("read")
    path = folder / name
    path.write_bytes(data)
    try:
        volume = read_volume(path, ReadLimits(LIMIT_MB * MIB))
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc)
        _count("readers", f"{how}: refused")
    else:
        _count("readers", f"{how}: read")
        assert volume.array.ndim == 3
        if np.issubdtype(volume.array.dtype, np.floating):
            assert np.isfinite(volume.array).all()
        # A file cut short must never be read as if complete.
        assert not (how == "truncate" and len(data) < len(original)), f"truncated {name} was read"
    shutil.rmtree(folder)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _run_command(base: dict[str, bytes], folder: Path, mutated: str, data: bytes, argv: list[str],
                 out: Path, test: str, how: str) -> int:
    for name, content in base.items():
        (folder / name).write_bytes(data if name == mutated else content)
    before = _listing(folder)
    code = main([str(a) for a in argv])  # any exception other than exit codes fails the test
    assert code in (0, 2)
    assert not [p for p in _listing(folder) if Path(p).name.startswith(TMP_PREFIX)]
    if code == 2:
        assert _listing(folder) == before, "a failed run changed the folder"
    else:
        assert out.is_file()
    _count(test, f"{how}: exit {code}")
    return code


@fuzz(60)
@given(mutation=mutations(("image.nii.gz", "sparse.nrrd", "image.nrrd")))
def test_segment_exits_0_or_2_and_writes_all_or_nothing(base, tmp_path_factory, capsys, mutation):
    name, how, mutate = mutation
    folder = tmp_path_factory.mktemp("segment")
    image = folder / ("image.nrrd" if name == "image.nrrd" else "image.nii.gz")
    out = folder / "out" / "seg.nii.gz"
    code = _run_command(base, folder, name, mutate(base[name]),
                        ["segment", image, "--annotation", folder / "sparse.nrrd", "--out", out,
                         "--report", folder / "out" / "report.json"], out, "segment", how)
    err = capsys.readouterr().err
    if code == 0:
        label = read_volume(out)
        assert label.same_grid(read_volume(image)) and (folder / "out" / "report.json").is_file()
        assert read_annotation(folder / "sparse.nrrd").array.shape == label.shape
    else:
        errors = [line for line in err.splitlines() if line.startswith("rada segment: error: ")]
        assert len(errors) == 1, err
    shutil.rmtree(folder)


@fuzz(60)
@given(mutation=mutations(("label.nii.gz",)))
def test_prepare_sparse_exits_0_or_2_and_writes_all_or_nothing(base, tmp_path_factory, capsys, mutation):
    name, how, mutate = mutation
    folder = tmp_path_factory.mktemp("prepare")
    out = folder / "new" / "sparse.nrrd"
    code = _run_command(base, folder, name, mutate(base[name]),
                        ["prepare-sparse", folder / "label.nii.gz", "--out", out], out, "prepare-sparse", how)
    err = capsys.readouterr().err
    if code == 0:
        sparse = read_volume(out)
        assert sparse.same_grid(read_volume(folder / "label.nii.gz"))
        assert set(np.unique(sparse.array)) <= {0, 1, 255}
    else:
        assert len(err.strip().splitlines()) == 1 and err.startswith("rada prepare-sparse: error: "), err
    shutil.rmtree(folder)

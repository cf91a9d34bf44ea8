"""The input layer (rada/inputs.py, rada/safe_write.py) through the CLI: every bad input and
every unwritable output is one line on stderr and exit 2; nothing is half-written or left behind.

Real files (LA2018 MRI, the abdominal CT) are truncated, corrupted and filled with NaN here.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from repo_paths import REPO
from input_helpers import CaseFiles, write_la_crop
from rada.annotation import IGNORE, SparseAnnotation, as_annotation
from rada.cli import main
from rada.errors import InputError
from rada.io import (Segment, Segmentation, load_annotation, read_segmentation, read_volume, write_segmentation,
                     write_volume)
from rada.safe_write import TMP_PREFIX, OutputSet
from rada.volume import Volume


@pytest.fixture(scope="module")
def case(la_dir, la_case_ids, tmp_path_factory) -> CaseFiles:
    return write_la_crop(la_dir / la_case_ids[0], tmp_path_factory.mktemp("la_crop"))


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fails_cleanly(argv: list[str], capsys, message: str, folder: Path | None = None,
                   before_work: bool = False) -> str:
    """Exit 2, one error line (the last) holding ``message``, and (if given) ``folder`` unchanged.

    ``before_work``: the error is the only line, i.e. it came before any progress was shown.
    """
    before = sorted(os.listdir(folder)) if folder else None
    code, _, err = _run(argv, capsys)
    if before_work:
        assert len(err.strip().splitlines()) == 1, err
    errors = [line for line in err.splitlines() if line.startswith("rada ")]  # progress lines may precede
    assert code == 2, err
    assert len(errors) == 1 and message in errors[0] and err.rstrip().endswith(errors[0]), err
    if folder:
        assert sorted(os.listdir(folder)) == before
    return errors[0]


def _no_temp_files(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert not left, left


# --- 1. truncated and corrupt files ------------------------------------------------------------

def test_truncated_nifti_gz_is_refused_by_segment_and_prepare_sparse(case, tmp_path, capsys):
    (tmp_path / "image.nii.gz").write_bytes(case.image.read_bytes()[:1000])
    (tmp_path / "label.nii.gz").write_bytes(case.label.read_bytes()[:1000])
    _fails_cleanly(["segment", tmp_path / "image.nii.gz", "--annotation", case.sparse, "--out",
                    tmp_path / "seg.nii.gz"], capsys, "image.nii.gz is truncated", tmp_path)
    _fails_cleanly(["prepare-sparse", tmp_path / "label.nii.gz", "--out", tmp_path / "sparse.nrrd"], capsys,
                   "label.nii.gz is truncated", tmp_path)


def test_truncated_or_corrupt_files_of_every_format_are_refused(ct_dir, tmp_path):
    image = read_volume(ct_dir / "image.nii.gz")
    data = (ct_dir / "image.nii.gz").read_bytes()
    cases = {"cut.nii.gz": data[: len(data) // 2]}
    crc = bytearray(data)
    crc[-6] ^= 0xFF  # the gzip trailer's CRC: ITK reads such a file as if nothing were wrong
    cases["crc.nii.gz"] = bytes(crc)
    for suffix, compress in ((".nii", False), (".nrrd", True), (".nrrd", False), (".mha", True)):
        full = write_volume(image, tmp_path / f"full{suffix}", compress=compress).read_bytes()
        cases[f"cut{'z' if compress else ''}{suffix}"] = full[: len(full) - 1000]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError) as info:
            read_volume(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value), name
    assert "truncated" in _message(read_volume, tmp_path / "cut.nii.gz")
    assert "corrupt" in _message(read_volume, tmp_path / "crc.nii.gz")
    assert "truncated" in _message(read_volume, tmp_path / "cut.nii")


def _message(fn, *args) -> str:
    with pytest.raises(InputError) as info:
        fn(*args)
    return str(info.value)


# --- 7. size limits from the header, before any voxel is read ---------------------------------

def test_header_declaring_a_huge_volume_is_refused_at_once(case, tmp_path, capsys):
    header = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2000 2000 2000\nencoding: raw\n\n"
    (tmp_path / "huge.nrrd").write_bytes(header)
    start = time.perf_counter()
    line = _fails_cleanly(["segment", tmp_path / "huge.nrrd", "--annotation", case.sparse, "--out",
                           tmp_path / "o.nii.gz"], capsys, "over the limit of 4096 MiB", tmp_path)
    assert time.perf_counter() - start < 5  # refused from its 70-byte header, not after reading 8 GB
    assert "2000x2000x2000" in line


def test_size_limit_follows_rada_max_volume_mb(case, monkeypatch):
    assert read_volume(case.image).shape == case.image_volume.shape
    monkeypatch.setenv("RADA_MAX_VOLUME_MB", "0.05")  # the crop is ~125 KiB of uint8
    with pytest.raises(InputError, match="over the limit of 0 MiB"):
        read_volume(case.image)


# --- 5. NaN and Inf: refused with a count ------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_nan_and_inf_images_are_refused(case, tmp_path, capsys, suffix):
    values = case.image_volume.array.astype(np.float32)
    one_nan = values.copy()
    one_nan[3, 4, 5] = np.nan
    one_inf = values.copy()
    one_inf[0, 0, 0] = -np.inf
    for name, array, message in (("one_nan", one_nan, "1 of"), ("one_inf", one_inf, "1 of"),
                                 ("all_nan", np.full_like(values, np.nan), "every voxel is NaN")):
        path = write_volume(case.image_volume.with_array(array), tmp_path / f"{name}{suffix}")
        line = _fails_cleanly(["segment", path, "--annotation", case.sparse, "--out", tmp_path / "o.nii.gz"],
                              capsys, message)
        assert "NaN or infinite" in line
        assert not (tmp_path / "o.nii.gz").exists()


# --- 6. annotation values ----------------------------------------------------------------------

@pytest.mark.parametrize("value, dtype", [(511, np.int16), (255.4, np.float32), (-1, np.int16), (2, np.uint8)])
def test_annotation_values_other_than_0_1_255_are_refused(case, tmp_path, capsys, value, dtype):
    labels = case.sparse_annotation.array.astype(dtype)
    labels[case.sparse_annotation.array == IGNORE] = value  # a wrong "not annotated" value
    path = write_volume(case.sparse_annotation.labels.with_array(labels), tmp_path / "ann.nrrd")
    line = _fails_cleanly(["segment", case.image, "--annotation", path, "--out", tmp_path / "o.nii.gz"], capsys,
                          f"has values {value:g}")
    assert "0/1/255" in line and not (tmp_path / "o.nii.gz").exists()


def test_float_annotation_with_exact_values_and_an_empty_annotated_slice_is_accepted(case):
    labels = case.sparse_annotation.array.astype(np.float32)
    z = case.sparse_annotation.annotated_slices("axial")[0]
    extra = 0 if z > 0 else 1
    labels[extra] = 0  # one more axial slice annotated, with no structure on it: valid
    annotation = as_annotation(case.sparse_annotation.labels.with_array(labels))
    assert isinstance(annotation, SparseAnnotation) and annotation.array.dtype == np.uint8
    assert extra in annotation.annotated_slices("axial")


# --- 8. a .seg.nrrd saved cropped to its extent ----------------------------------------------

def _painting(case: CaseFiles) -> np.ndarray:
    return case.sparse_annotation.foreground()


def test_cropped_seg_nrrd_is_placed_on_the_image_grid(case, tmp_path, capsys):
    paint = _painting(case)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(paint))
    cropped_ref = case.image_volume.crop(box)  # what Slicer saves: the segment's extent only
    write_segmentation(Segmentation(cropped_ref, [Segment("left atrium", paint[box], (0.8, 0.2, 0.2))]),
                       tmp_path / "paint.seg.nrrd")
    write_segmentation(Segmentation(case.image_volume, [Segment("left atrium", paint, (0.8, 0.2, 0.2))]),
                       tmp_path / "full.seg.nrrd")
    assert read_segmentation(tmp_path / "paint.seg.nrrd").reference.shape != case.image_volume.shape
    placed = load_annotation(tmp_path / "paint.seg.nrrd", reference=case.image_volume)
    assert placed.annotation.labels.same_grid(case.image_volume)
    np.testing.assert_array_equal(placed.annotation.array,
                                  load_annotation(tmp_path / "full.seg.nrrd").annotation.array)
    code, out, err = _run(["segment", case.image, "--annotation", tmp_path / "paint.seg.nrrd", "--out",
                           tmp_path / "out.seg.nrrd"], capsys)
    assert code == 0, err
    result = read_segmentation(tmp_path / "out.seg.nrrd")
    assert result.reference.same_grid(case.image_volume)
    assert [s.name for s in result.segments] == ["left atrium"]  # 11: the painted segment's name
    assert result.segments[0].color == pytest.approx((0.8, 0.2, 0.2))


def test_seg_nrrd_on_another_spacing_or_outside_the_grid_is_still_refused(case, tmp_path, capsys):
    paint = _painting(case)
    other = Volume(case.image_volume.array, (1.0, 1.0, 1.0), case.image_volume.origin, case.image_volume.direction)
    write_segmentation(Segmentation(other, [Segment("s", paint)]), tmp_path / "spacing.seg.nrrd")
    _fails_cleanly(["segment", case.image, "--annotation", tmp_path / "spacing.seg.nrrd", "--out",
                    tmp_path / "o.nrrd"], capsys, "geometry differs from the image: spacing")
    img = case.image_volume
    origin = np.asarray(img.origin) + img.direction_matrix @ np.array([0.0, 0.0, 2 * img.spacing[2]])
    shifted = Volume(np.zeros(img.shape, np.uint8), img.spacing, tuple(origin), img.direction)  # 2 slices out
    write_segmentation(Segmentation(shifted, [Segment("s", paint)]), tmp_path / "outside.seg.nrrd")
    _fails_cleanly(["segment", case.image, "--annotation", tmp_path / "outside.seg.nrrd", "--out",
                    tmp_path / "o.nrrd"], capsys, "geometry differs from the image")
    assert not (tmp_path / "o.nrrd").exists()


# --- 11. segment choice messages ---------------------------------------------------------------

def test_seg_nrrd_with_no_or_several_segments_says_what_to_do(case, tmp_path, capsys):
    paint = _painting(case)
    write_segmentation(Segmentation(case.image_volume, []), tmp_path / "empty.seg.nrrd")
    _fails_cleanly(["segment", case.image, "--annotation", tmp_path / "empty.seg.nrrd", "--out",
                    tmp_path / "o.nrrd"], capsys, "has no segments: paint the structure")
    write_segmentation(Segmentation(case.image_volume, [Segment("atrium", paint), Segment("other", paint)]),
                       tmp_path / "two.seg.nrrd")
    line = _fails_cleanly(["segment", case.image, "--annotation", tmp_path / "two.seg.nrrd", "--out",
                           tmp_path / "o.nrrd"], capsys, "has 2 segments")
    assert "--segment NAME" in line and "'atrium'" in line
    code, _, err = _run(["segment", case.image, "--annotation", tmp_path / "two.seg.nrrd", "--segment", "atrium",
                         "--out", tmp_path / "o.nrrd"], capsys)
    assert code == 0, err


def test_embed_with_a_missing_input_names_it(tmp_path, capsys):
    _fails_cleanly(["embed", tmp_path / "missing.nii.gz", "--annotation", tmp_path / "a.nrrd", "--organ", "x",
                    "--out", tmp_path / "e.npz"], capsys, f"no such file or folder: {tmp_path / 'missing.nii.gz'}",
                   tmp_path)


def test_progress_off_a_terminal_has_no_carriage_returns(case, tmp_path, capsys):
    code, _, err = _run(["segment", case.image, "--annotation", case.sparse, "--out", tmp_path / "o.nii.gz"],
                        capsys)
    assert code == 0
    assert "\r" not in err and len(err.splitlines()) <= 8, err  # one line per stage
    assert "segment:" in err


def test_serve_without_the_server_extra_says_which_extra(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "fastapi" or m.startswith(("fastapi.", "rada.service.app"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ModuleNotFoundError
    _fails_cleanly(["serve", "--port", "0"], capsys, 'pip install "rada[server]"')


# --- 2, 3, 10. outputs: exact names, unwritable places, all or nothing ----------------------

@pytest.mark.parametrize("name", ["x.nii.nii.gz", "x.nii.gz.nii.gz", "a.b.c.nrrd", "X.NII.GZ"])
def test_multi_suffix_output_names_are_written_exactly(case, tmp_path, capsys, name):
    out = tmp_path / "out"
    code, _, err = _run(["segment", case.image, "--annotation", case.sparse, "--out", out / name], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == [name]  # that file, nothing hidden beside it
    label = read_volume(out / name)
    assert label.same_grid(case.image_volume) and label.array.sum() > 0


def test_relative_output_paths_in_new_folders(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["segment", case.image, "--annotation", case.sparse, "--out", "new/seg.nii.gz",
                         "--report", "r.json"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["new", "r.json"] and os.listdir(tmp_path / "new") == ["seg.nii.gz"]


@pytest.mark.parametrize("target, message", [
    ("/proc/rada-test/seg.nii.gz", "cannot write /proc/rada-test/seg.nii.gz"),
    ("FILE/seg.nii.gz", "is not a folder"),
    ("seg.mhd", ".mhd writes a second data file"),
    ("seg.txt", "unknown format"),
    ("DIR", "it is a folder"),
])
def test_unwritable_outputs_fail_before_any_work(case, tmp_path, capsys, target, message):
    (tmp_path / "FILE").write_text("a file, not a folder", encoding="utf-8")
    (tmp_path / "DIR.nii.gz").mkdir()
    target = target.replace("FILE", str(tmp_path / "FILE")).replace("DIR", str(tmp_path / "DIR.nii.gz")) \
        if not target.startswith("seg") else str(tmp_path / target)
    _fails_cleanly(["segment", case.image, "--annotation", case.sparse, "--out", target], capsys, message,
                   tmp_path, before_work=True)


def test_unwritable_report_or_csv_leaves_no_label_behind(case, tmp_path, capsys):
    (tmp_path / "FILE").write_text("x", encoding="utf-8")
    _fails_cleanly(["segment", case.image, "--annotation", case.sparse, "--out", tmp_path / "seg.nii.gz",
                    "--report", tmp_path / "FILE" / "r.json"], capsys, f"cannot write {tmp_path / 'FILE' / 'r.json'}",
                   tmp_path, before_work=True)
    _fails_cleanly(["evaluate", case.label, case.label, "--csv", "/proc/rada-test/t.csv"], capsys,
                   "cannot write /proc/rada-test/t.csv")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; the /proc and rename-failure tests cover it")
def test_read_only_folder_is_refused_with_the_users_path(case, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _fails_cleanly(["segment", case.image, "--annotation", case.sparse, "--out", ro / "seg.nii.gz"], capsys,
                       f"cannot write {ro / 'seg.nii.gz'}: Permission denied", tmp_path)
    finally:
        ro.chmod(0o755)


def test_read_only_folder_simulated_for_root_too(case, tmp_path, capsys, monkeypatch):
    """The preflight really tries to create a file, so a folder the OS refuses is caught before the work."""
    import rada.safe_write as safe_write

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def refusing_open(path, flags, mode=0o777, *args, **kwargs):
        if Path(path).parent == ro:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(safe_write.os, "open", refusing_open)
    _fails_cleanly(["segment", case.image, "--annotation", case.sparse, "--out", ro / "seg.nii.gz"], capsys,
                   f"cannot write {ro / 'seg.nii.gz'}: Permission denied", tmp_path, before_work=True)
    assert os.listdir(ro) == []


def test_any_os_error_is_exit_2_with_one_line(case, tmp_path, capsys, monkeypatch):
    import rada.evaluation

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "scratch"))

    monkeypatch.setattr(rada.evaluation, "evaluate_paths", disk_full)
    _fails_cleanly(["evaluate", case.label, case.label], capsys,
                   f"{tmp_path / 'scratch'}: No space left on device", tmp_path)


def test_failure_while_writing_leaves_nothing_and_names_the_users_path(case, tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("r.json"):
            raise PermissionError(13, "Permission denied", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    deep = tmp_path / "new" / "deeper"
    line = _fails_cleanly(["segment", case.image, "--annotation", case.sparse, "--out", deep / "seg.nii.gz",
                           "--report", deep / "r.json"], capsys, f"cannot write {deep / 'r.json'}: Permission denied",
                          tmp_path)
    assert TMP_PREFIX not in line
    assert not (tmp_path / "new").exists()  # 10: the folders made for the outputs are gone again


def test_failed_run_leaves_no_created_folder(case, tmp_path, capsys):
    bad = tmp_path / "bad.nrrd"
    write_volume(case.sparse_annotation.labels.with_array(np.full(case.image_volume.shape, 7, np.uint8)), bad)
    _fails_cleanly(["segment", case.image, "--annotation", bad, "--out", tmp_path / "a" / "b" / "seg.nii.gz"],
                   capsys, "has values 7", tmp_path)


def test_output_set_commits_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputSet() as out:
            out.stage(tmp_path / "one" / "a.json").write_text("{}", encoding="utf-8")
            out.stage(tmp_path / "b.json").write_text("{}", encoding="utf-8")
            raise RuntimeError("the second writer failed")
    assert os.listdir(tmp_path) == []
    with OutputSet() as out:
        out.stage(tmp_path / "one" / "a.json").write_text("{}", encoding="utf-8")
        out.stage(tmp_path / "b.json").write_text("[]", encoding="utf-8")
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == [] and (tmp_path / "one" / "a.json").is_file()
    _no_temp_files(tmp_path)


def test_outputs_keep_plain_file_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    with OutputSet() as out:
        out.stage(tmp_path / "r.json").write_text("{}", encoding="utf-8")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_gzip_nifti_check_reads_the_whole_stream(ct_dir, tmp_path):
    # A valid file written as two gzip members (concatenated streams) is complete and accepted.
    raw = gzip.decompress((ct_dir / "image.nii.gz").read_bytes())
    half = len(raw) // 2
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    assert read_volume(tmp_path / "two.nii.gz").same_grid(read_volume(ct_dir / "image.nii.gz"))
    assert sitk.ReadImage(str(tmp_path / "two.nii.gz")).GetSize() == (122, 101, 112)


def test_building_the_cli_does_not_load_torch():
    """A one-line error must come at once: torch (seconds, ~1 GB) loads only for the commands that use it."""
    import subprocess

    code = "import sys; from rada.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

"""The `rada` command: exit codes, one-line errors, outputs only on success."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rada.cli import main
from rada.io import read_segmentation, read_volume, write_volume
from rada.metrics import dice
from rada.phantom import make_phantom


def test_demo_runs_on_defaults_and_writes_its_files(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dice"] > 0.93 and summary["dice"] > summary["baseline_extrude_intersect_dice"]
    seg = read_segmentation(tmp_path / "demo" / "segmentation.seg.nrrd")
    truth = read_volume(tmp_path / "demo" / "truth.nrrd")
    assert seg.reference.same_grid(truth)
    assert dice(seg.segments[0].mask, truth.array) == pytest.approx(summary["dice"], abs=1e-4)


def test_prepare_sparse_segment_evaluate_chain(tmp_path, capsys):
    image, truth = make_phantom()
    write_volume(image, tmp_path / "image.nii.gz")
    write_volume(truth, tmp_path / "truth.nii.gz")
    assert main(["prepare-sparse", str(tmp_path / "truth.nii.gz"), "--out", str(tmp_path / "sparse.nrrd")]) == 0
    assert main(["segment", str(tmp_path / "image.nii.gz"), "--annotation", str(tmp_path / "sparse.nrrd"),
                 "--out", str(tmp_path / "seg.nii.gz"), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["preset"] == "fast" and report["guidance"]["enabled"] is False
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "seg.nii.gz"), str(tmp_path / "truth.nii.gz"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["cases"][0]["dice"] > 0.93


def test_evaluate_folders_gives_per_case_rows_and_mean(tmp_path, capsys):
    _, truth = make_phantom()
    (tmp_path / "pred").mkdir(), (tmp_path / "gt").mkdir()
    for i in range(3):
        shifted = truth.with_array(np.roll(truth.array, i, axis=2))
        write_volume(shifted, tmp_path / "pred" / f"case{i}.nii.gz")
        write_volume(truth, tmp_path / "gt" / f"case{i}.nii.gz")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--csv", str(tmp_path / "t.csv")]) == 0
    table = capsys.readouterr().out
    assert "case0" in table and "mean" in table and "std" in table
    assert "without a prediction" not in table
    assert len((tmp_path / "t.csv").read_text(encoding="utf-8").splitlines()) == 4
    # a reference with no prediction is named, never silently left out of the mean
    write_volume(truth, tmp_path / "gt" / "case9.nii.gz")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 0
    assert "1 reference(s) without a prediction, not in the mean: case9" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["references_without_prediction"] == ["case9"] and len(out["cases"]) == 3


@pytest.mark.parametrize("argv, message", [
    (["segment", "missing.nii.gz", "--annotation", "a.nrrd", "--out", "o.nii.gz"], "no such file"),
    (["prepare-sparse", "LABEL", "--out", "o.nrrd", "--slices", "1,2"], "three indices"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    _, truth = make_phantom()
    write_volume(truth, tmp_path / "LABEL.nii.gz")
    argv = [a.replace("LABEL", "LABEL.nii.gz") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LABEL.nii.gz"]


def test_segment_refuses_a_painting_missing_an_axis(tmp_path, capsys):
    image, truth = make_phantom()
    paint = np.zeros(truth.shape, np.uint8)
    z = int(np.argmax(truth.array.sum(axis=(1, 2))))
    paint[z] = truth.array[z]  # only one axial slice painted
    write_volume(image, tmp_path / "image.nrrd")
    write_volume(truth.with_array(paint), tmp_path / "paint.nrrd")
    assert main(["segment", str(tmp_path / "image.nrrd"), "--annotation", str(tmp_path / "paint.nrrd"),
                 "--out", str(tmp_path / "out.nrrd")]) == 2
    assert "no annotated sagittal slice" in capsys.readouterr().err
    assert not (tmp_path / "out.nrrd").exists()


def test_propagate_writes_pseudo_labels_and_the_fused_estimate(tmp_path, capsys):
    from rada.phantom import PhantomConfig
    from rada.propagation import load_propagation

    image, truth = make_phantom(PhantomConfig(shape_zyx=(14, 32, 32), spacing_xyz=(1.6, 1.6, 1.6)))
    write_volume(image, tmp_path / "image.nrrd")
    write_volume(truth, tmp_path / "truth.nrrd")
    assert main(["prepare-sparse", str(tmp_path / "truth.nrrd"), "--out", str(tmp_path / "sparse.nrrd")]) == 0
    capsys.readouterr()
    assert main(["propagate", str(tmp_path / "image.nrrd"), "--annotation", str(tmp_path / "sparse.nrrd"),
                 "--out", str(tmp_path / "prop.npz"), "--fused", str(tmp_path / "fused.nrrd"),
                 "--workers", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["registrations_run"] > 0
    result = load_propagation(tmp_path / "prop.npz")
    assert set(result.views) == {"axial", "coronal", "sagittal"}
    fused = read_volume(tmp_path / "fused.nrrd")
    assert fused.same_grid(image)
    # A coarse 14x32x32 phantom: the 5x5 opening costs detail, so only a loose bound here
    # (real-data accuracy is covered by Testing/propagation/test_propagation.py and bench/propagation.py).
    assert dice(fused.array, truth.array) > 0.6
    sparse = read_volume(tmp_path / "sparse.nrrd").array
    known = sparse != 255
    np.testing.assert_array_equal(fused.array[known], sparse[known])

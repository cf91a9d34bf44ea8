"""RADATrainer self-test bodies: plain functions taking a MRML scene (Slicer and pytest)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from RADASegmentationLib import selftest as seg_selftest

from rada.volume import Volume
from RADATrainerLib.logic import (
    checkpoints,
    export_scene_dataset,
    parse_loss,
    scene_cases,
    update_loss_plot,
    validate_dataset,
)


def _folder(folder) -> Path:
    return Path(folder or tempfile.mkdtemp(prefix="rada-trainer-test-"))


def check_scene_export_and_validation(scene, folder=None) -> None:
    """Painted scene cases -> dataset folder; a bad painting and a bad case are reported."""
    from rada.dataset import read_dataset
    from rada.io import write_volume

    folder = _folder(folder)
    image, truth = seg_selftest.synthetic_case()
    slices = seg_selftest.largest_slices(truth)
    seg_selftest.add_case(scene, image, seg_selftest.paint(truth, slices), "patient01")
    image2, truth2 = seg_selftest.synthetic_case(seed=1)
    no_sagittal = {k: v for k, v in seg_selftest.largest_slices(truth2).items() if k != "sagittal"}
    seg_selftest.add_case(scene, image2, seg_selftest.paint(truth2, no_sagittal), "patient02")
    cases = scene_cases(scene)
    assert [c.name for c in cases] == ["patient01", "patient02"], [c.name for c in cases]
    dataset, problems = export_scene_dataset(cases, folder / "scene_organ", "scene_organ", "organ")
    assert dataset is not None
    assert [(p.case, p.kind) for p in problems] == [("patient02", "annotation")], problems
    assert problems[0].message.startswith("no annotated sagittal slice")
    spec = read_dataset(dataset)
    assert [c.id for c in spec.cases] == ["patient01"]
    spec, problems = validate_dataset(dataset)
    assert problems == [], problems
    # Break it: an annotation on another grid, a missing file, an unlabeled case.
    shifted = Volume(np.full(image.shape, 255, np.uint8), image.spacing,
                     tuple(np.asarray(image.origin) + 5.0), image.direction)
    write_volume(shifted, dataset / "annotations" / "shifted.nrrd")
    write_volume(image, dataset / "images" / "p3.nrrd")
    import json
    raw = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    raw["cases"] += [{"id": "p3", "image": "images/p3.nrrd", "annotation": "annotations/shifted.nrrd"},
                     {"id": "p4", "image": "images/missing.nrrd", "annotation": None},
                     {"id": "p5", "image": "images/p3.nrrd", "annotation": None}]
    (dataset / "dataset.json").write_text(json.dumps(raw), encoding="utf-8")
    spec, problems = validate_dataset(dataset)
    kinds = {(p.case, p.kind, p.blocking) for p in problems}
    assert kinds == {("p3", "geometry", True), ("p4", "missing-file", True),
                     ("p5", "missing-annotation", False)}, kinds
    assert "origin" in next(p.message for p in problems if p.kind == "geometry")


def check_loss_plot(scene) -> None:
    """Loss points parsed from the server's progress messages land in a plot chart node."""
    assert parse_loss("iteration 20/300, loss 0.4312") == (20, 0.4312)
    assert parse_loss("propagating pseudo-labels") is None
    points = [(10, 0.9), (20, 0.6), (30, 0.45)]
    chart = update_loss_plot(scene, points)
    table = scene.GetFirstNodeByName("RADA training loss table").GetTable()
    assert table.GetNumberOfRows() == 3 and abs(table.GetValue(2, 1).ToDouble() - 0.45) < 1e-12
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    update_loss_plot(scene, points + [(40, 0.4)])  # updated in place, not duplicated
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert table.GetNumberOfRows() == 4


def check_checkpoint_list(scene, folder=None) -> None:
    folder = _folder(folder)
    (folder / "liver.pt").write_bytes(b"x" * 2048)
    (folder / ".run-liver").mkdir(exist_ok=True)
    (folder / "spleen.pt").write_bytes(b"y")
    rows = checkpoints(folder)
    assert [r["name"] for r in rows] == ["liver", "spleen"]
    assert rows[0]["resumable"] and not rows[1]["resumable"]


def check_loss_plot_view(scene) -> None:
    """The loss chart is shown through a plot view node (what qMRMLPlotWidget displays)."""
    from RADATrainerLib.plotview import loss_plot_view

    chart = update_loss_plot(scene, [(10, 0.9), (20, 0.5)])
    view = loss_plot_view(scene, chart)
    assert view.IsA("vtkMRMLPlotViewNode") and view.GetPlotChartNodeID() == chart.GetID()
    again = loss_plot_view(scene, update_loss_plot(scene, [(10, 0.9), (20, 0.5), (30, 0.4)]))
    assert again is view and scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode") == 1


OFFLINE_CHECKS = (check_scene_export_and_validation, check_loss_plot, check_loss_plot_view, check_checkpoint_list)

"""Training without a GUI: validate a dataset, start/stop/resume a ``train`` job, follow it.

A dataset is a folder with ``dataset.json`` (see ARCHITECTURE.md and :mod:`rada.dataset`),
picked on disk or exported from the cases painted in the current scene. Training runs on
the RADA server (job kind ``train``) and only ever names the dataset and the model; the
local server is started with ``--datasets-dir`` = the dataset's parent folder and
``--models-dir`` = the models folder that RADASegmentation lists, so a trained model is
offered to RADASegmentation by name as soon as the job is done.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from RADASegmentationLib import mrml
from RADASegmentationLib.backend import Backend, BackendConfig

from rada.annotation import from_painting
from rada.errors import InputError

LOSS_RE = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+).*?loss\s+([-+0-9.eE]+|nan|inf)")
VAL_RE = re.compile(r"iteration\s+(\d+)\s*/.*?val dice\s+([0-9.]+)(?:,\s*hd95\s+([0-9.]+))?")
BEST_RE = re.compile(r"best\s+([0-9.]+)\s*@\s*(\d+)")


@dataclass
class Problem:
    """One row of the validation table."""

    case: str
    kind: str           # missing-file | missing-annotation | geometry | annotation | dataset
    message: str
    blocking: bool = True

    def row(self) -> list[str]:
        return [self.case, self.kind, self.message, "error" if self.blocking else "warning"]


def _header(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    return size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def validate_dataset(folder: str | Path, read_annotations: bool = True) -> tuple[Any, list[Problem]]:
    """(spec or None, problems): missing files/annotations, geometry mismatches, bad values."""
    from rada.dataset import read_dataset

    try:
        spec = read_dataset(folder, check_files=False)
    except InputError as exc:
        if "no labeled training case" in str(exc):
            import json

            from rada.dataset import DATASET_FILE  # read it anyway to list the cases
            raw = json.loads((Path(folder) / DATASET_FILE).read_text(encoding="utf-8"))
            return None, [Problem("(dataset)", "missing-annotation", str(exc))] + [
                Problem(str(c.get("id")), "missing-annotation", "no sparse annotation", False)
                for c in raw.get("cases", []) if not c.get("annotation")]
        return None, [Problem("(dataset)", "dataset", str(exc))]
    problems: list[Problem] = []
    for case in spec.cases:
        image_path = spec.path(case.image)
        if not image_path.exists():
            problems.append(Problem(case.id, "missing-file", f"image not found: {image_path}"))
            continue
        if case.annotation is None:
            if case.split == "train":
                problems.append(Problem(case.id, "missing-annotation",
                                        "no sparse annotation: used as an unlabeled case", False))
            continue
        ann_path = spec.path(case.annotation)
        if not ann_path.exists():
            problems.append(Problem(case.id, "missing-file", f"annotation not found: {ann_path}"))
            continue
        try:
            image_header, ann_header = _header(image_path), _header(ann_path)
        except RuntimeError as exc:
            problems.append(Problem(case.id, "missing-file", f"unreadable: {str(exc).splitlines()[0]}"))
            continue
        mismatch = _header_mismatch(image_header, ann_header)
        if mismatch:
            problems.append(Problem(case.id, "geometry", f"annotation grid differs from the image: {mismatch}"))
            continue
        if read_annotations:
            from rada.dataset import load_annotation

            try:
                annotation = load_annotation(spec, case)
                annotation.validate()
            except InputError as exc:
                problems.append(Problem(case.id, "annotation", str(exc)))
    return spec, problems


def _header_mismatch(a, b, tol: float = 1e-4) -> str | None:
    names = ("size", "spacing", "origin", "direction")
    for name, x, y in zip(names, a, b):
        if not np.allclose(np.asarray(x, float), np.asarray(y, float), atol=tol, rtol=0):
            return f"{name} {tuple(round(v, 4) for v in x)} vs {tuple(round(v, 4) for v in y)}"
    return None


# --- cases from the current scene ---------------------------------------------------------

@dataclass
class SceneCase:
    volume_node: Any
    segmentation_node: Any
    segment_id: str

    @property
    def name(self) -> str:
        return self.volume_node.GetName()


def scene_cases(scene) -> list[SceneCase]:
    """Each segmentation whose reference volume is in the scene, with its first segment."""
    cases = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        seg = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        volume = seg.GetNodeReference("referenceImageGeometryRef")
        if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
            continue
        if seg.GetSegmentation().GetNumberOfSegments() == 0:
            continue
        cases.append(SceneCase(volume, seg, seg.GetSegmentation().GetNthSegmentID(0)))
    return cases


def export_scene_dataset(cases: list[SceneCase], folder: str | Path, name: str, organ: str,
                         modality: str = "CT") -> tuple[Path | None, list[Problem]]:
    """Write the scene's painted cases as a dataset folder; cases with a bad painting are
    listed as problems and left out (the dataset is written only if one case is usable)."""
    from rada.dataset import CaseEntry, DatasetSpec, write_dataset
    from rada.io import write_volume

    folder = Path(folder)
    problems: list[Problem] = []
    entries = []
    used: set[str] = set()
    for case in cases:
        case_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", case.name).strip("._") or "case"
        while case_id in used:
            case_id += "_"
        try:
            image = mrml.volume_from_node(case.volume_node)
            mask = mrml.segment_mask(case.segmentation_node, case.segment_id, case.volume_node)
            annotation = from_painting(mask).validate(image)
        except InputError as exc:
            problems.append(Problem(case_id, "annotation", str(exc)))
            continue
        used.add(case_id)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        write_volume(image, folder / "images" / f"{case_id}.nrrd")
        write_volume(annotation.labels, folder / "annotations" / f"{case_id}.nrrd")
        entries.append(CaseEntry(case_id, f"images/{case_id}.nrrd", f"annotations/{case_id}.nrrd"))
    if not entries:
        problems.append(Problem("(scene)", "missing-annotation",
                                "no case in the scene has a usable painting (one slice per axis)"))
        return None, problems
    write_dataset(DatasetSpec(name=name, organ=organ, modality=modality, cases=entries, root=folder), folder)
    return folder, problems


# --- training jobs ------------------------------------------------------------------------

@dataclass
class TrainTask:
    job_id: str
    dataset: str
    model_name: str
    options: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    state: str = "queued"
    stage: str = "queued"
    fraction: float = 0.0
    message: str = ""
    error: str | None = None
    report: dict[str, Any] | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    #: (iteration, validation Dice, HD95 in voxels or None), from the progress messages
    validation: list[tuple[int, float, float | None]] = field(default_factory=list)
    best: tuple[float, int] | None = None     # (best validation Dice, its iteration)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


def parse_validation(message: str) -> tuple[int, float, float | None] | None:
    """``(iteration, dice, hd95)`` from a train job's progress line with a validation, else None."""
    match = VAL_RE.search(message or "")
    if not match:
        return None
    return int(match.group(1)), float(match.group(2)), float(match.group(3)) if match.group(3) else None


def parse_best(message: str) -> tuple[float, int] | None:
    """``(best dice, iteration)`` from a train job's progress line, else None."""
    match = BEST_RE.search(message or "")
    return (float(match.group(1)), int(match.group(2))) if match else None


def parse_loss(message: str) -> tuple[int, float] | None:
    match = LOSS_RE.search(message or "")
    if not match:
        return None
    return int(match.group(1)), float(match.group(3))


class TrainerLogic:
    """Start, follow and stop training jobs; show the loss; list the models."""

    def __init__(self, backend: Backend | None = None):
        self.backend = backend or Backend()

    def use_dataset_folder(self, folder: str | Path, models_dir: str | Path, **config: Any) -> str:
        """Point the local server at the dataset's parent folder; returns the dataset's name."""
        folder = Path(folder).resolve()
        if not (folder / "dataset.json").is_file():
            raise InputError(f"no dataset.json in {folder}")
        if self.backend.config.mode == "local":
            self.backend.configure(BackendConfig(**{**self.backend.config.__dict__, **config,
                                                    "datasets_dir": str(folder.parent),
                                                    "models_dir": str(models_dir)}))
        return folder.name

    def start(self, dataset: str, model_name: str = "", iterations: int | None = None,
              device: str | None = None, resume: bool = True, checkpoint_every: int | None = None,
              validate_every: int | None = None, config: dict[str, Any] | None = None) -> TrainTask:
        """Queue a training job. ``resume`` continues a stopped run of the same model name;
        ``config`` is a partial nested TrainConfig (validated by the server before any work)."""
        options: dict[str, Any] = {"dataset": dataset, "resume": bool(resume)}
        if validate_every is not None:
            options["validate_every"] = int(validate_every)
        if config:
            options["config"] = dict(config)
        if model_name:
            options["model_name"] = model_name
        if iterations:
            options["iterations"] = int(iterations)
        if device:
            options["device"] = device
        if checkpoint_every:
            options["checkpoint_every"] = int(checkpoint_every)
        job_id = self.backend.client().submit_train(options)
        return TrainTask(job_id, dataset, model_name or dataset, options)

    def poll(self, task: TrainTask) -> TrainTask:
        if task.finished:
            return task
        status = self.backend.client().status(task.job_id)
        task.state, task.stage, task.fraction, task.message = status.state, status.stage, status.fraction, status.message
        point = parse_loss(status.message)
        if point is not None and (not task.losses or task.losses[-1][0] != point[0]):
            task.losses.append(point)
        _update_validation(task, status.message)
        if status.state == "done":
            task.report = status.report or {}
            _validation_from_report(task)
        elif status.state == "failed":
            task.error = status.error
        return task

    @staticmethod
    def validation_summary(task: TrainTask) -> str:
        """One line for the panel: the last validation and the best so far (or why there is none)."""
        if not task.validation:
            return "no validation yet (the dataset needs 'val' cases with a dense label)"
        it, dice, hd = task.validation[-1]
        text = f"validation Dice {dice:.3f}" + (f", HD95 {hd:.1f} vox" if hd is not None else "") + f" @ {it}"
        if task.best is not None:
            text += f"; best {task.best[0]:.3f} @ {task.best[1]}"
        return text

    def stop(self, task: TrainTask) -> None:
        """Stop at the next iteration; the last checkpoint stays for a resume."""
        if not task.finished:
            self.backend.client().cancel(task.job_id)

    def models(self) -> list[str]:
        return self.backend.models()


def _update_validation(task: TrainTask, message: str) -> None:
    point = parse_validation(message)
    if point is not None and (not task.validation or task.validation[-1][0] != point[0]):
        task.validation.append(point)
    best = parse_best(message)
    if best is not None:
        task.best = best


def _validation_from_report(task: TrainTask) -> None:
    """The finished job's report holds every validation: it fills the points polling missed."""
    val = (task.report or {}).get("validation") or {}
    history = val.get("history") or []
    if history:
        task.validation = [(int(h["iteration"]), float(h["dice"]), h.get("hd95")) for h in history]
    if val.get("best_dice") is not None:
        task.best = (float(val["best_dice"]), int(val["best_iteration"]))


def checkpoints(models_dir: str | Path) -> list[dict[str, Any]]:
    """The models folder's checkpoints (name, size, modified) and resumable runs."""
    folder = Path(models_dir)
    if not folder.is_dir():
        return []
    rows = []
    for path in sorted(folder.glob("*.pt")):
        stat = path.stat()
        rows.append({"name": path.stem, "path": str(path), "size_mb": round(stat.st_size / 2**20, 1),
                     "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(stat.st_mtime)),
                     "resumable": (folder / f".run-{path.stem}").is_dir()})
    return rows


def _plot_series(scene, name: str, columns: tuple[str, ...], rows):
    """A table node ``{name} table`` holding ``rows`` (first column the iteration, the others
    numbers; None becomes NaN) and a scatter series ``{name} series`` of column 1 against
    column 0; both reused by name, so a live plot is updated in place."""
    import vtk

    table_node = scene.GetFirstNodeByName(f"{name} table")
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    table = table_node.GetTable()
    if table.GetNumberOfColumns() != len(columns):
        table.Initialize()
        for i, column_name in enumerate(columns):
            column = vtk.vtkIntArray() if i == 0 else vtk.vtkDoubleArray()
            column.SetName(column_name)
            table.AddColumn(column)
    table.SetNumberOfRows(len(rows))
    for row, values in enumerate(rows):
        table.SetValue(row, 0, vtk.vtkVariant(int(values[0])))
        for col, value in enumerate(values[1:], start=1):
            table.SetValue(row, col, vtk.vtkVariant(float("nan") if value is None else float(value)))
    table.Modified()
    table_node.Modified()
    series = scene.GetFirstNodeByName(f"{name} series")
    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} series")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(columns[0])
        series.SetYColumnName(columns[1])
        series.SetPlotType(series.PlotTypeScatter)
    return series


def _chart(scene, name: str, title: str, y_title: str, series_nodes):
    """The chart node ``{name} chart`` observing every node of ``series_nodes`` (added once)."""
    chart = scene.GetFirstNodeByName(f"{name} chart")
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")
        chart.SetTitle(title)
        chart.SetXAxisTitle("iteration")
        chart.SetYAxisTitle(y_title)
    observed = {chart.GetNthPlotSeriesNodeID(i) for i in range(chart.GetNumberOfPlotSeriesNodes())}
    for series in series_nodes:
        if series.GetID() not in observed:
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def update_loss_plot(scene, losses: list[tuple[int, float]], name: str = "RADA training loss",
                     validation: list[tuple[int, float, float | None]] | None = None):
    """Table + plot series + chart nodes showing ``losses`` and, once there is any, the
    validation Dice per iteration as a second series of the same chart (the panel has one
    plot); returns the chart node."""
    series = [_plot_series(scene, name, ("iteration", "loss"), losses)]
    if validation:
        series.append(_plot_series(scene, "RADA validation Dice", ("iteration", "dice", "hd95"), validation))
    return _chart(scene, name, "Training loss and validation Dice", "loss / Dice", series)


def update_validation_plot(scene, validation: list[tuple[int, float, float | None]],
                           name: str = "RADA validation Dice"):
    """Table + plot series + chart nodes of the validation Dice per iteration (from
    :attr:`TrainTask.validation`) on a chart of its own; returns the chart node."""
    series = _plot_series(scene, name, ("iteration", "dice", "hd95"), validation)
    return _chart(scene, name, "Validation Dice", "Dice", [series])

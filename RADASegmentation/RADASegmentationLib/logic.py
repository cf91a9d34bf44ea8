"""The Segment button without a GUI: painted segment -> sparse annotation -> server -> segment.

:class:`SegmentationLogic` works on MRML nodes and talks to the backend only through
:class:`rada.service.client.RadaClient` (via :class:`~RADASegmentationLib.backend.Backend`).
It never blocks for long: :meth:`SegmentationLogic.submit` queues a job and returns a
:class:`SegmentTask`, :meth:`SegmentationLogic.poll` asks the server once (the widget calls
it from a ``QTimer``), :meth:`SegmentationLogic.cancel` stops the job on the server, and
:meth:`SegmentationLogic.apply_result` writes the result into the output segmentation as
one undo step. :meth:`SegmentationLogic.segment` chains them for scripts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rada.annotation import SparseAnnotation, from_painting
from rada.views import VIEW_NAMES, VIEW_OF_AXIS
from rada.errors import CancelledError, InputError
from rada.volume import Volume
from RADASegmentationLib import mrml
from RADASegmentationLib.backend import Backend

#: How the user knows the three axes in Slicer (RADA's names are for the volume's own axes).
AXIS_LABELS = {"axial": "axial (K)", "coronal": "coronal (J)", "sagittal": "sagittal (I)"}
RESULT_COLOR = (0.95, 0.75, 0.2)


@dataclass
class Painting:
    """What the user painted: the recovered sparse annotation, per-axis slices, and a verdict."""

    annotation: SparseAnnotation | None
    slices: dict[str, list[int]]
    painted_voxels: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        """'axial (K): 12, 30 | coronal (J): 45 | sagittal (I): none' for the status line."""
        parts = []
        for name in VIEW_OF_AXIS:
            indices = self.slices.get(name, [])
            parts.append(f"{AXIS_LABELS[name]}: {', '.join(str(i) for i in indices) if indices else 'none'}")
        return " | ".join(parts)


@dataclass(frozen=True)
class ResultTarget:
    """Where a result goes, chosen when Segment is pressed (later changes in the GUI do not
    redirect a running job)."""

    output_node_id: str
    segment_name: str
    replace: bool = True


@dataclass
class ResultBackup:
    """RADA's own one-level undo of the result segment (scene undo stays off: turning it on
    makes every pan and window/level in Slicer push deep copies of the segmentation).

    ``previous`` is the replaced segment's mask on the input grid, or None when the result
    created the segment (undo then removes it)."""

    output_node_id: str
    segment_id: str
    previous: Volume | None


@dataclass
class SegmentTask:
    """One Segment job on the server, from submission to its result."""

    job_id: str
    image: Volume
    annotation: SparseAnnotation
    options: dict[str, Any]
    volume_node_id: str
    target: ResultTarget | None = None     # where the result goes, fixed when Segment was pressed
    job_id_pending: bool = False           # prepared on the GUI thread, not sent yet
    submitted: float = field(default_factory=time.monotonic)
    state: str = "queued"
    stage: str = "queued"
    fraction: float = 0.0
    message: str = ""
    label: Volume | None = None
    report: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.submitted

    def status_line(self) -> str:
        """Guidance on/off, device and timings once done; the stage while running."""
        if self.state == "done" and self.report is not None:
            return describe_report(self.report, self.elapsed_s)
        if self.state == "failed":
            return f"Failed: {self.error}"
        if self.state == "cancelled":
            return "Cancelled."
        return f"{self.stage}: {self.message}" if self.message else self.stage


def describe_report(report: dict[str, Any], elapsed_s: float | None = None) -> str:
    guidance = report.get("guidance") or {}
    g = "on" if guidance.get("enabled") else f"off ({guidance.get('reason', 'no trained model')})"
    timings = report.get("timings_s") or {}
    stages = ", ".join(f"{k} {_seconds(v)}" for k, v in timings.items() if k != "total")
    total = timings.get("total")
    round_trip = f"; {_seconds(elapsed_s)} with transfers" if elapsed_s is not None else ""
    volume = report.get("structure_volume_ml")
    return (f"Done: {volume} ml | preset {report.get('preset', '?')} on {report.get('device', '?')} | "
            f"guidance {g} | {stages}" + (f" | total {_seconds(total)}" if total is not None else "") + round_trip)


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


class SegmentationLogic:
    """GUI-free logic of RADASegmentation (runs inside Slicer and on slicer-core)."""

    def __init__(self, backend: Backend | None = None, scene: Any = None):
        self.backend = backend or Backend()
        self._scene = scene                   # where ResultTarget node ids are looked up
        self._backup: ResultBackup | None = None

    # --- 1. what was painted ------------------------------------------------------------
    def analyze_painting(self, volume_node, segmentation_node, segment_id: str,
                         required_axes=VIEW_NAMES) -> Painting:
        """Recover the painted slices of a segment on the volume's grid and check them.

        Never raises for a bad painting: the verdict is in :attr:`Painting.error` (one line,
        e.g. "no annotated coronal slice: ..."), so the GUI can show it while the user paints."""
        image = mrml.volume_from_node(volume_node)
        mask = mrml.segment_mask(segmentation_node, segment_id, volume_node)
        painted = int(mask.array.sum())
        if painted == 0:
            return Painting(None, {n: [] for n in VIEW_NAMES}, 0,
                            "nothing is painted: paint the structure on one slice of each axis")
        try:
            annotation = from_painting(mask)
        except InputError as exc:
            return Painting(None, {n: [] for n in VIEW_NAMES}, painted, str(exc))
        painting = Painting(annotation, annotation.slices(), painted)
        try:
            annotation.validate(image, required_axes)
        except InputError as exc:
            painting.error = str(exc)
        return painting

    # --- 2. submit / poll / cancel ------------------------------------------------------
    def prepare(self, volume_node, segmentation_node, segment_id: str, options: dict[str, Any] | None = None,
                target: ResultTarget | None = None) -> SegmentTask:
        """Validate the painting and read the volume (MRML: the GUI thread); nothing is sent.

        Args:
            volume_node: the input scalar volume node.
            segmentation_node: the segmentation holding the painted segment.
            segment_id: the painted segment.
            options: job options (preset, device, model); empty values are dropped.
            target: where :meth:`apply_result` writes the result (default: the painted
                segmentation, segment "<painted name> (RADA)", replaced).

        Returns:
            A task to :meth:`send` (from any thread); raises InputError on a bad painting.
        """
        painting = self.analyze_painting(volume_node, segmentation_node, segment_id)
        if not painting.ok:
            raise InputError(painting.error)
        image = mrml.volume_from_node(volume_node)
        opts = {k: v for k, v in dict(options or {}).items() if v not in (None, "")}
        if target is None:
            segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
            target = ResultTarget(segmentation_node.GetID(), f"{segment.GetName()} (RADA)")
        return SegmentTask("", image, painting.annotation, opts, volume_node.GetID(), target, job_id_pending=True)

    def send(self, task: SegmentTask) -> SegmentTask:
        """Upload the volume and the annotation and queue the job (network: a worker thread)."""
        client = self.backend.client()
        task.job_id = client.submit_segment(task.image, task.annotation, task.options)
        task.job_id_pending = False
        task.submitted = time.monotonic()
        if task.state == "cancelled":  # cancelled while uploading
            client.cancel(task.job_id)
        return task

    def submit(self, volume_node, segmentation_node, segment_id: str,
               options: dict[str, Any] | None = None, target: ResultTarget | None = None) -> SegmentTask:
        """:meth:`prepare` then :meth:`send` (scripts); raises InputError on a bad painting."""
        return self.send(self.prepare(volume_node, segmentation_node, segment_id, options, target))

    def poll(self, task: SegmentTask) -> SegmentTask:
        """Ask the server once; on success the result is downloaded into ``task.label``
        (network, no MRML: safe on a worker thread)."""
        if task.finished or task.job_id_pending:
            return task
        client = self.backend.client()
        status = client.status(task.job_id)
        task.state, task.stage, task.fraction, task.message = status.state, status.stage, status.fraction, status.message
        if status.state == "done":
            task.label, task.report = client.result(task.job_id)
            mismatch = task.image.grid_mismatch(task.label)
            if mismatch:  # never paste a result on the wrong grid
                task.state, task.error, task.label = "failed", f"the server returned another grid: {mismatch}", None
            self._forget(task)
        elif status.state == "failed":
            task.error = status.error or "failed"
            self._forget(task)
        elif status.state == "cancelled":
            self._forget(task)
        return task

    def cancel(self, task: SegmentTask) -> None:
        """Stop the job on the server (a running job stops at its next check)."""
        if task.job_id_pending:
            task.state = "cancelled"
        elif not task.finished:
            self.backend.client().cancel(task.job_id)

    def _forget(self, task: SegmentTask) -> None:
        try:
            self.backend.client().delete(task.job_id)
        except Exception:  # noqa: BLE001 - the server expires finished jobs anyway
            pass

    # --- 3. the result ------------------------------------------------------------------
    def apply_result(self, task: SegmentTask, output_node=None, segment_name: str = "",
                     replace: bool | None = None) -> str:
        """Write the result into the output segmentation; returns the segment id.

        By default the result goes where ``task.target`` (fixed at submit time) says; the
        arguments override it (scripts). With ``replace``, a segment of that name is overwritten;
        otherwise a new one is added. The result keeps the painted slices exactly (the server
        reproduces them, checked here). :meth:`undo` reverts this one write.
        """
        if task.state != "done" or task.label is None:
            raise InputError(f"no result to apply (job {task.state}{': ' + task.error if task.error else ''})")
        target = task.target
        if output_node is None and target is not None:
            scene = self._scene
            output_node = scene.GetNodeByID(target.output_node_id) if scene is not None else None
            if output_node is None:
                raise InputError("the output segmentation chosen when Segment was pressed is gone; not applied")
        if output_node is None:
            raise InputError("no output segmentation selected")
        name = segment_name or (target.segment_name if target else "") or "RADA result"
        replace = (target.replace if target else True) if replace is None else replace
        known = task.annotation.known()
        if not np.array_equal(task.label.array[known] > 0, task.annotation.foreground()[known]):
            raise InputError("the result does not reproduce the painted slices; not applied")
        scene = output_node.GetScene()
        reference = scene.GetNodeByID(task.volume_node_id)
        mask = task.label.with_array((task.label.array > 0).astype(np.uint8))
        if output_node.GetSegmentation().GetNumberOfSegments() == 0 and \
                not output_node.GetNodeReference("referenceImageGeometryRef") and reference is not None:
            output_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        existing = mrml.segment_id_by_name(output_node, name) if replace else None
        if existing is not None:
            previous = mrml.segment_mask(output_node, existing, reference) if reference is not None else None
            mrml.set_segment_mask(output_node, existing, mask)
            self._backup = ResultBackup(output_node.GetID(), existing, previous if previous is not None else mask)
            return existing
        segment_id = output_node.GetSegmentation().AddEmptySegment("", name)
        output_node.GetSegmentation().GetSegment(segment_id).SetColor(*RESULT_COLOR)
        mrml.set_segment_mask(output_node, segment_id, mask)
        self._backup = ResultBackup(output_node.GetID(), segment_id, None)
        return segment_id

    @property
    def can_undo(self) -> bool:
        return self._backup is not None

    def undo(self, scene) -> bool:
        """Revert the last applied result, and only it (the painting and anything else done
        since are kept); False if there is nothing to undo."""
        backup, self._backup = self._backup, None
        if backup is None:
            return False
        node = scene.GetNodeByID(backup.output_node_id)
        if node is None or node.GetSegmentation().GetSegment(backup.segment_id) is None:
            return False
        if backup.previous is None:
            node.GetSegmentation().RemoveSegment(backup.segment_id)
        else:
            mrml.set_segment_mask(node, backup.segment_id, backup.previous)
        return True

    # --- all in one, for scripts and tests ----------------------------------------------
    def segment(self, volume_node, segmentation_node, segment_id: str, output_node=None,
                options: dict[str, Any] | None = None, segment_name: str = "", replace: bool = True,
                progress: Callable[[float, str, str], None] | None = None, timeout_s: float = 600.0,
                poll_interval_s: float = 0.2) -> tuple[str, SegmentTask]:
        """Submit, poll until finished, apply; returns (result segment id, task)."""
        if not segment_name:
            segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
            segment_name = f"{segment.GetName() if segment else 'organ'} (RADA)"
        output_node = output_node or segmentation_node
        target = ResultTarget(output_node.GetID(), segment_name, replace)
        task = self.submit(volume_node, segmentation_node, segment_id, options, target)
        deadline = time.monotonic() + timeout_s
        while not self.poll(task).finished:
            if progress is not None:
                progress(task.fraction, task.stage, task.message)
            if time.monotonic() > deadline:
                self.cancel(task)
                raise TimeoutError(f"segmentation did not finish within {timeout_s:.0f} s")
            time.sleep(poll_interval_s)
        if task.state == "cancelled":
            raise CancelledError("segmentation cancelled")
        if task.state == "failed":
            raise InputError(task.error or "segmentation failed")
        return self.apply_result(task, output_node), task

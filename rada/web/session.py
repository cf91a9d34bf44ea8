"""One browser session's work on an MRML scene: load, check the painting, Segment, Undo, Save.

No web framework here (the trame app in :mod:`rada.web.app` only wires buttons to these
methods), and no second implementation of anything the Slicer module does: painting
analysis, MRML <-> :class:`~rada.volume.Volume` with exact geometry, submitting to and
polling a ``rada serve``, applying and undoing the result are RADASegmentation's Qt-free
logic (``RADASegmentationLib``), run here on the scene of a trame-slicer application.

Threading: MRML is touched only by the caller's thread (the app's event loop);
:meth:`WebSession.send` and :meth:`WebSession.poll` only talk to the server and may run on a
worker thread, exactly as the Slicer module runs them.

``RADASegmentationLib`` needs slicer-core (the ``web`` extra): it is imported where used.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rada.errors import InputError
from rada.io import Segment, Segmentation, read_volume, write_segmentation, write_volume
from rada.volume import Volume

#: The painted segment and the result (the Slicer module names its result "<painted> (RADA)").
PAINTED_NAME = "organ"
PAINTED_COLOR = (0.3, 0.6, 1.0)
RESULT_NAME = f"{PAINTED_NAME} (RADA)"
#: File endings `Save` writes (a .seg.nrrd keeps both segments; a volume file the result only).
SAVE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def slicer_modules_dir() -> Path:
    """The folder holding ``RADASegmentationLib`` (RADA_SLICER_MODULES, else the source tree).

    Returns:
        The ``RADASegmentation`` module folder; raises InputError when it cannot be found
        (the web app needs a source checkout or that variable).
    """
    candidates = [os.environ.get("RADA_SLICER_MODULES", ""),
                  str(Path(__file__).resolve().parents[2] / "RADASegmentation")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "RADASegmentationLib" / "logic.py").is_file():
            return Path(candidate)
    raise InputError("RADASegmentationLib not found: run `rada web` from a source checkout "
                     "(pip install -e .) or set RADA_SLICER_MODULES to the RADASegmentation folder")


def import_module_logic() -> Any:
    """Import RADASegmentationLib (its folder on ``sys.path``); needs slicer-core."""
    try:
        import slicer  # noqa: F401  (slicer-core: MRML in Python)
    except ModuleNotFoundError:
        raise InputError("rada web needs the 'web' extra (slicer-core is missing): "
                         "pip install \"rada[web]\"") from None
    folder = str(slicer_modules_dir())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import RADASegmentationLib

    return RADASegmentationLib


@dataclass(frozen=True)
class SessionConfig:
    """What a web session talks to and how it segments."""

    server_url: str = ""          # "" = start a local `rada serve` (loopback, fresh token)
    token: str = ""               # remote server's token
    device: str = "auto"          # local server's device
    preset: str = "fast"          # default preset offered in the UI


class WebSession:
    """The state of one RADA web session: a volume, its painting, the running job, the result.

    Args:
        scene: the MRML scene (trame-slicer's ``SlicerApp.scene``, or a bare one in tests;
            the segmentations logic must be set on it).
        backend: ``RADASegmentationLib.backend.Backend`` (local or remote server).
    """

    def __init__(self, scene: Any, backend: Any):
        lib = import_module_logic()
        from RADASegmentationLib.logic import SegmentationLogic

        self._lib = lib
        self.scene = scene
        self.logic = SegmentationLogic(backend, scene=scene)
        self.volume_node: Any = None
        self.segmentation_node: Any = None
        self.painted_id: str = ""
        self.task: Any = None

    # --- loading --------------------------------------------------------------------------
    def load(self, path: str | os.PathLike) -> Any:
        """Read a volume (any format ``rada`` reads, DICOM folder included) into the scene.

        The previous volume, segmentation and job are dropped. A segmentation with one empty
        segment ``organ`` (the one to paint) is created on the volume's grid.

        Returns:
            The new scalar volume node.
        """
        volume = read_volume(path)
        return self.show(volume, Path(path).name.split(".")[0] or "volume")

    def show(self, volume: Volume, name: str) -> Any:
        """Put a :class:`Volume` in the scene (exact geometry) with an empty segment to paint."""
        from RADASegmentationLib import mrml

        self.clear()
        self.volume_node = mrml.add_volume_node(self.scene, volume, name)
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
        self.painted_id = seg.GetSegmentation().AddEmptySegment("", PAINTED_NAME)
        seg.GetSegmentation().GetSegment(self.painted_id).SetColor(*PAINTED_COLOR)
        self.segmentation_node = seg
        return self.volume_node

    def clear(self) -> None:
        """Forget the volume, its segmentation and any job (a running job is cancelled)."""
        if self.task is not None and not self.task.finished:
            try:
                self.logic.cancel(self.task)
            except Exception:  # noqa: BLE001 - the server may be gone; nothing to keep
                pass
        for node in (self.segmentation_node, self.volume_node):
            if node is not None and self.scene.GetNodeByID(node.GetID()) is not None:
                self.scene.RemoveNode(node)
        self.volume_node = self.segmentation_node = self.task = None
        self.painted_id = ""

    # --- the painting ---------------------------------------------------------------------
    def painting(self) -> Any:
        """What is painted so far (slices per axis, and what is missing), as the module shows it."""
        self._require_volume()
        return self.logic.analyze_painting(self.volume_node, self.segmentation_node, self.painted_id)

    # --- Segment --------------------------------------------------------------------------
    def prepare(self, preset: str = "fast", device: str = "") -> Any:
        """Check the painting and read the volume for a job (MRML: the caller's thread).

        Returns:
            The task to :meth:`send`; raises InputError (one line) on a bad painting or while
            another job runs.
        """
        self._require_volume()
        if self.task is not None and not self.task.finished:
            raise InputError("a segmentation is already running: wait for it or cancel it")
        from RADASegmentationLib.logic import ResultTarget

        target = ResultTarget(self.segmentation_node.GetID(), RESULT_NAME, replace=True)
        self.task = self.logic.prepare(self.volume_node, self.segmentation_node, self.painted_id,
                                       {"preset": preset, "device": device}, target)
        return self.task

    def send(self, task: Any) -> Any:
        """Upload and queue the job (network only: any thread)."""
        return self.logic.send(task)

    def poll(self, task: Any) -> Any:
        """One status request; downloads the result when done (network only: any thread)."""
        return self.logic.poll(task)

    def cancel(self) -> bool:
        """Cancel the running job; False when none runs."""
        if self.task is None or self.task.finished:
            return False
        self.logic.cancel(self.task)
        return True

    def apply(self, task: Any) -> str:
        """Write a finished job's result as the segment ``organ (RADA)`` (MRML: caller's thread),
        with its 3D surface; returns the segment id."""
        segment_id = self.logic.apply_result(task)
        self.segmentation_node.CreateClosedSurfaceRepresentation()
        return segment_id

    def undo(self) -> bool:
        """Revert the last applied result (the painting is kept); False if nothing to undo."""
        return self.logic.undo(self.scene)

    @property
    def can_undo(self) -> bool:
        return self.logic.can_undo

    # --- reading back and saving -------------------------------------------------------------
    def result_id(self) -> str | None:
        """The result segment's id, or None before the first result (or after undoing it)."""
        from RADASegmentationLib import mrml

        if self.segmentation_node is None:
            return None
        return mrml.segment_id_by_name(self.segmentation_node, RESULT_NAME)

    def mask(self, segment_id: str) -> Volume:
        """A segment as a 0/1 :class:`Volume` on the loaded volume's grid."""
        from RADASegmentationLib import mrml

        self._require_volume()
        return mrml.segment_mask(self.segmentation_node, segment_id, self.volume_node)

    def save(self, path: str | os.PathLike) -> Path:
        """Save: a ``.seg.nrrd`` keeps the painting and the result as two segments; a volume
        file (NIfTI, NRRD, MHA) holds the result as a 0/1 label. Written atomically, on the
        volume's exact grid.

        Returns:
            The written path; raises InputError for an unknown ending or nothing to save.
        """
        self._require_volume()
        target = Path(path)
        name = target.name.lower()
        if not name.endswith(SAVE_SUFFIXES):
            raise InputError(f"save as one of {', '.join(SAVE_SUFFIXES)}, not {target.name}")
        result_id = self.result_id()
        if name.endswith(".seg.nrrd"):
            segments = [Segment(PAINTED_NAME, self.mask(self.painted_id).array > 0, PAINTED_COLOR)]
            if result_id is not None:
                color = tuple(self.segmentation_node.GetSegmentation().GetSegment(result_id).GetColor())
                segments.append(Segment(RESULT_NAME, self.mask(result_id).array > 0, color))
            reference = self.mask(self.painted_id)
            return write_segmentation(Segmentation(reference, segments), target)
        if result_id is None:
            raise InputError("no result to save yet: press Segment first (or save as .seg.nrrd)")
        mask = self.mask(result_id)
        return write_volume(mask.with_array((mask.array > 0).astype(np.uint8)), target)

    def _require_volume(self) -> None:
        if self.volume_node is None:
            raise InputError("no volume loaded: open one first")

"""When to re-check the painting: only when the painting or the inputs change, debounced.

Checking a painting exports the segment onto the volume's grid (seconds on a big CT), so the
widget must not do it on every parameter change (a keystroke in the URL field) nor while the
module is hidden. :class:`PaintingWatcher` observes the painted segmentation and the input
volume, and asks the widget to schedule one check (the widget restarts a single-shot
``QTimer``: the debounce) when

* the inputs change (another volume, segmentation or segment);
* the user paints: Segment Editor strokes fire ``vtkSegmentation.SourceRepresentationModified``
  (not ``SegmentModified``, which only covers name, color and tags);
* a segment is removed, or the volume's voxels change.

No Qt here, so it is tested on slicer-core by firing the events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import slicer
import vtk

#: Events of the painted segmentation node that can change what was painted.
SEGMENTATION_EVENTS = (slicer.vtkSegmentation.SourceRepresentationModified,
                       slicer.vtkSegmentation.SegmentModified,
                       slicer.vtkSegmentation.SegmentRemoved)


class PaintingWatcher:
    """Observe the painted segmentation and the input volume; call ``schedule`` on changes.

    Args:
        schedule: called (on the GUI thread, from the observer) when the painting should be
            checked again; the widget debounces it with a single-shot timer.
    """

    def __init__(self, schedule: Callable[[], None]):
        self._schedule = schedule
        self._inputs: tuple[str | None, str | None, str] | None = None
        self._observations: list[tuple[Any, int]] = []

    @property
    def watching(self) -> bool:
        return self._inputs is not None

    def watch(self, volume_node, segmentation_node, segment_id: str) -> bool:
        """Follow these inputs; schedules a check only if they differ from the last ones.

        Returns:
            True if a check was scheduled (the inputs changed).
        """
        inputs = (volume_node.GetID() if volume_node else None,
                  segmentation_node.GetID() if segmentation_node else None, segment_id or "")
        if inputs == self._inputs:
            return False
        self._remove_observers()
        self._inputs = inputs
        if segmentation_node is not None:
            for event in SEGMENTATION_EVENTS:
                self._observe(segmentation_node, event)
        if volume_node is not None:
            self._observe(volume_node, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent)
        self._schedule()
        return True

    def stop(self) -> None:
        """Remove every observer (the module is left or closed); the next :meth:`watch` re-checks."""
        self._remove_observers()
        self._inputs = None

    def _observe(self, node, event: int) -> None:
        tag = node.AddObserver(event, self._on_event)
        self._observations.append((node, tag))

    def _on_event(self, caller: vtk.vtkObject, event: str) -> None:
        self._schedule()

    def _remove_observers(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

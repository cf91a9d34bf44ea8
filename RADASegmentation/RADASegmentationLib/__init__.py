"""Qt-free logic of the RADASegmentation module (runs inside Slicer and on slicer-core).

* :mod:`RADASegmentationLib.mrml` - volume and segment nodes <-> :class:`rada.volume.Volume`.
* :mod:`RADASegmentationLib.backend` - the session's one RADA server (local on demand, or remote),
  and :class:`~RADASegmentationLib.backend.ServerCalls`: network calls off the GUI thread.
* :mod:`RADASegmentationLib.logic` - painting analysis, submit/poll/cancel, result, own undo.
* :mod:`RADASegmentationLib.watch` - when to re-check the painting (observers, debounced).
* :mod:`RADASegmentationLib.dependencies` - what Slicer's Python needs, and consent to install it.
* :mod:`RADASegmentationLib.selftest` - self-test bodies taking a scene (Slicer and pytest).
"""

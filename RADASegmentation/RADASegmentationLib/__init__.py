"""Qt-free logic of the RADASegmentation module (runs inside Slicer and on slicer-core).

* :mod:`RADASegmentationLib.mrml` - volume and segment nodes <-> :class:`rada.volume.Volume`.
* :mod:`RADASegmentationLib.backend` - the RADA server: local on demand or remote.
* :mod:`RADASegmentationLib.logic` - painting analysis, submit/poll/cancel, result, undo.
* :mod:`RADASegmentationLib.dependencies` - what Slicer's Python needs, and consent to install it.
* :mod:`RADASegmentationLib.selftest` - self-test bodies taking a scene (Slicer and pytest).
"""

"""Inside Slicer: each RADASegmentationLib.selftest check as its own unittest on slicer.mrmlScene."""

import unittest

import slicer


class RADASegmentationSelfTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_geometry_roundtrip(self):
        from RADASegmentationLib import selftest
        selftest.check_geometry_roundtrip(slicer.mrmlScene)

    def test_painting_analysis(self):
        from RADASegmentationLib import selftest
        selftest.check_painting_analysis(slicer.mrmlScene)

    def test_bad_paintings_refused(self):
        from RADASegmentationLib import selftest
        selftest.check_bad_paintings_refused(slicer.mrmlScene)

    def test_undo(self):
        from RADASegmentationLib import selftest
        selftest.check_undo(slicer.mrmlScene)

    def test_seg_nrrd_interop(self):
        from RADASegmentationLib import selftest
        selftest.check_seg_nrrd_interop(slicer.mrmlScene)

    def test_segment_end_to_end(self):
        from RADASegmentationLib import selftest
        from RADASegmentationLib.backend import Backend, BackendConfig, slicer_python
        from RADASegmentationLib.logic import SegmentationLogic
        backend = Backend(BackendConfig(device="cpu", python=slicer_python()))
        try:
            selftest.check_segment_end_to_end(slicer.mrmlScene, SegmentationLogic(backend))
        finally:
            backend.stop()


if __name__ == "__main__":
    unittest.main()

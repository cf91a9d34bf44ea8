"""Inside Slicer: each RADATrainerLib.selftest check as its own unittest on slicer.mrmlScene."""

import unittest

import slicer


class RADATrainerSelfTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_scene_export_and_validation(self):
        from RADATrainerLib import selftest
        selftest.check_scene_export_and_validation(slicer.mrmlScene)

    def test_loss_plot(self):
        from RADATrainerLib import selftest
        selftest.check_loss_plot(slicer.mrmlScene)

    def test_checkpoint_list(self):
        from RADATrainerLib import selftest
        selftest.check_checkpoint_list(slicer.mrmlScene)


if __name__ == "__main__":
    unittest.main()

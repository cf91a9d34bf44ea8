"""Qt-free logic of the RADATrainer module (runs inside Slicer and on slicer-core).

* :mod:`RADATrainerLib.logic` - dataset validation, scene cases -> dataset, training jobs,
  loss plot, checkpoints.
* :mod:`RADATrainerLib.plotview` - the plot view node the module's qMRMLPlotWidget shows.
* :mod:`RADATrainerLib.selftest` - self-test bodies taking a scene (Slicer and pytest).
"""

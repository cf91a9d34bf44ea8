"""RADATrainer: train a RADA model on a dataset folder or on the cases painted in the scene.

Thin on purpose: the work is in RADATrainerLib (no Qt, runs on slicer-core in CI) and in the
RADA server (job kind "train"), reached only through ``rada.service.client``. A finished
model lands in the models folder RADASegmentation lists, and becomes its selected model.
"""

import logging
import os
from typing import Annotated

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)
POLL_INTERVAL_MS = 1000
DOCUMENTATION_URL = "https://github.com/rada-segmentation/RADA#in-3d-slicer-step-by-step-rada-extension"


class RADATrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RADA Trainer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["RADASegmentation"]
        self.parent.contributors = ["RADA developers (RADA project)"]
        self.parent.helpText = _(
            "Train a RADA model from sparse annotations (one painted slice per axis per case): pick a "
            "dataset folder (dataset.json) or use the cases painted in this scene, check it, then Start. "
            "Stop keeps the last checkpoint; Resume continues it. The trained model is offered to "
            "RADA Segmentation by name.")
        self.parent.helpText += _(' See the <a href="{0}">RADA documentation</a>.').format(DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("RADA: barely-supervised 3D organ segmentation.")


@parameterNodeWrapper
class RADATrainerParameterNode:
    datasetSource: Annotated[str, Choice(["dataset folder", "current scene"])] = "dataset folder"
    datasetFolder: str = ""
    organ: str = "organ"
    modelName: str = ""
    iterations: Annotated[int, WithinRange(1, 1000000)] = 3000
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


class RADATrainerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._calls = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RADATrainer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RADATrainerLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for table in (self.ui.problemsTableWidget, self.ui.checkpointsTableWidget):
            table.horizontalHeader().setStretchLastSection(True)
            table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.ui.datasetFolderPathLineEdit.currentPathChanged.connect(self.onDatasetFolderChanged)
        self.ui.validateButton.clicked.connect(self.onValidate)
        self.ui.startButton.clicked.connect(lambda: self.onStart(resume=False))
        self.ui.resumeButton.clicked.connect(lambda: self.onStart(resume=True))
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.refreshCheckpointsButton.clicked.connect(self.onRefreshCheckpoints)
        self.ui.useModelButton.clicked.connect(self.onUseModel)
        self.ui.serverLabel.text = self.logic.connectionDescription()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        self.removeObservers()
        if self._calls is not None:
            self._calls.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        # A training job outlives the scene: it is still followed (Stop works), and the loss
        # plot comes back in the new scene at the next poll.
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            if self.ui.datasetFolderPathLineEdit.currentPath != self._parameterNode.datasetFolder:
                self.ui.datasetFolderPathLineEdit.currentPath = self._parameterNode.datasetFolder

    def onDatasetFolderChanged(self, path) -> None:
        if self._parameterNode is not None:
            self._parameterNode.datasetFolder = path or ""

    def _fillTable(self, table, rows) -> None:
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(str(value)))
        table.resizeColumnsToContents()

    def calls(self):
        if self._calls is None:
            from RADASegmentationLib.backend import ServerCalls
            self._calls = ServerCalls(self.logic.backend())
        return self._calls

    def onValidate(self) -> bool:
        with slicer.util.tryWithErrorDisplay(_("Could not check the dataset."), waitCursor=True):
            from RADASegmentation import dependencyResourcesPath, ensureDependencies
            if not ensureDependencies(dependencyResourcesPath(), requester="RADATrainer"):
                return False
            self.ui.serverLabel.text = self.logic.connectionDescription()
            folder, problems = self.logic.prepareDataset(self._parameterNode)
            self._fillTable(self.ui.problemsTableWidget, [p.row() for p in problems])
            blocking = [p for p in problems if p.blocking]
            if folder is None or blocking:
                self.ui.statusLabel.text = _("{0} problem(s) to fix before training.").format(len(blocking))
                return False
            self.ui.statusLabel.text = _("Dataset ready: {0}").format(folder)
            return True
        return False

    def onStart(self, resume=False) -> None:
        if self._task is not None or not self.onValidate():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            start = self.logic.startFunction(self._parameterNode, resume=resume)
            self.ui.lossPlotWidget.setMRMLPlotViewNode(self.logic.lossPlotView([]))
            self.calls().call(start, self.onStarted, self.onCallFailed)
            self.ui.statusLabel.text = _("Connecting to the RADA server...")
            self._setRunning(True)
            self._timer.start()

    def _setRunning(self, running) -> None:
        self.ui.stopButton.enabled = running
        self.ui.startButton.enabled = self.ui.resumeButton.enabled = not running

    def onStarted(self, task) -> None:
        self._task = task
        self.ui.statusLabel.text = _("Training job queued.")
        self.calls().call(lambda client: (self.logic.poll(task), self.logic.deviceMessage()),
                          self.onPolled, self.onCallFailed)

    def onCallFailed(self, error) -> None:
        logger.error("RADA training: %s", error)
        self.ui.statusLabel.text = _("Error: {0}").format(error)
        self._finish(None)

    def onTimer(self) -> None:
        try:
            busy = self.calls().pump()
        except Exception as exc:  # noqa: BLE001 - never leave the timer running on an error
            self.onCallFailed(exc)
            busy = False
        if not busy and self._task is None:
            self._timer.stop()

    def onPolled(self, result) -> None:
        task, deviceMessage = result
        if task is not self._task:
            return
        self.ui.progressBar.value = int(round(100 * task.fraction))
        self.ui.statusLabel.text = (f"{deviceMessage}\n{task.stage}: {task.message}\n"
                                    f"{self.logic.validationSummary(task)}")
        if task.losses:
            view = self.logic.lossPlotView(task.losses, task.validation)
            if self.ui.lossPlotWidget.mrmlPlotViewNode() is not view:  # a new scene since Start
                self.ui.lossPlotWidget.setMRMLPlotViewNode(view)
        if task.finished:
            self._finish(task)
            return
        qt.QTimer.singleShot(POLL_INTERVAL_MS, lambda: self._pollAgain(task))

    def _pollAgain(self, task) -> None:
        if task is self._task:
            self.calls().call(lambda client: (self.logic.poll(task), self.logic.deviceMessage()),
                              self.onPolled, self.onCallFailed)
            self._timer.start()

    def _finish(self, task) -> None:
        self._task = None
        self._setRunning(False)
        if task is None:
            return
        if task.state == "done":
            self.ui.statusLabel.text = _("Model '{0}' trained: {1}").format(task.model_name, task.report)
            self.logic.publishModel(task.model_name)
            self.ui.evaluationLabel.text = _("Last run: {0}").format(task.report)
        elif task.state == "failed":
            self.ui.statusLabel.text = _("Training failed: {0}").format(task.error)
        else:
            self.ui.statusLabel.text = _("Stopped. Resume continues from the last checkpoint.")
        self.onRefreshCheckpoints()

    def onStop(self) -> None:
        if self._task is not None:
            task = self._task
            self.calls().call(lambda client: self.logic.stop(task), lambda _result: None, self.onCallFailed)
            self._timer.start()
            self.ui.statusLabel.text = _("Stopping at the next iteration...")

    def onRefreshCheckpoints(self) -> None:
        rows = self.logic.checkpoints()
        self._fillTable(self.ui.checkpointsTableWidget,
                        [[r["name"], r["size_mb"], r["modified"], "yes" if r["resumable"] else ""] for r in rows])

    def onUseModel(self) -> None:
        row = self.ui.checkpointsTableWidget.currentRow()
        if row < 0:
            slicer.util.errorDisplay(_("Select a model in the table first."))
            return
        name = self.ui.checkpointsTableWidget.item(row, 0).text()
        self.logic.publishModel(name)
        self.ui.statusLabel.text = _("RADA Segmentation will use model '{0}'.").format(name)


class RADATrainerLogic(ScriptedLoadableModuleLogic):
    """Uses RADA Segmentation's connection: the same settings and the same server."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def getParameterNode(self):
        return RADATrainerParameterNode(super().getParameterNode())

    @staticmethod
    def segmentationLogic():
        return slicer.util.getModuleLogic("RADASegmentation")

    def backend(self):
        return self.segmentationLogic().backend()

    @property
    def core(self):
        if self._core is None:
            from RADATrainerLib.logic import TrainerLogic
            self._core = TrainerLogic(self.backend())
        return self._core

    def connectionDescription(self) -> str:
        from RADASegmentation import connectionSettingsValues
        from RADASegmentationLib.backend import connection_config
        config = connection_config(connectionSettingsValues())
        if config.mode == "remote":
            return _("remote server {0} (set in RADA Segmentation)").format(config.url or _("(no URL set)"))
        return _("local server on this computer (set in RADA Segmentation)")

    @staticmethod
    def modelsDir() -> str:
        from RADASegmentation import connectionSettingsValues
        from RADASegmentationLib.backend import connection_config
        return connection_config(connectionSettingsValues()).models_dir

    def prepareDataset(self, p):
        """(folder, problems): the picked folder, or the scene's cases exported to one."""
        from RADASegmentationLib.backend import default_data_dir
        from RADATrainerLib.logic import (
            export_scene_dataset,
            scene_cases,
            validate_dataset,
        )
        if p.datasetSource == "current scene":
            name = (p.modelName or p.organ or "scene").replace(" ", "_")
            folder, problems = export_scene_dataset(scene_cases(slicer.mrmlScene),
                                                    default_data_dir() / "datasets" / name, name, p.organ)
            if folder is None:
                return None, problems
            p.datasetFolder = str(folder)
            _spec, more = validate_dataset(folder)
            return folder, problems + more
        if not p.datasetFolder:
            from RADATrainerLib.logic import Problem
            return None, [Problem("(dataset)", "dataset", "pick a dataset folder (with dataset.json)")]
        _spec, problems = validate_dataset(p.datasetFolder)
        return p.datasetFolder, problems

    def startFunction(self, p, resume=False):
        """Configure the shared connection (GUI thread) and return the network part,
        ``work(client) -> TrainTask``, for a worker thread."""
        from RADASegmentationLib.backend import connection_config, slicer_python
        from RADASegmentation import connectionSettingsValues
        backend = self.backend()
        config = connection_config(connectionSettingsValues(), python=slicer_python(),
                                   datasets_dir=backend.config.datasets_dir)
        backend.configure(config)
        if config.mode == "local":
            dataset = self.core.use_dataset_folder(p.datasetFolder, config.models_dir)
        else:
            dataset = os.path.basename(os.path.normpath(p.datasetFolder))
        modelName, iterations, device = p.modelName, p.iterations, p.device
        return lambda client: self.core.start(dataset, modelName, iterations, device, resume=resume)

    def poll(self, task):
        return self.core.poll(task)

    def stop(self, task) -> None:
        self.core.stop(task)

    def lossPlotView(self, losses, validation=None):
        """The plot view node showing the loss chart (updated with ``losses`` and the
        validation Dice points)."""
        from RADATrainerLib.logic import update_loss_plot
        from RADATrainerLib.plotview import loss_plot_view
        return loss_plot_view(slicer.mrmlScene, update_loss_plot(slicer.mrmlScene, losses, validation=validation))

    def validationSummary(self, task) -> str:
        """One line: the last validation Dice and the best so far (or why there is none)."""
        return self.core.validation_summary(task)

    def checkpoints(self):
        from RADATrainerLib.logic import checkpoints
        return checkpoints(self.modelsDir())

    def deviceMessage(self) -> str:
        try:
            return self.core.backend.device_message()
        except Exception as exc:  # noqa: BLE001
            return _("Server not reachable: {0}").format(exc)

    @staticmethod
    def publishModel(name: str) -> None:
        """RADA Segmentation picks this model next time (shared settings key)."""
        qt.QSettings().setValue("RADA/LastModel", name)
        try:
            segLogic = slicer.util.getModuleLogic("RADASegmentation")
            segLogic.getParameterNode().modelName = name
        except Exception:  # noqa: BLE001 - the module may not be loaded yet
            pass


class RADATrainerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from RADATrainerLib import selftest
        for check in selftest.OFFLINE_CHECKS:
            self.setUp()
            self.delayDisplay(f"RADATrainer: {check.__name__}")
            check(slicer.mrmlScene)
        self.delayDisplay("RADATrainer checks passed")

"""RADASegmentation: segment an organ in 3D from three painted orthogonal slices.

Thin on purpose: the work is in RADASegmentationLib (no Qt, runs on slicer-core in CI) and
in the RADA server (``rada serve``), reached only through ``rada.service.client``.
"""

import logging
import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)
POLL_INTERVAL_MS = 300
#: Re-check the painting this long after the last stroke or input change (debounce).
PAINTING_CHECK_DELAY_MS = 700
DOCUMENTATION_URL = "https://github.com/rada-segmentation/RADA#in-3d-slicer-step-by-step-rada-extension"
CONTRIBUTORS = ["RADA developers (RADA project)"]


#
# RADASegmentation
#

class RADASegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RADA Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _(
            "Paint the organ on one axial, one coronal and one sagittal slice (Segment Editor), "
            "pick the painted segment here and press Segment. The 3D result is added to the output "
            "segmentation as one undo step; the painted slices are kept exactly. "
            "Work runs in a RADA server: a local one started on demand, or a remote GPU server.")
        self.parent.helpText += _(' See the <a href="{0}">RADA documentation</a>.').format(DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "RADA: barely-supervised 3D organ segmentation (ANTs propagation, Alpha-CLIP guidance, "
            "tri-view V-Nets).")


#
# Parameter node: everything needed to reproduce a case from a saved scene. The connection
# (local/remote, URL, token) is not here: it lives in Slicer's settings, shared with RADATrainer.
#

@parameterNodeWrapper
class RADASegmentationParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    paintedSegmentation: vtkMRMLSegmentationNode
    paintedSegmentID: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    resultSegmentName: str = ""
    replaceResult: bool = True
    preset: Annotated[str, Choice(["fast", "full", "finetune"])] = "fast"
    modelName: str = ""
    checkpointPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# Dependencies (first use, with consent)
#

def dependencyResourcesPath() -> str:
    """RADASegmentation's ``resourcePath("Python")``: requirements.txt and constraints.txt,
    listed in the module's MODULE_PYTHON_RESOURCES (also for RADATrainer, which needs them)."""
    modulePath = slicer.modules.radasegmentation.path
    return os.path.join(os.path.dirname(modulePath), "Resources", "Python")


def ensureDependencies(resources: str, requester: str = "RADA") -> bool:
    """What the chosen server needs, with consent; True when all is importable.

    A remote server needs only the client's packages; a local one also needs torch (via the
    PyTorch extension) and the server's packages. Call it inside
    ``slicer.util.tryWithErrorDisplay``: a broken installation then shows a message instead
    of a console traceback."""
    from RADASegmentationLib import dependencies  # no third-party imports in it

    problem = dependencies.slicer_version_problem((slicer.app.majorVersion, slicer.app.minorVersion))
    if problem:
        slicer.util.errorDisplay(problem)
        return False
    localServer = (connectionSettingsValues().get("RADA/ServerMode") or "local") == "local"
    problem = dependencies.torch_status() if localServer else None
    if problem:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("{0}. Install the 'PyTorch' extension from the Extensions "
                                       "Manager, restart Slicer, then try again.").format(problem))
            return False
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=dependencies.TORCH_REQUIREMENT)
        if torch is None:
            slicer.util.errorDisplay(_("PyTorch is required; it was not installed."))
            return False

    requirementFiles, constraintsFile = dependencies.requirement_files(resources, localServer)
    requirements = [r for path in requirementFiles for r in dependencies.read_requirements(path)]
    needed = dependencies.to_install(requirements)
    if needed:
        constraints = dependencies.runtime_constraints(
            constraintsFile, os.path.join(slicer.app.temporaryPath, "RADA", "constraints.txt"))
        pipEnsure = None
        try:
            from slicer.packaging import pip_ensure as pipEnsure  # Slicer 5.12+
        except ImportError:
            pass
        if pipEnsure is not None:
            from packaging.requirements import Requirement
            pipEnsure([Requirement(r) for r in needed], constraints=str(constraints),
                      skip_packages=list(dependencies.SHIPPED), requester=requester)
        else:  # Slicer 5.10: ask, then pip_install with the constraints
            if not slicer.util.confirmOkCancelDisplay(
                    _("RADA needs these Python packages: {0}. Install them now "
                      "(a few minutes; Slicer's own packages are not changed)?").format(", ".join(needed))):
                return False
            slicer.util.pip_install(" ".join(f'"{r}"' for r in needed) + f' -c "{constraints}"')
        still = dependencies.to_install(requirements)
        if still:
            slicer.util.errorDisplay(_("These packages are still missing: {0}").format(', '.join(still)))
            return False
    try:
        import rada.service.client  # noqa: F401
    except ImportError as exc:
        slicer.util.errorDisplay(_("The rada package cannot be imported: {0}").format(exc))
        return False
    return True


def connectionSettingsValues() -> dict:
    """The connection settings both modules use (one place: Slicer's settings)."""
    from RADASegmentationLib.backend import SETTINGS_KEYS
    settings = qt.QSettings()
    return {key: settings.value(key) for key in SETTINGS_KEYS.values()}


def saveConnectionSetting(name: str, value: str) -> None:
    """Write one connection setting (``name`` is a key of backend.SETTINGS_KEYS)."""
    from RADASegmentationLib.backend import SETTINGS_KEYS
    qt.QSettings().setValue(SETTINGS_KEYS[name], value)


#
# Widget
#

class RADASegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._paintingOK = False
        self._calls = None
        self._watcher = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onTimer)
        # One painting check shortly after the user stops painting or changes the inputs.
        self._paintingTimer = qt.QTimer()
        self._paintingTimer.setSingleShot(True)
        self._paintingTimer.setInterval(PAINTING_CHECK_DELAY_MS)
        self._paintingTimer.timeout.connect(self.updatePaintingStatus)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RADASegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RADASegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        values = connectionSettingsValues()
        self.ui.serverModeComboBox.currentText = values.get("RADA/ServerMode") or "local"
        self.ui.serverURLLineEdit.text = values.get("RADA/ServerURL") or ""
        self.ui.serverTokenLineEdit.text = values.get("RADA/ServerToken") or ""
        self.ui.serverModeComboBox.currentTextChanged.connect(self.onServerModeChanged)
        self.ui.serverURLLineEdit.editingFinished.connect(
            lambda: saveConnectionSetting("url", self.ui.serverURLLineEdit.text.strip()))
        self.ui.serverTokenLineEdit.editingFinished.connect(
            lambda: saveConnectionSetting("token", self.ui.serverTokenLineEdit.text))
        self.ui.paintedSegmentSelector.currentNodeChanged.connect(self.onPaintedSegmentChanged)
        self.ui.paintedSegmentSelector.currentSegmentChanged.connect(self.onPaintedSegmentChanged)
        self.ui.checkpointPathLineEdit.currentPathChanged.connect(self.onCheckpointChanged)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.refreshModelsButton.clicked.connect(self.onRefreshModels)
        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.ui.cancelButton.clicked.connect(self.onCancelButton)
        self.ui.undoButton.clicked.connect(self.onUndoButton)
        self.ui.modelComboBox.addItem(_("None (guidance off)"), "")
        self.updateServerFields()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        self._paintingTimer.stop()
        if self._watcher is not None:
            self._watcher.stop()
        self.removeObservers()
        if self._calls is not None:
            self._calls.shutdown()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Hidden: no painting checks, no observers (a running job keeps being followed).
        self._paintingTimer.stop()
        if self._watcher is not None:
            self._watcher.stop()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None or (self._calls is not None and self._calls.busy):
            self.cancelJob(_("Cancelled: the scene was closed."))
        if self._watcher is not None:
            self._watcher.stop()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        lastModel = qt.QSettings().value("RADA/LastModel") or ""
        if lastModel and not self._parameterNode.modelName:  # a model RADATrainer just trained
            self._parameterNode.modelName = lastModel
        if not self._parameterNode.paintedSegmentation:
            firstSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentation:
                self._parameterNode.paintedSegmentation = firstSegmentation

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    # --- GUI <-> parameter node for the widgets the wrapper does not bind -----------------
    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        wasBlocked = self.ui.paintedSegmentSelector.blockSignals(True)
        self.ui.paintedSegmentSelector.setCurrentNode(p.paintedSegmentation)
        if p.paintedSegmentID:
            self.ui.paintedSegmentSelector.setCurrentSegmentID(p.paintedSegmentID)
        self.ui.paintedSegmentSelector.blockSignals(wasBlocked)
        if self.ui.checkpointPathLineEdit.currentPath != p.checkpointPath:
            self.ui.checkpointPathLineEdit.currentPath = p.checkpointPath
        index = self.ui.modelComboBox.findData(p.modelName)
        if index < 0 and p.modelName:
            self.ui.modelComboBox.addItem(p.modelName, p.modelName)
            index = self.ui.modelComboBox.findData(p.modelName)
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        # The painting is checked again only if the inputs changed (not for every parameter).
        if self._watcher is None:
            from RADASegmentationLib.watch import PaintingWatcher
            self._watcher = PaintingWatcher(self._paintingTimer.start)
        self._watcher.watch(p.inputVolume, p.paintedSegmentation, p.paintedSegmentID)
        self.updateButtons()

    def updateServerFields(self) -> None:
        remote = self.ui.serverModeComboBox.currentText == "remote"
        self.ui.serverURLLineEdit.enabled = remote
        self.ui.serverTokenLineEdit.enabled = remote
        self.ui.checkpointPathLineEdit.enabled = not remote

    def onServerModeChanged(self, text) -> None:
        saveConnectionSetting("mode", text)
        self.updateServerFields()

    def onPaintedSegmentChanged(self, *args) -> None:
        if self._parameterNode is None:
            return
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.paintedSegmentation = self.ui.paintedSegmentSelector.currentNode()
            self._parameterNode.paintedSegmentID = self.ui.paintedSegmentSelector.currentSegmentID() or ""

    def onCheckpointChanged(self, path) -> None:
        if self._parameterNode is not None:
            self._parameterNode.checkpointPath = path or ""

    def onModelChanged(self, index) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.modelName = self.ui.modelComboBox.itemData(index) or ""

    def updatePaintingStatus(self) -> None:
        """Which slices on which axes are painted, and whether Segment can run."""
        p = self._parameterNode
        ok = False
        if self._task is not None:
            return  # the result being written would trigger it; checked after the job
        if p and p.inputVolume and p.paintedSegmentation and p.paintedSegmentID:
            summary = self.logic.paintingSummary(p.inputVolume, p.paintedSegmentation, p.paintedSegmentID)
            if summary is not None:
                ok, text = summary
                self.ui.paintingStatusLabel.text = text
        else:
            self.ui.paintingStatusLabel.text = _("Select the input volume and the segment you painted.")
        self._paintingOK = ok
        self.updateButtons()

    def updateButtons(self) -> None:
        busy = self._task is not None
        self.ui.segmentButton.enabled = self._paintingOK and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.undoButton.enabled = self.logic is not None and self.logic.canUndo() and not busy

    # --- network calls (worker thread, results handed back by the timer) -------------------
    def calls(self):
        if self._calls is None:
            from RADASegmentationLib.backend import ServerCalls
            self._calls = ServerCalls(self.logic.backend())
        return self._calls

    def onTimer(self) -> None:
        try:
            busy = self.calls().pump()
        except Exception as exc:  # noqa: BLE001 - never leave the timer running on an error
            logger.exception("RADA server call failed")
            self.onCallFailed(exc)
            busy = False
        if not busy and self._task is None:
            self._timer.stop()

    def onCallFailed(self, error) -> None:
        self._task = None
        self.ui.statusLabel.text = _("Error: {0}").format(error)
        self.ui.stageLabel.text = ""
        self.updateButtons()

    # --- actions -------------------------------------------------------------------------
    def onRefreshModels(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not list the server's models."), waitCursor=True):
            if not ensureDependencies(self.resourcePath("Python")):
                return
            self.logic.configureBackend()
            self.ui.statusLabel.text = _("Asking the server for its models...")
            backend = self.logic.backend()
            self.calls().call(lambda client: (backend.models(), backend.device_message()),
                              self.onModelsListed, self.onRefreshFailed)
            self._timer.start()

    def onRefreshFailed(self, error) -> None:
        self.ui.statusLabel.text = _("Could not list the server's models: {0}").format(error)

    def onModelsListed(self, result) -> None:
        models, deviceMessage = result
        current = self._parameterNode.modelName if self._parameterNode else ""
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("None (guidance off)"), "")
        for name in models:
            self.ui.modelComboBox.addItem(name, name)
        self.ui.modelComboBox.blockSignals(False)
        self.updateGUIFromParameterNode()
        self.ui.deviceLabel.text = deviceMessage
        self.ui.statusLabel.text = "" if not current or current in models else \
            _("Model '{0}' is not offered by the server.").format(current)

    def onSegmentButton(self) -> None:
        self.ui.statusLabel.text = ""
        self.ui.progressBar.value = 0
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            if not ensureDependencies(self.resourcePath("Python")):
                return
            self.logic.configureBackend()
            # Read the nodes now (GUI thread); the result goes where the GUI says at this moment.
            task = self.logic.prepare(self._parameterNode)
            self.calls().call(lambda client: self.logic.send(task), self.onSubmitted, self.onCallFailed)
            self._task = task
            self.ui.stageLabel.text = _("Connecting to the RADA server...")
            self._timer.start()
        self.updateButtons()

    def onSubmitted(self, task) -> None:
        if self._task is not task:
            return
        if task.state == "cancelled":  # Cancel was pressed while it was uploading
            self.cancelJob(_("Cancelled."))
            return
        self.ui.stageLabel.text = _("Queued on the server")
        self.calls().call(lambda client: (self.logic.poll(task), self.logic.deviceMessage()),
                          self.onPolled, self.onCallFailed)

    def onPolled(self, result) -> None:
        task, deviceMessage = result
        if self._task is not task:
            return
        self.ui.deviceLabel.text = deviceMessage
        self.ui.progressBar.value = int(round(100 * task.fraction))
        self.ui.stageLabel.text = f"{task.stage}: {task.message}" if task.message else task.stage
        if not task.finished:
            qt.QTimer.singleShot(POLL_INTERVAL_MS, lambda: self._pollAgain(task))
            return
        self._task = None
        with slicer.util.tryWithErrorDisplay(_("Could not apply the result.")):
            if task.state == "done":
                self.logic.applyResult(task)
                self.ui.progressBar.value = 100
            self.ui.statusLabel.text = task.status_line()
        self._paintingTimer.start()
        self.updateButtons()

    def _pollAgain(self, task) -> None:
        if self._task is task:
            self.calls().call(lambda client: (self.logic.poll(task), self.logic.deviceMessage()),
                              self.onPolled, self.onCallFailed)
            self._timer.start()

    def cancelJob(self, message) -> None:
        """Stop following the job and cancel it on the server; nothing is written."""
        task, self._task = self._task, None
        if self._calls is not None:
            self._calls.clear()  # queued calls are dropped; a running one's result is ignored
        if task is not None:
            if task.job_id_pending:
                task.state = "cancelled"  # still uploading: send() cancels it as soon as it has an id
            elif not task.finished:
                self.calls().call(lambda client: self.logic.cancel(task), lambda _result: None,
                                  lambda exc: logger.warning("RADA: cancel failed: %s", exc))
                self._timer.start()
        self.ui.stageLabel.text = message
        self.updateButtons()

    def onCancelButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not cancel the job.")):
            self.cancelJob(_("Cancelled."))

    def onUndoButton(self) -> None:
        undone = self.logic.undo()
        self.ui.statusLabel.text = _("Last result undone.") if undone else _("Nothing to undo.")
        self.updateButtons()


#
# Logic: a thin wrapper so Slicer finds a ScriptedLoadableModuleLogic; the work is in
# RADASegmentationLib.logic.SegmentationLogic (imported lazily, after the dependencies).
# It owns the session's one Backend (one local server at most), which RADATrainer shares.
#

class RADASegmentationLogic(ScriptedLoadableModuleLogic):
    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None
        slicer.app.connect("aboutToQuit()", self.shutdown)

    def getParameterNode(self):
        return RADASegmentationParameterNode(super().getParameterNode())

    @property
    def core(self):
        if self._core is None:
            from RADASegmentationLib.backend import Backend
            from RADASegmentationLib.logic import SegmentationLogic
            self._core = SegmentationLogic(Backend(), scene=slicer.mrmlScene)
        return self._core

    def backend(self):
        return self.core.backend

    def configureBackend(self, datasetsDir=None) -> None:
        """Apply the shared connection settings; a local server keeps its datasets folder
        unless one is given (so the two modules do not restart each other's server)."""
        from RADASegmentationLib.backend import connection_config, slicer_python
        backend = self.core.backend
        config = connection_config(connectionSettingsValues(), python=slicer_python(),
                                   datasets_dir=datasetsDir or backend.config.datasets_dir)
        backend.configure(config)

    def paintingSummary(self, volumeNode, segmentationNode, segmentID):
        """(ok, text) for the status line, or None if the backend is not installed yet."""
        try:
            from rada.errors import InputError
        except ImportError:
            return None
        try:
            painting = self.core.analyze_painting(volumeNode, segmentationNode, segmentID)
        except InputError as exc:
            return False, str(exc)
        text = painting.summary()
        return painting.ok, text + ("" if painting.ok else "\n" + painting.error)

    def options(self, p) -> dict:
        options = {"preset": p.preset, "device": p.device}
        model = p.modelName
        if p.checkpointPath and self.core.backend.config.mode == "local":
            model = self.core.backend.import_model(p.checkpointPath)
        if model:
            options["model"] = model
        return options

    def prepare(self, p):
        """The job as the GUI shows it now: inputs read, result target fixed (GUI thread)."""
        from RADASegmentationLib.logic import ResultTarget
        output = p.outputSegmentation or p.paintedSegmentation
        if output is None:
            from rada.errors import InputError
            raise InputError(_("Select the segmentation holding the painted segment."))
        name = p.resultSegmentName
        if not name:
            segment = p.paintedSegmentation.GetSegmentation().GetSegment(p.paintedSegmentID)
            name = f"{segment.GetName() if segment else 'organ'} (RADA)"
        target = ResultTarget(output.GetID(), name, p.replaceResult)
        return self.core.prepare(p.inputVolume, p.paintedSegmentation, p.paintedSegmentID, self.options(p), target)

    def send(self, task):
        return self.core.send(task)

    def poll(self, task):
        return self.core.poll(task)

    def cancel(self, task) -> None:
        self.core.cancel(task)

    def applyResult(self, task) -> str:
        return self.core.apply_result(task)

    def canUndo(self) -> bool:
        return self._core is not None and self._core.can_undo

    def undo(self) -> bool:
        return self._core is not None and self.core.undo(slicer.mrmlScene)

    def deviceMessage(self) -> str:
        try:
            return self.core.backend.device_message()
        except Exception as exc:  # noqa: BLE001
            return _("Server not reachable: {0}").format(exc)

    def shutdown(self) -> None:
        if self._core is not None:
            self._core.backend.stop()


#
# Test: the bodies are in RADASegmentationLib.selftest (shared with pytest on slicer-core)
#

class RADASegmentationTest(ScriptedLoadableModuleTest):
    """Offline checks always run; a check that needs a package RADA installs on first use
    (e.g. before the user agreed to install them, or on a build machine) is skipped with a
    message saying so, never failed."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_offline_checks()
        self.setUp()
        self.test_segment_end_to_end()

    def _skipped(self, reason) -> None:
        logger.warning(reason)
        self.delayDisplay(reason)

    def test_offline_checks(self):
        from RADASegmentationLib import selftest
        for check in selftest.OFFLINE_CHECKS:
            reason = selftest.skip_reason(check)
            if reason:
                self._skipped(reason)
                continue
            self.delayDisplay(f"RADASegmentation: {check.__name__}")
            slicer.mrmlScene.Clear()
            check(slicer.mrmlScene)
        self.delayDisplay("Offline checks passed")

    def test_segment_end_to_end(self):
        from RADASegmentationLib import selftest
        reason = selftest.skip_reason(selftest.check_segment_end_to_end)
        if reason:
            self._skipped(reason)
            return
        from RADASegmentationLib.backend import Backend, BackendConfig, slicer_python
        from RADASegmentationLib.logic import SegmentationLogic
        backend = Backend(BackendConfig(device="cpu", python=slicer_python()))
        try:
            result = selftest.check_segment_end_to_end(slicer.mrmlScene, SegmentationLogic(backend))
        finally:
            backend.stop()
        self.delayDisplay(f"Segment end to end passed: Dice {result['dice']:.3f}")

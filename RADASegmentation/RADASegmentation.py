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


#
# RADASegmentation
#

class RADASegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RADA Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["RADA developers"]
        self.parent.helpText = _(
            "Paint the organ on one axial, one coronal and one sagittal slice (Segment Editor), "
            "pick the painted segment here and press Segment. The 3D result is added to the output "
            "segmentation as one undo step; the painted slices are kept exactly. "
            "Work runs in a RADA server: a local one started on demand, or a remote GPU server.")
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "RADA: barely-supervised 3D organ segmentation (ANTs propagation, Alpha-CLIP guidance, "
            "tri-view V-Nets).")


#
# Parameter node: everything needed to reproduce a case from a saved scene (no token: that
# stays in Slicer's settings).
#

@parameterNodeWrapper
class RADASegmentationParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    paintedSegmentation: vtkMRMLSegmentationNode
    paintedSegmentID: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    resultSegmentName: str = ""
    replaceResult: bool = True
    preset: Annotated[str, Choice(["fast", "full"])] = "fast"
    modelName: str = ""
    checkpointPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    serverMode: Annotated[str, Choice(["local", "remote"])] = "local"
    serverURL: str = ""


#
# Dependencies (first use, with consent)
#

def ensureDependencies(requester="RADA") -> bool:
    """torch via the PyTorch extension, the rest with pip_ensure; True when all is importable."""
    from RADASegmentationLib import dependencies  # no third-party imports in it

    problem = dependencies.torch_status()
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

    resources = dependencies.resources_dir()
    requirements = dependencies.read_requirements(resources / "requirements.txt")
    needed = dependencies.to_install(requirements)
    if needed:
        constraints = dependencies.runtime_constraints(
            resources / "constraints.txt",
            os.path.join(slicer.app.temporaryPath, "RADA", "constraints.txt"))
        pipEnsure = None
        for moduleName in ("slicer.packaging", "slicer.pydeps"):  # Slicer 5.12+ / 5.11
            try:
                module = __import__(moduleName, fromlist=["pip_ensure"])
                pipEnsure = getattr(module, "pip_ensure", None)
            except ImportError:
                continue
            if pipEnsure is not None:
                break
        if pipEnsure is not None:
            from packaging.requirements import Requirement
            pipEnsure([Requirement(r) for r in needed], constraints=str(constraints),
                      skip_packages=list(dependencies.SHIPPED), requester=requester)
        else:  # older Slicer: ask, then pip_install with the constraints
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
        self._pendingSubmit = False
        self._paintingOK = False
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onTimer)
        # Re-check the painting shortly after the user stops painting (not at every stroke).
        self._paintingTimer = qt.QTimer()
        self._paintingTimer.setSingleShot(True)
        self._paintingTimer.setInterval(700)
        self._paintingTimer.timeout.connect(self.updatePaintingStatus)
        self._observedSegmentation = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RADASegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RADASegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        settings = qt.QSettings()
        self.ui.serverTokenLineEdit.text = settings.value("RADA/ServerToken", "")
        self.ui.serverTokenLineEdit.editingFinished.connect(self.onTokenEdited)
        self.ui.paintedSegmentSelector.currentNodeChanged.connect(self.onPaintedSegmentChanged)
        self.ui.paintedSegmentSelector.currentSegmentChanged.connect(self.onPaintedSegmentChanged)
        self.ui.checkpointPathLineEdit.currentPathChanged.connect(self.onCheckpointChanged)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.refreshModelsButton.clicked.connect(self.onRefreshModels)
        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.ui.cancelButton.clicked.connect(self.onCancelButton)
        self.ui.undoButton.clicked.connect(self.onUndoButton)
        self.ui.modelComboBox.addItem(_("None (guidance off)"), "")
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        self._paintingTimer.stop()
        self.removeObservers()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
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
        self.observePainting(p.paintedSegmentation)
        remote = p.serverMode == "remote"
        self.ui.serverURLLineEdit.enabled = remote
        self.ui.serverTokenLineEdit.enabled = remote
        self.ui.checkpointPathLineEdit.enabled = not remote
        self.updatePaintingStatus()

    def observePainting(self, segmentationNode) -> None:
        if segmentationNode is self._observedSegmentation:
            return
        if self._observedSegmentation is not None:
            self.removeObserver(self._observedSegmentation, slicer.vtkSegmentation.SegmentModified,
                                self.onPaintingModified)
        self._observedSegmentation = segmentationNode
        if segmentationNode is not None:
            self.addObserver(segmentationNode, slicer.vtkSegmentation.SegmentModified, self.onPaintingModified)

    def onPaintingModified(self, caller=None, event=None) -> None:
        if self._task is None:
            self._paintingTimer.start()

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

    def onTokenEdited(self) -> None:
        qt.QSettings().setValue("RADA/ServerToken", self.ui.serverTokenLineEdit.text)

    def updatePaintingStatus(self) -> None:
        """Which slices on which axes are painted, and whether Segment can run."""
        p = self._parameterNode
        ok = False
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
        busy = self._task is not None or self._pendingSubmit
        self.ui.segmentButton.enabled = self._paintingOK and not busy
        self.ui.cancelButton.enabled = busy

    # --- actions -------------------------------------------------------------------------
    def onRefreshModels(self) -> None:
        if not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not list the server's models."), waitCursor=True):
            models = self.logic.models(self._parameterNode)
            current = self._parameterNode.modelName
            self.ui.modelComboBox.blockSignals(True)
            self.ui.modelComboBox.clear()
            self.ui.modelComboBox.addItem(_("None (guidance off)"), "")
            for name in models:
                self.ui.modelComboBox.addItem(name, name)
            self.ui.modelComboBox.blockSignals(False)
            self.updateGUIFromParameterNode()
            self.ui.deviceLabel.text = self.logic.deviceMessage()
            if current and current not in models:
                self.ui.statusLabel.text = _("Model '{0}' is not offered by the server.").format(current)

    def onSegmentButton(self) -> None:
        if not ensureDependencies():
            return
        p = self._parameterNode
        self.ui.statusLabel.text = ""
        self.ui.progressBar.value = 0
        with slicer.util.tryWithErrorDisplay(_("Could not start the RADA server."), waitCursor=False):
            self.logic.configureBackend(p)
            self.logic.backend().start_async()
            self._pendingSubmit = True
            self.ui.stageLabel.text = _("Connecting to the RADA server...")
            self._timer.start()
        self.updateButtons()

    def _submit(self) -> None:
        p = self._parameterNode
        self._pendingSubmit = False
        self.ui.deviceLabel.text = self.logic.deviceMessage()
        self._task = self.logic.submit(p)
        self.ui.stageLabel.text = _("Queued on the server")

    def onTimer(self) -> None:
        try:
            if self._pendingSubmit:
                if not self.logic.backend().poll_ready():
                    return
                self._submit()
                return
            if self._task is None:
                self._timer.stop()
                return
            task = self.logic.poll(self._task)
            self.ui.progressBar.value = int(round(100 * task.fraction))
            self.ui.stageLabel.text = f"{task.stage}: {task.message}" if task.message else task.stage
            if task.finished:
                self._timer.stop()
                self._task = None
                if task.state == "done":
                    self.logic.applyResult(task, self._parameterNode)
                    self.ui.undoButton.enabled = True
                    self.ui.progressBar.value = 100
                self.ui.statusLabel.text = task.status_line()
        except Exception as exc:
            logger.exception("RADA segmentation failed")
            self._timer.stop()
            self._task, self._pendingSubmit = None, False
            self.ui.statusLabel.text = _("Error: {0}").format(exc)
            self.ui.stageLabel.text = ""
        finally:
            self.updateButtons()

    def onCancelButton(self) -> None:
        if self._pendingSubmit:
            self._pendingSubmit = False
            self._timer.stop()
            self.ui.stageLabel.text = _("Cancelled before submitting.")
        elif self._task is not None:
            with slicer.util.tryWithErrorDisplay(_("Could not cancel the job.")):
                self.logic.cancel(self._task)
                self.ui.stageLabel.text = _("Cancelling...")
        self.updateButtons()

    def onUndoButton(self) -> None:
        if not self.logic.undo():
            self.ui.undoButton.enabled = False
        self.ui.statusLabel.text = _("Last result undone.")


#
# Logic: a thin wrapper so Slicer finds a ScriptedLoadableModuleLogic; the work is in
# RADASegmentationLib.logic.SegmentationLogic (imported lazily, after the dependencies).
#

class RADASegmentationLogic(ScriptedLoadableModuleLogic):
    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def getParameterNode(self):
        return RADASegmentationParameterNode(super().getParameterNode())

    @property
    def core(self):
        if self._core is None:
            from RADASegmentationLib.backend import Backend
            from RADASegmentationLib.logic import SegmentationLogic
            self._core = SegmentationLogic(Backend())
        return self._core

    def backend(self):
        return self.core.backend

    @staticmethod
    def settingsValues():
        from RADASegmentationLib.backend import SETTINGS_KEYS
        settings = qt.QSettings()
        return {key: settings.value(key) for key in SETTINGS_KEYS.values()}

    def configureBackend(self, p) -> None:
        from RADASegmentationLib.backend import (
            BackendConfig,
            default_data_dir,
            slicer_python,
        )
        values = self.settingsValues()
        modelsDir = values.get("RADA/ModelsFolder") or str(default_data_dir() / "models")
        config = BackendConfig.from_settings(
            values, mode=p.serverMode, url=p.serverURL, device=p.device, models_dir=modelsDir,
            python=slicer_python(), token=values.get("RADA/ServerToken") or "")
        self.core.backend.configure(config)

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
        if p.checkpointPath and p.serverMode == "local":
            model = self.core.backend.import_model(p.checkpointPath)
        if model:
            options["model"] = model
        return options

    def submit(self, p):
        return self.core.submit(p.inputVolume, p.paintedSegmentation, p.paintedSegmentID, self.options(p))

    def poll(self, task):
        return self.core.poll(task)

    def cancel(self, task) -> None:
        self.core.cancel(task)

    def applyResult(self, task, p) -> str:
        output = p.outputSegmentation or p.paintedSegmentation
        name = p.resultSegmentName
        if not name:
            segment = p.paintedSegmentation.GetSegmentation().GetSegment(p.paintedSegmentID)
            name = f"{segment.GetName() if segment else 'organ'} (RADA)"
        return self.core.apply_result(task, output, name, replace=p.replaceResult)

    def undo(self) -> bool:
        return self.core.undo(slicer.mrmlScene)

    def models(self, p) -> list:
        self.configureBackend(p)
        return self.core.backend.models()

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
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_offline_checks()
        self.setUp()
        self.test_segment_end_to_end()

    def test_offline_checks(self):
        from RADASegmentationLib import selftest
        for check in selftest.OFFLINE_CHECKS:
            self.delayDisplay(f"RADASegmentation: {check.__name__}")
            slicer.mrmlScene.Clear()
            check(slicer.mrmlScene)
        self.delayDisplay("Offline checks passed")

    def test_segment_end_to_end(self):
        from RADASegmentationLib import selftest
        from RADASegmentationLib.backend import Backend, BackendConfig, slicer_python
        from RADASegmentationLib.logic import SegmentationLogic
        backend = Backend(BackendConfig(device="cpu", python=slicer_python()))
        try:
            result = selftest.check_segment_end_to_end(slicer.mrmlScene, SegmentationLogic(backend))
        finally:
            backend.stop()
        self.delayDisplay(f"Segment end to end passed: Dice {result['dice']:.3f}")

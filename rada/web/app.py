"""``rada web``: RADA in the browser on Slicer's own views (trame-slicer).

Three slice views and a 3D view rendered server-side by Slicer's core (MRML displayable
managers, as in the desktop application), the Segment Editor's Paint/Erase port of
trame-slicer, and one toolbar: open a volume, paint/erase with a brush size, Segment with a
preset (progress, Cancel), Undo, Save. The work is :class:`rada.web.session.WebSession`,
i.e. RADASegmentation's own Qt-free logic talking to a ``rada serve`` through the one client.

trame, trame-slicer, slicer-core and RADASegmentationLib (the ``web`` extra) are imported
where they are used: ``rada.web`` imports without them, and ``rada web`` names the missing extra.

State names all start with ``rada_`` (a trame state variable named like a JavaScript keyword,
e.g. ``case``, blanks the page).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rada.errors import InputError
from rada.web.session import SAVE_SUFFIXES, SessionConfig, WebSession, import_module_logic

#: Brush diameter in mm (absolute: the same stroke paints the same voxels at any zoom).
BRUSH_MM = (1.0, 30.0, 6.0)
POLL_S = 0.25
PAINTING_CHECK_DELAY_S = 0.3
STROKES_UNDO_LIMIT = 200


@dataclass(frozen=True)
class WebConfig:
    """How ``rada web`` serves its page and where it segments.

    Attributes:
        image: a volume to open at start ("" = open one from the page).
        host: the page's address (loopback by default).
        port: the page's port (0 = any free port).
        session: the RADA server to use (default: a local ``rada serve`` with a fresh token).
        page_token: required as ``?token=...`` on the page URL (empty: a random one is made).
        save_dir: the folder the Save button writes into (default: the image's folder or cwd).
    """

    image: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    session: SessionConfig = SessionConfig()
    page_token: str = ""
    save_dir: str = ""


def _backend(config: SessionConfig) -> Any:
    from RADASegmentationLib.backend import Backend, BackendConfig

    if config.server_url:
        return Backend(BackendConfig(mode="remote", url=config.server_url, token=config.token))
    return Backend(BackendConfig(mode="local", device=config.device))


def rada_layout() -> Any:
    """Axial | 3D over coronal | sagittal (the page lists the views in this order)."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    row = LayoutDirection.Horizontal
    return Layout(LayoutDirection.Vertical, [
        Layout(row, [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.threed_view()]),
        Layout(row, [ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()])])


class RadaWebApp:
    """The trame-slicer application: views, toolbar, and the session behind them.

    Args:
        config: see :class:`WebConfig`.
        server: a trame server (default: a new one).
    """

    def __init__(self, config: WebConfig, server: Any = None):
        import_module_logic()
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from undo_stack import UndoStack

        self.config = config
        # a leading letter: the page parses URL values that look like numbers as numbers
        self.token = config.page_token or "t" + secrets.token_urlsafe(16)
        self.server = get_server(server, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout("RADA", rada_layout())
        self.layout_manager.set_layout("RADA")
        self.editor = self.slicer_app.segmentation_editor
        self.strokes = UndoStack(undo_limit=STROKES_UNDO_LIMIT)
        self.editor.set_undo_stack(self.strokes)
        self.session = WebSession(self.slicer_app.scene, _backend(config.session))
        self._job: asyncio.Task | None = None  # the running Segment (a reference keeps it alive)
        self._strokes_at_result: int | None = None   # stroke-stack position when the result came
        self._upload_dir = tempfile.TemporaryDirectory(prefix="rada-web-")
        self._init_state()
        self._build_ui()
        self.state.change("rada_tool")(self._on_tool)
        self.state.change("rada_brush")(self._on_brush)
        self.state.change("rada_upload")(self._on_upload)
        self.server.controller.on_server_exited.add(self._shutdown)
        self._observe_cursor()
        self._painting_refresh: asyncio.TimerHandle | None = None
        self.editor.segmentation_modified.connect(self._schedule_painting_refresh)

    # --- state and UI ---------------------------------------------------------------------
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "RADA"
        s.rada_loaded = False
        s.rada_busy = False
        s.rada_tool = "paint"
        s.rada_brush = BRUSH_MM[2]
        s.rada_preset = self.config.session.preset
        s.rada_progress = 0.0
        s.rada_status = "Open a volume to start."
        s.rada_painting = ""
        s.rada_error = ""
        s.rada_path = self.config.image
        s.rada_save_name = "rada_result.seg.nrrd"
        s.rada_upload = None
        s.rada_cursor = ""

    def _build_ui(self) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v
        from trame_vuetify.ui.vuetify3 import SinglePageLayout

        dense = {"density": "compact", "hide_details": True}
        with SinglePageLayout(self.server, full_height=True) as layout:
            layout.title.set_text("RADA")
            layout.toolbar.density = "compact"
            with layout.toolbar:
                v.VTextField(v_model=("rada_path",), label="volume file or DICOM folder (on the server)",
                             style="max-width: 360px", id="rada-path", **dense)
                v.VBtn("Open", click=self.ctrl.rada_open, disabled=("rada_busy",), id="rada-open")
                v.VFileInput(v_model=("rada_upload",), label="or upload a file", style="max-width: 220px",
                             id="rada-upload", prepend_icon="mdi-upload", **dense)
                v.VSpacer()
                v.VTextField(v_model=("rada_save_name",), label="save as (.seg.nrrd, .nii.gz, ...)",
                             style="max-width: 240px", id="rada-save-name", **dense)
                v.VBtn("Save", click=self.ctrl.rada_save, disabled=("rada_busy || !rada_loaded",), id="rada-save")
            with layout.content:
                with html.Div(style="display: flex; flex-direction: column; height: 100%;"):
                    with html.Div(style="display: flex; align-items: center; gap: 8px; padding: 4px 8px;"):
                        with v.VBtnToggle(v_model=("rada_tool",), density="compact", mandatory=True,
                                          variant="outlined", divided=True):
                            v.VBtn("Paint", value="paint", id="rada-paint")
                            v.VBtn("Erase", value="erase", id="rada-erase")
                            v.VBtn("Look", value="none", id="rada-look")
                        v.VSlider(v_model=("rada_brush",), min=BRUSH_MM[0], max=BRUSH_MM[1], step=0.5,
                                  label=("`brush ${rada_brush} mm`",), style="max-width: 280px",
                                  id="rada-brush", **dense)
                        v.VSelect(v_model=("rada_preset",), items=("['fast', 'full']",), label="preset",
                                  style="max-width: 110px", id="rada-preset", **dense)
                        v.VBtn("Segment", click=self.ctrl.rada_segment, color="primary",
                               disabled=("rada_busy || !rada_loaded",), id="rada-segment")
                        v.VBtn("Cancel", click=self.ctrl.rada_cancel, disabled=("!rada_busy",), id="rada-cancel")
                        v.VBtn("Undo", click=self.ctrl.rada_undo, disabled=("rada_busy || !rada_loaded",),
                               id="rada-undo")
                    v.VProgressLinear(model_value=("rada_progress * 100",), active=("rada_busy",), height=4)
                    # fixed-height lines: text appearing must not move the views under the brush
                    line = "padding: 0 8px; height: 19px; overflow: hidden; white-space: nowrap; font-size: 13px;"
                    html.Div("{{ rada_status }}", id="rada-status", style=line)
                    html.Div("{{ rada_painting }}", id="rada-painting", style=line)
                    with html.Div(style=line):
                        html.Span("{{ rada_error }}", id="rada-error", style="color: #d33; margin-right: 12px;")
                        html.Span("{{ rada_cursor }}", id="rada-cursor")
                    with html.Div(style="flex: 1; position: relative;", id="rada-views"):
                        self.layout_manager.initialize_layout_grid(layout)
        self.ctrl.rada_open = self.open_path
        self.ctrl.rada_segment = self.segment
        self.ctrl.rada_cancel = self.cancel
        self.ctrl.rada_undo = self.undo
        self.ctrl.rada_save = self.save
        self.ui = layout

    # --- actions --------------------------------------------------------------------------
    def _report(self, error: Exception | str | None = None, status: str | None = None) -> None:
        with self.state:
            self.state.rada_error = str(error) if error else ""
            if status is not None:
                self.state.rada_status = status

    def open_path(self, path: str | None = None) -> bool:
        """Open a volume (any format ``rada`` reads; a DICOM folder) and show it everywhere."""
        path = path or self.state.rada_path
        if self.state.rada_busy:
            return False
        try:
            if not path:
                raise InputError("type the path of a volume (or DICOM folder), or upload a file")
            node = self.session.load(path)
        except InputError as exc:
            self._report(exc)
            return False
        self._show(node)
        return True

    def _show(self, node: Any) -> None:
        # The volume in the slice views; in 3D only the segments (volume rendering of an MR
        # is noise around the structure).
        self.slicer_app.display_manager.show_volume_in_slice_background(node)
        self.slicer_app.display_manager.reset_views()
        seg = self.session.segmentation_node
        self.editor.set_active_segmentation(seg, node)
        self.editor.set_active_segment_id(self.session.painted_id)
        for view in self.slicer_app.view_manager.get_threed_views():
            # trame-slicer turns depth peeling on; with software rendering a segment whose
            # 3D opacity is below 1 then disappears.
            view.renderer().SetUseDepthPeeling(False)
        self._on_tool(self.state.rada_tool)
        self.strokes.clear()  # set_active_segmentation clears it too; strokes of another volume never apply
        self._strokes_at_result = None
        with self.state:
            self.state.rada_loaded = True
            self.state.rada_error = ""
            self.state.rada_status = (f"Loaded {node.GetName()}. Paint the structure on one slice of each "
                                      f"view, then press Segment.")
        self._refresh_painting()

    def _observe_cursor(self) -> None:
        """Show the voxel under the mouse (Slicer's Data Probe, in one line)."""
        from slicer import vtkMRMLCrosshairNode

        crosshair = self.slicer_app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            crosshair.AddObserver(vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._on_cursor)

    def _on_cursor(self, crosshair: Any, _event: Any) -> None:
        import vtk  # lazy: the web extra (module docstring)

        node = self.session.volume_node
        ras = [0.0, 0.0, 0.0]
        if node is None or not crosshair.GetCursorPositionRAS(ras):
            return
        matrix = vtk.vtkMatrix4x4()
        node.GetRASToIJKMatrix(matrix)
        ijk = matrix.MultiplyPoint([*ras, 1.0])[:3]
        dims = node.GetImageData().GetDimensions()
        index = [int(np.floor(c + 0.5)) for c in ijk]
        inside = all(0 <= i < d for i, d in zip(index, dims))
        value = node.GetImageData().GetScalarComponentAsDouble(*index, 0) if inside else None
        text = "IJK ({:.1f}, {:.1f}, {:.1f})".format(*ijk) + (f" = {value:g}" if inside else " outside")
        with self.state:
            self.state.rada_cursor = text

    def _on_upload(self, rada_upload: Any = None, **_: Any) -> None:
        if not rada_upload:
            return
        files = rada_upload if isinstance(rada_upload, list) else [rada_upload]
        info = files[0]
        name = Path(str(info.get("name", "upload"))).name or "upload"
        target = Path(self._upload_dir.name) / name
        target.write_bytes(info["content"])
        self.open_path(str(target))

    def _on_tool(self, rada_tool: str = "paint", **_: Any) -> None:
        from trame_slicer.segmentation import SegmentationEffectErase, SegmentationEffectPaint

        if self.session.volume_node is None:
            return
        if rada_tool == "paint":
            self.editor.set_active_effect_type(SegmentationEffectPaint)
        elif rada_tool == "erase":
            self.editor.set_active_effect_type(SegmentationEffectErase)
        else:
            self.editor.deactivate_effect()
        self._on_brush(self.state.rada_brush)

    def _on_brush(self, rada_brush: float = BRUSH_MM[2], **_: Any) -> None:
        from trame_slicer.segmentation.paint_effect_parameters import BrushDiameterMode

        effect = self.editor.active_effect
        if effect is not None and hasattr(effect, "set_brush_diameter"):
            effect.set_brush_diameter(float(rada_brush), BrushDiameterMode.Absolute)

    def _schedule_painting_refresh(self, *_: Any) -> None:
        """Re-check the painting shortly after a stroke (a check exports the segment, so a burst
        of strokes is checked once; every stroke is followed by a check that sees it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop yet (loading at start-up): check now
            self._refresh_painting()
            return
        if self._painting_refresh is None:
            self._painting_refresh = loop.call_later(PAINTING_CHECK_DELAY_S, self._refresh_painting)

    def _refresh_painting(self) -> None:
        self._painting_refresh = None
        if self.session.volume_node is None:
            return
        painting = self.session.painting()
        text = (f"Painted slices - {painting.summary()} ({painting.painted_voxels} voxels, "
                f"{self.strokes.index()} strokes)")
        if not painting.ok:
            text += f" | {painting.error}"
        with self.state:
            self.state.rada_painting = text

    def segment(self) -> None:
        """Start Segment on what is painted (progress and Cancel while it runs)."""
        if self.state.rada_busy:
            return
        self._refresh_painting()
        try:
            task = self.session.prepare(self.state.rada_preset)
        except InputError as exc:
            self._report(exc)
            return
        with self.state:
            self.state.rada_busy = True
            self.state.rada_progress = 0.0
            self.state.rada_error = ""
            self.state.rada_status = "Sending the volume and the painting to the server..."
        self._job = asyncio.get_event_loop().create_task(self._run(task))

    async def _run(self, task: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.session.send, task)
            while not task.finished:
                await loop.run_in_executor(None, self.session.poll, task)
                with self.state:
                    self.state.rada_progress = float(task.fraction)
                    self.state.rada_status = task.status_line()
                if not task.finished:
                    await asyncio.sleep(POLL_S)
            if task.state == "done":
                self.session.apply(task)
                self._strokes_at_result = self.strokes.index()
                for view in self.slicer_app.view_manager.get_threed_views():
                    view.fit_view_to_content()
            self._report(None, task.status_line())
        except Exception as exc:  # noqa: BLE001 - shown on the page; the app keeps running
            self._report(f"Segment failed: {exc}")
        finally:
            with self.state:
                self.state.rada_busy = False
                self.state.rada_progress = 0.0
            self._refresh_painting()

    def cancel(self) -> None:
        """Cancel the running job (it stops at the server's next check)."""
        try:
            if self.session.cancel():
                self._report(None, "Cancelling...")
        except Exception as exc:  # noqa: BLE001
            self._report(exc)

    def undo(self) -> None:
        """Undo the newest change: the last result if no stroke came after it, else the last stroke."""
        result_is_newest = self._strokes_at_result is not None and self.strokes.index() <= self._strokes_at_result
        if self.session.can_undo and result_is_newest:
            self.session.undo()
            self._strokes_at_result = None
            self._report(None, "Result undone (the painting is kept).")
        elif self.strokes.can_undo():
            self.strokes.undo()
            self._report(None, "Stroke undone.")
        else:
            self._report(None, "Nothing to undo.")
        self._refresh_painting()

    def save(self) -> None:
        """Save into the save folder under the typed name (.seg.nrrd: painting and result)."""
        name = Path(str(self.state.rada_save_name or "")).name
        if not name.lower().endswith(SAVE_SUFFIXES):
            self._report(f"save as one of {', '.join(SAVE_SUFFIXES)}")
            return
        folder = Path(self.config.save_dir or (Path(self.config.image).parent if self.config.image else "."))
        try:
            written = self.session.save(folder / name)
        except (InputError, OSError) as exc:
            self._report(exc)
            return
        self._report(None, f"Saved {written}")

    # --- lifetime -------------------------------------------------------------------------
    def _shutdown(self, **_: Any) -> None:
        self.session.clear()
        self.session.logic.backend.stop()
        self._upload_dir.cleanup()

    @property
    def url(self) -> str:
        """The page's address with its token (valid once the server listens)."""
        return f"http://{self.config.host}:{self.server.port}/?secret={self.token}"

    def start(self) -> None:
        """Serve the page until interrupted (blocks); prints the URL with its token once listening.

        trame reads its options from the command line unless TRAME_ARGS is set: set it, so
        ``rada web``'s own arguments are not taken for trame's, and so the websocket (every
        action and every rendered frame) requires the token (wslink's authKey)."""
        if self.config.image and not self.open_path(self.config.image):
            raise InputError(self.state.rada_error)
        os.environ["TRAME_ARGS"] = f"--authKey {self.token} --timeout 0"
        self.server.controller.on_server_ready.add(
            lambda **_: print(f"RADA web: open {self.url}", file=sys.stderr, flush=True))
        self.server.start(host=self.config.host, port=self.config.port, open_browser=False,
                          show_connection_info=False, timeout=0)


def run(config: WebConfig) -> int:
    """``rada web``: build the app and serve it until interrupted.

    Args:
        config: the page's address, the image to open, where to segment and save.

    Returns:
        The exit code (0).
    """
    RadaWebApp(config).start()
    return 0

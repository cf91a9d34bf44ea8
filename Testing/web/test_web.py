"""`rada web`: the session logic on slicer-core, the CLI's checks, and the page in headless Chromium.

The browser test is the whole user path on a real LA case cropped to the atrium: paint one
stroke-filled cross-section on each slice view with mouse drags, Segment (Dice against the
manual label), Cancel a running job, Undo, Save; a screenshot of each step is kept in
``bench/out/web_e2e/`` (git-ignored) and in the test's tmp folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_helpers import new_scene, require_slicer_core

require_slicer_core()
pytest.importorskip("trame_slicer", reason="trame-slicer not installed (pip install \"rada[web]\")")

import web_helpers as web  # noqa: E402

from rada.cli import main  # noqa: E402
from rada.errors import InputError  # noqa: E402
from rada.io import read_segmentation, read_volume  # noqa: E402
from rada.metrics import dice  # noqa: E402
from rada.web.app import BRUSH_MM  # noqa: E402

from repo_paths import REPO  # noqa: E402
ARTIFACTS = REPO / "bench" / "out" / "web_e2e"


@pytest.fixture(scope="module")
def la_case(la_dir, la_case_ids, tmp_path_factory):
    folder = tmp_path_factory.mktemp("la_web")
    image_path, truth = web.la_crop(la_dir, la_case_ids[0], folder)
    return image_path, truth


@pytest.fixture(scope="module")
def local_backend():
    from RADASegmentationLib.backend import Backend, BackendConfig

    backend = Backend(BackendConfig(device="cpu", start_timeout_s=90))
    yield backend
    backend.stop()


def _paint_largest_slices(session, truth):
    from RADASegmentationLib import mrml

    from rada.annotation import SparseAnnotation

    sparse = SparseAnnotation.from_dense(truth)
    painted = (sparse.array == 1).astype(np.uint8)
    mrml.set_segment_mask(session.segmentation_node, session.painted_id, truth.with_array(painted))
    return sparse


def _run(session, task, timeout_s=120):
    session.send(task)
    deadline = time.monotonic() + timeout_s
    while not session.poll(task).finished:
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.1)
    return task


def test_session_segments_undoes_and_saves_on_the_volume_grid(la_case, local_backend, tmp_path):
    from rada.web.session import PAINTED_NAME, RESULT_NAME, WebSession

    image_path, truth = la_case
    session = WebSession(new_scene(), local_backend)
    session.load(image_path)
    with pytest.raises(InputError, match="nothing is painted"):
        session.prepare()
    sparse = _paint_largest_slices(session, truth)
    assert session.painting().ok and session.painting().slices == sparse.slices()

    task = _run(session, session.prepare("fast", "cpu"))
    assert task.state == "done", task.error
    session.apply(task)
    result_id = session.result_id()
    result = session.mask(result_id)
    assert result.grid_mismatch(read_volume(image_path), tol=1e-9) is None
    assert dice(result.array > 0, truth.array > 0) > 0.8
    assert session.segmentation_node.GetSegmentation().GetSegment(result_id).GetRepresentation(
        "Closed surface") is not None, "no 3D surface for the result"

    saved = read_segmentation(session.save(tmp_path / "out.seg.nrrd"))
    assert [s.name for s in saved.segments] == [PAINTED_NAME, RESULT_NAME]
    assert saved.reference.grid_mismatch(truth, tol=1e-6) is None
    np.testing.assert_array_equal(saved.segments[1].mask, result.array > 0)
    np.testing.assert_array_equal(saved.segments[0].mask, sparse.array == 1)
    label = read_volume(session.save(tmp_path / "out.nii.gz"))
    assert label.grid_mismatch(truth, tol=1e-5) is None
    np.testing.assert_array_equal(label.array > 0, result.array > 0)

    assert session.undo() and session.result_id() is None
    assert session.painting().slices == sparse.slices(), "undo must keep the painting"
    with pytest.raises(InputError, match="no result to save"):
        session.save(tmp_path / "again.nii.gz")
    with pytest.raises(InputError, match="save as one of"):
        session.save(tmp_path / "out.png")


def test_a_second_segment_while_one_runs_is_refused(la_case, local_backend):
    from rada.web.session import WebSession

    image_path, truth = la_case
    session = WebSession(new_scene(), local_backend)
    session.load(image_path)
    _paint_largest_slices(session, truth)
    task = session.prepare("fast", "cpu")
    with pytest.raises(InputError, match="already running"):
        session.prepare("fast", "cpu")
    assert session.cancel() and task.state == "cancelled"  # cancelled before it was sent
    session.load(image_path)  # a new volume forgets the old job and painting
    assert session.painting().painted_voxels == 0


@pytest.mark.parametrize("argv, message", [
    (["web", "no/such/volume.nrrd"], "no such file"),
    (["web", "--token-file", "t.txt"], "--token-file goes with --server"),
    (["web", "--port", "70000"], "--port must be"),
    (["web", "--save-dir", "no/such/folder"], "is not a folder"),
])
def test_cli_refuses_bad_arguments_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_browser_paint_segment_cancel_undo_save(la_case, tmp_path):
    """The user's path in headless Chromium against `rada web` (its own local `rada serve`)."""
    reason = web.chromium_available()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    image_path, truth = la_case
    shots = tmp_path / "screenshots"
    shots.mkdir()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    app = web.start_web(image_path, tmp_path, tmp_path / "web.log")
    timings["start rada web"] = time.monotonic() - t0
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=web.CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def shot(name: str) -> None:
                page.screenshot(path=str(shots / f"{name}.png"))

            t = time.monotonic()
            page.goto(app.url)
            web.wait_text(page, "#rada-status", "Loaded la_crop", 30)
            page.wait_for_function(web.FOUR_VIEWS_DRAWN, timeout=30_000)
            timings["page load to four views"] = time.monotonic() - t
            shot("1_loaded")

            t = time.monotonic()
            page.click("#rada-look")
            views = page.locator("img.image-display-area")
            maps = {name: web.calibrate(page, views.nth(i).bounding_box()) for name, i in web.SLICE_VIEWS.items()}
            assert {m.fixed_axis for m in maps.values()} == {0, 1, 2}
            timings["calibrate (hover readout)"] = time.monotonic() - t
            t = time.monotonic()
            page.click("#rada-paint")
            brush_mm = BRUSH_MM[2]  # the page's default brush
            sections, strokes = {}, 0
            for name, view in maps.items():
                sections[name] = web.cross_section(truth, view)
                strokes += web.stroke_fill(page, sections[name], view, brush_voxels=brush_mm / truth.spacing[0])
            painting = web.wait_strokes_drawn(page, strokes)
            timings["paint 3 views (strokes until drawn)"] = time.monotonic() - t
            shot("2_painted")
            for name, view in maps.items():
                assert f"({'IJK'[view.fixed_axis]}): {view.slice_index}" in painting, painting

            # Cancel a slow job (the 'full' preset runs ANTs propagation).
            web.choose(page, "#rada-preset", "full")
            t = time.monotonic()
            page.click("#rada-segment")
            web.wait_text(page, "#rada-status", r"^(?!Sending).+", 30)
            page.click("#rada-cancel")
            web.wait_text(page, "#rada-status", "Cancelled", 60)
            timings["Segment (full) then Cancel"] = time.monotonic() - t
            shot("3_cancelled")

            web.choose(page, "#rada-preset", "fast")
            t = time.monotonic()
            page.click("#rada-segment")
            status = web.wait_text(page, "#rada-status", "^Done|^Failed", 120)
            assert status.startswith("Done"), status
            # 'Done' is shown once the result segment and its 3D surface are in the scene
            timings["Segment (fast): click to result in scene"] = time.monotonic() - t
            time.sleep(1.0)  # every view has its new frame
            shot("4_result")

            page.fill("#rada-save-name", "result.seg.nrrd")
            page.click("#rada-save")
            web.wait_text(page, "#rada-status", "Saved", 30)
            saved = read_segmentation(tmp_path / "result.seg.nrrd")
            names = [s.name for s in saved.segments]
            assert names == ["organ", "organ (RADA)"], names
            assert saved.reference.grid_mismatch(truth, tol=1e-6) is None
            painted, result = saved.segments[0].mask, saved.segments[1].mask
            score = dice(result, truth.array > 0)
            assert score > 0.75, f"Dice {score:.3f} of the browser-painted result against the manual label"
            for name, view in maps.items():  # each painted cross-section matches the stroked truth
                got = web.cross_section(saved.reference.with_array(painted), view)
                assert dice(got, sections[name]) > 0.8, (name, dice(got, sections[name]))

            page.click("#rada-undo")
            web.wait_text(page, "#rada-status", "Result undone", 30)
            page.fill("#rada-save-name", "after_undo.seg.nrrd")
            page.click("#rada-save")
            web.wait_text(page, "#rada-status", "Saved .*after_undo", 30)
            after = read_segmentation(tmp_path / "after_undo.seg.nrrd")
            assert [s.name for s in after.segments] == ["organ"]
            np.testing.assert_array_equal(after.segments[0].mask, painted)
            # Undo again: now the last stroke goes (the painted voxel count drops).
            voxels = web.painted_voxels(painting)
            page.click("#rada-undo")
            web.wait_text(page, "#rada-status", "Stroke undone", 30)
            later = web.wait_stable(page, "#rada-painting", r"voxels", settle_s=1.0, timeout_s=30)
            assert 0 < web.painted_voxels(later) < voxels, (painting, later)
            assert web.stroke_count(later) == web.stroke_count(painting) - 1, (painting, later)
            shot("5_undone")
            browser.close()
    finally:
        app.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copyfile(png, ARTIFACTS / png.name)
    timings["total"] = time.monotonic() - t0
    print("\n" + "\n".join(f"{k:<40} {v:6.1f} s" for k, v in timings.items()) + f"\nDice {score:.3f}")

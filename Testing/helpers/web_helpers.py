"""Driving `rada web` like a user: a real LA crop, a subprocess app, mouse strokes in Chromium.

The page shows the voxel under the mouse ("IJK (i, j, k) = value"); the test reads it to
learn where each slice view shows which voxels (two hovers per screen axis), then paints
the truth's cross-section on the shown slice with horizontal mouse drags, as a user fills a
region with a brush.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rada.io import read_volume, write_volume
from rada.volume import Volume

CHROMIUM = os.environ.get("RADA_CHROMIUM", "/usr/bin/chromium")
#: Page views in DOM order (rada.web.app.rada_layout): axial, 3D, coronal, sagittal.
SLICE_VIEWS = {"axial": 0, "coronal": 2, "sagittal": 3}
#: True once the four views show a rendered frame each.
FOUR_VIEWS_DRAWN = ("() => { const v = document.querySelectorAll('img.image-display-area'); "
                    "return v.length == 4 && Array.from(v).every(i => i.complete && i.naturalWidth > 0 "
                    "&& i.getBoundingClientRect().height > 0); }")
IJK = re.compile(r"IJK \(([-\d.]+), ([-\d.]+), ([-\d.]+)\)")


def la_crop(la_dir: Path, case_id: str, folder: Path, margin: int = 4) -> tuple[Path, Volume]:
    """A real LA case cropped to its atrium (+margin), with a non-zero origin; (image path, truth)."""
    image = read_volume(la_dir / case_id / "image.nii.gz")
    label = read_volume(la_dir / case_id / "label.nii.gz")
    where = np.nonzero(label.array)
    box = tuple(slice(max(int(a.min()) - margin, 0), int(a.max()) + margin + 1) for a in where)
    origin = (10.0, -20.0, 5.0)  # geometry must survive the round trip through the page

    def crop(v: Volume) -> Volume:
        return Volume(np.ascontiguousarray(v.array[box]), v.spacing, origin, v.direction)

    path = folder / "la_crop.nrrd"
    write_volume(crop(image), path)
    return path, crop(label)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WebProcess:
    """`rada web IMAGE` running as a subprocess; ``url`` carries the page token."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_web(image: Path, save_dir: Path, log: Path, timeout_s: float = 60.0) -> WebProcess:
    """Start ``rada web`` on a free loopback port and wait for the URL it prints."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = log.open("w")
    process = subprocess.Popen([sys.executable, "-m", "rada.cli", "web", str(image), "--port", str(free_port()),
                                "--device", "cpu", "--save-dir", str(save_dir)],
                               stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"open (http://127\.0\.0\.1:\d+/\?secret=\S+)", log.read_text(errors="replace"))
        if found:
            return WebProcess(process, found.group(1), log)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"rada web did not start:\n{log.read_text(errors='replace')[-3000:]}")


def chromium_available() -> str | None:
    """None when Playwright and Chromium are there, else why the browser test cannot run."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install \"rada[test]\")"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set RADA_CHROMIUM)"
    return None


def read_cursor(page) -> np.ndarray:
    text = page.inner_text("#rada-cursor")
    found = IJK.search(text)
    assert found, f"no cursor readout: {text!r}"
    return np.array([float(g) for g in found.groups()])


def hover(page, x: float, y: float) -> np.ndarray:
    """Move the mouse there and read the voxel the page then says is under it (the readout
    comes back over the websocket: wait for it to change, then to settle)."""
    before = page.inner_text("#rada-cursor")
    page.mouse.move(x, y)
    deadline = time.monotonic() + 5
    text = before
    while time.monotonic() < deadline and text == before:
        time.sleep(0.05)
        text = page.inner_text("#rada-cursor")
    while time.monotonic() < deadline:
        time.sleep(0.15)
        settled = page.inner_text("#rada-cursor")
        if settled == text:
            break
        text = settled
    return read_cursor(page)


@dataclass
class ViewMap:
    """Screen <-> voxel for one slice view: which IJK axis each screen axis moves, and how."""

    fixed_axis: int           # IJK axis constant in the view (the slice)
    slice_index: int
    x_axis: int
    y_axis: int
    x0: float                 # screen x of IJK coordinate 0 on x_axis
    x_per_voxel: float
    y0: float
    y_per_voxel: float

    def screen(self, ijk_x: float, ijk_y: float) -> tuple[float, float]:
        return self.x0 + ijk_x * self.x_per_voxel, self.y0 + ijk_y * self.y_per_voxel


def calibrate(page, box: dict, tries: int = 3) -> ViewMap:
    """Hovers inside a view: the voxel axes its screen x and y run along, and the scale.

    The readout must come back the same when the mouse returns to the first point (queued
    events, e.g. the last strokes, are then all processed); else it tries again."""
    px = [box["x"] + box["width"] * f for f in (0.4, 0.6)]
    py = [box["y"] + box["height"] * f for f in (0.4, 0.6)]
    for _ in range(tries):
        a = hover(page, px[0], py[0])
        b = hover(page, px[1], py[0])
        c = hover(page, px[0], py[1])
        if np.allclose(hover(page, px[0], py[0]), a) and len({tuple(a), tuple(b), tuple(c)}) == 3:
            break
    else:
        raise AssertionError(f"cursor readout did not follow the mouse: {a}, {b}, {c}")
    x_axis, y_axis = int(np.argmax(np.abs(b - a))), int(np.argmax(np.abs(c - a)))
    fixed = ({0, 1, 2} - {x_axis, y_axis}).pop()
    sx = (px[1] - px[0]) / (b[x_axis] - a[x_axis])
    sy = (py[1] - py[0]) / (c[y_axis] - a[y_axis])
    return ViewMap(fixed, int(round(a[fixed])), x_axis, y_axis, px[0] - a[x_axis] * sx, sx,
                   py[0] - a[y_axis] * sy, sy)


def cross_section(truth: Volume, view: ViewMap) -> np.ndarray:
    """The truth on the view's slice as [ijk_y, ijk_x] (numpy arrays are [k, j, i])."""
    ijk = np.transpose(truth.array > 0, (2, 1, 0))  # [i, j, k]
    section = np.take(ijk, view.slice_index, axis=view.fixed_axis)
    rest = [ax for ax in range(3) if ax != view.fixed_axis]
    return section.T if rest == [view.x_axis, view.y_axis] else section


def stroke_fill(page, section: np.ndarray, view: ViewMap, brush_voxels: float, steps: int = 6) -> int:
    """Fill a 2D mask with horizontal drags, each run shortened by the brush radius so the
    brush stays inside; rows half a brush apart. Returns the number of strokes."""
    radius = brush_voxels / 2
    strokes = 0
    rows = np.nonzero(section.any(axis=1))[0]
    for row in np.arange(rows.min() + radius * 0.7, rows.max() - radius * 0.7 + 1e-6, radius):
        line = section[int(round(row))]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            first, last = start + radius * 0.7, stop - 1 - radius * 0.7
            if last < first:  # a short run: a short drag at its middle (a drag, so the stroke counts)
                first, last = (start + stop - 1) / 2 - 0.5, (start + stop - 1) / 2 + 0.5
            x0, y0 = view.screen(first, row)
            x1, y1 = view.screen(last, row)
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x1, y1, steps=steps)
            page.mouse.up()
            strokes += 1
    return strokes


def wait_text(page, selector: str, pattern: str, timeout_s: float) -> str:
    """Wait until the element's text matches ``pattern`` (regex); returns the text."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = page.inner_text(selector)
        if re.search(pattern, text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{selector} never matched {pattern!r} within {timeout_s} s; last: {text!r}")


def wait_stable(page, selector: str, pattern: str, settle_s: float, timeout_s: float) -> str:
    """Wait until the text matches ``pattern`` and then stays the same for ``settle_s``
    (e.g. the painted voxel count once the server has drawn every queued stroke)."""
    deadline = time.monotonic() + timeout_s
    text, since = "", time.monotonic()
    while time.monotonic() < deadline:
        now = page.inner_text(selector)
        if now != text:
            text, since = now, time.monotonic()
        elif re.search(pattern, text) and time.monotonic() - since >= settle_s:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{selector} did not settle on {pattern!r} within {timeout_s} s; last: {text!r}")


def choose(page, select_id: str, item: str) -> None:
    """Pick an item of a Vuetify select as a user does: open its menu, click the item."""
    page.locator(".v-select", has=page.locator(select_id)).locator(".v-field").click()
    page.locator(".v-overlay--active .v-list-item", has_text=item).first.click()
    page.wait_for_function(f"document.querySelector('{select_id}').value == '{item}'", timeout=10_000)


def painted_voxels(painting_line: str) -> int:
    """The painted voxel count of the page's painting line ('... (10524 voxels)')."""
    found = re.search(r"\((\d+) voxels", painting_line)
    assert found, painting_line
    return int(found.group(1))


def wait_strokes_drawn(page, strokes: int, settle_s: float = 2.0, timeout_s: float = 90.0) -> str:
    """Wait until the server has drawn the strokes sent: the page's undo-step count is within
    a few of them (a stroke that adds no voxel makes no undo step) and the painting line then
    stays unchanged for ``settle_s`` (one stroke is drawn in ~0.4 s on 2 busy cores)."""
    deadline = time.monotonic() + timeout_s
    text, since = "", time.monotonic()
    while time.monotonic() < deadline:
        now = page.inner_text("#rada-painting")
        if now != text:
            text, since = now, time.monotonic()
        found = re.search(r"(\d+) strokes\)", text)
        if found and int(found.group(1)) >= strokes - 3 and time.monotonic() - since >= settle_s:
            return text
        time.sleep(0.05)
    raise AssertionError(f"the page did not draw {strokes} strokes within {timeout_s} s; last: {text!r}")


def stroke_count(painting_line: str) -> int:
    """The undoable strokes of the page's painting line ('... voxels, 29 strokes)')."""
    found = re.search(r"(\d+) strokes\)", painting_line)
    assert found, painting_line
    return int(found.group(1))

"""Helpers for the service tests: a real uvicorn server in a thread, test runners, volumes."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from rada.annotation import SparseAnnotation
from rada.service.app import bind_socket, create_app
from rada.service.manager import JobContext, JobOutput
from rada.service.settings import ServiceSettings
from rada.volume import Volume

TOKEN = "test-token-0123456789"

#: Oblique (rotation about an arbitrary axis), anisotropic, off-origin: what must survive.
_c, _s = np.cos(0.4), np.sin(0.4)
_R = np.array([[_c, -_s, 0.0], [_s, _c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(-0.7), -np.sin(-0.7)], [0.0, np.sin(-0.7), np.cos(-0.7)]])
OBLIQUE = dict(spacing=(0.7, 1.1, 2.9), origin=(-103.25, 17.125, 401.3), direction=tuple(_R.ravel()))


def ellipsoid_case(shape=(24, 24, 24), geometry: dict | None = None) -> tuple[Volume, SparseAnnotation, np.ndarray]:
    """A bright ellipsoid in noise and its 3-slice sparse annotation (the middle slice per axis)."""
    g = geometry if geometry is not None else OBLIQUE
    zz, yy, xx = np.indices(shape, dtype=float)
    c = (np.asarray(shape) - 1) / 2
    truth = ((zz - c[0]) / (shape[0] * 0.3)) ** 2 + ((yy - c[1]) / (shape[1] * 0.35)) ** 2 + \
        ((xx - c[2]) / (shape[2] * 0.25)) ** 2 <= 1
    rng = np.random.default_rng(0)
    image = Volume((100 + 100 * truth + rng.normal(0, 5, shape)).astype(np.int16), **g)
    labels = np.full(shape, 255, np.uint8)
    mid = [s // 2 for s in shape]
    labels[mid[0]] = truth[mid[0]]
    labels[:, mid[1]] = truth[:, mid[1]]
    labels[:, :, mid[2]] = truth[:, :, mid[2]]
    return image, SparseAnnotation(image.with_array(labels)), truth


class Recorder:
    """What the test runner saw: start/end times per job, cancellations, the running maximum."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, list[float]] = {}
        self.cancelled: list[str] = []
        self.running = 0
        self.max_running = 0


def make_threshold_runner(rec: Recorder):
    """A runner that does real work in steps: threshold the image slab by slab (sleeping
    ``delay`` per slab), reporting progress and checking for cancellation at every slab."""

    def run(ctx: JobContext) -> JobOutput:
        with rec.lock:
            rec.running += 1
            rec.max_running = max(rec.max_running, rec.running)
            rec.spans[ctx.job_id] = [time.monotonic()]
        try:
            steps, delay = int(ctx.options.get("steps", 8)), float(ctx.options.get("delay", 0.01))
            image = ctx.volume("image")
            annotation = SparseAnnotation(ctx.volume("annotation")).validate(image)
            if ctx.options.get("explode"):
                raise RuntimeError("boom\nsecond line")
            threshold = float(image.array[annotation.foreground()].mean() + image.array[
                annotation.known() & ~annotation.foreground()].mean()) / 2
            label = np.zeros(image.shape, np.uint8)
            for i, part in enumerate(np.array_split(np.arange(image.shape[0]), steps)):
                if ctx.cancel.is_set():
                    with rec.lock:
                        rec.cancelled.append(ctx.job_id)
                    ctx.check_cancel()
                label[part] = image.array[part] > threshold
                ctx.progress((i + 1) / steps, "threshold", f"slab {i + 1}/{steps}")
                time.sleep(delay)
            return JobOutput(image.with_array(label), {"steps": steps, "threshold": threshold})
        finally:
            with rec.lock:
                rec.running -= 1
                rec.spans[ctx.job_id].append(time.monotonic())

    run.required_inputs = ("image", "annotation")
    return run


class ServerThread:
    """uvicorn on 127.0.0.1:<free port> in a daemon thread; ``stop()`` (or the context) ends it."""

    def __init__(self, app: Any):
        import uvicorn

        self.app = app
        self.sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def start_test_server(rec: Recorder | None = None, runners: dict | None = None, **settings: Any) -> ServerThread:
    settings.setdefault("token", TOKEN)
    app = create_app(ServiceSettings(**settings),
                     runners if runners is not None else {"segment": make_threshold_runner(rec or Recorder())})
    return ServerThread(app)

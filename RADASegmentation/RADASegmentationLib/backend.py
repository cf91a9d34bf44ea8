"""Where the work runs: a local ``rada serve`` started on demand, or a remote RADA server.

The modules talk to the backend only through :class:`rada.service.client.RadaClient`. A
:class:`Backend` owns one connection: in ``local`` mode it starts ``rada serve`` on a free
loopback port with Slicer's own Python (:class:`rada.service.client.LocalServer`, a fresh
token, a private temporary folder, stopped with Slicer); in ``remote`` mode it connects to
a URL with a token from the settings. Starting a local server takes seconds, so
:meth:`Backend.start` only launches it and :meth:`Backend.poll_ready` tells the GUI timer
when it is up; :class:`ServerCalls` runs the network calls on a worker thread; scripts
just call :meth:`Backend.client`. One Backend serves both modules in a Slicer session
(RADASegmentation's logic owns it), so there is one local server at most.

The connection (mode, URL, token, models folder) lives in Slicer's settings under
:data:`SETTINGS_KEYS`, in one place for both modules: :func:`connection_config` is the only
reader. No Qt here: the modules read and write the settings and pass the values in.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from rada.errors import InputError

#: QSettings keys the modules read and write (the models list is shared by both modules).
SETTINGS_KEYS = {
    "mode": "RADA/ServerMode",            # local | remote
    "url": "RADA/ServerURL",
    "token": "RADA/ServerToken",
    "models_dir": "RADA/ModelsFolder",    # optional (default ~/.rada/models; see README)
    "last_model": "RADA/LastModel",       # set by RADATrainer when a model finishes training
}


def default_data_dir() -> Path:
    """A per-user folder for models and scene-exported datasets (no spaces needed, any OS)."""
    base = os.environ.get("RADA_HOME")
    if base:
        return Path(base)
    return Path.home() / ".rada"


@dataclass
class BackendConfig:
    mode: str = "local"                     # local | remote
    url: str = ""                           # remote only
    token: str = ""                         # remote only (local servers get a fresh token)
    device: str = "auto"                    # auto | cpu | cuda (local server's default device)
    models_dir: str | None = None           # local: trained checkpoints offered by name
    datasets_dir: str | None = None         # local: dataset folders trainable by name
    python: str | None = None               # local: the Python running `rada serve` (Slicer's)
    start_timeout_s: float = 120.0
    request_timeout_s: float = 60.0         # one HTTP request (uploads of big volumes included)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("local", "remote"):
            raise InputError(f"server mode must be 'local' or 'remote', got {self.mode!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @classmethod
    def from_settings(cls, values: dict[str, Any], **overrides: Any) -> BackendConfig:
        """From a dict keyed like :data:`SETTINGS_KEYS` (values as strings, as QSettings gives)."""
        def get(key: str, default: str = "") -> str:
            value = values.get(SETTINGS_KEYS[key], default)
            return default if value is None else str(value)

        config = cls(mode=get("mode", "local") or "local", url=get("url"), token=get("token"),
                     models_dir=get("models_dir") or None)
        return replace(config, **overrides)

    def key(self) -> tuple:
        """What a running connection depends on (a change means reconnecting)."""
        if self.mode == "remote":
            return ("remote", self.url.rstrip("/"), self.token)
        return ("local", self.device, self.models_dir, self.datasets_dir, self.python)


def connection_config(values: Mapping[str, Any], python: str | None = None,
                      datasets_dir: str | None = None) -> BackendConfig:
    """The connection both modules use, from the settings values (keys of :data:`SETTINGS_KEYS`).

    Args:
        values: settings values keyed by the ``SETTINGS_KEYS`` values (missing keys: defaults).
        python: the Python that runs a local ``rada serve`` (Slicer's).
        datasets_dir: the folder of datasets a local server may train on (RADATrainer's).

    Returns:
        The :class:`BackendConfig`; the local models folder defaults to ``~/.rada/models``.
    """
    models_dir = values.get(SETTINGS_KEYS["models_dir"]) or str(default_data_dir() / "models")
    return BackendConfig.from_settings(values, models_dir=str(models_dir), python=python, datasets_dir=datasets_dir)


def slicer_python() -> str:
    """The Python to run ``rada serve`` with: Slicer's ``PythonSlicer`` when inside Slicer."""
    exe = Path(sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = exe.with_name(name)
        if candidate.exists():
            return str(candidate)
    found = shutil.which("PythonSlicer")
    return found or sys.executable


class Backend:
    """One connection to a RADA server (local subprocess or remote); one per Slicer session.

    Nothing here blocks a GUI thread for long: :meth:`start` only launches the local process
    (``Popen``), :meth:`poll_ready` checks its ready file (one loopback ``/health`` of at most
    2 s once it is there), and :meth:`stop` is bounded. :meth:`client` waits for the server and
    is for scripts, tests and worker threads.
    """

    def __init__(self, config: BackendConfig | None = None):
        self.config = config or BackendConfig()
        self._server: Any = None              # rada.service.client.LocalServer
        self._client: Any = None              # rada.service.client.RadaClient
        self._health: dict[str, Any] | None = None
        self._lock = threading.RLock()

    # --- configuration ------------------------------------------------------------------
    def configure(self, config: BackendConfig) -> None:
        """Use ``config`` from now on; a running connection that depends on it is closed."""
        with self._lock:
            if config.key() != self.config.key():
                self.stop()
            self.config = config

    @property
    def description(self) -> str:
        if self.config.mode == "remote":
            return f"remote server {self.config.url}"
        if self._server is not None and self._server.url:
            return f"local server {self._server.url}"
        return "local server (started on demand)"

    # --- starting -----------------------------------------------------------------------
    def _connected(self) -> bool:
        return self._client is not None and (self._server is None or self._server.running)

    def start(self) -> None:
        """Begin connecting and return at once: launch the local server, or name the remote one."""
        from rada.service.client import LocalServer, RadaClient

        with self._lock:
            if self._connected() or (self._server is not None and self._server.running):
                return
            self._drop()
            cfg = self.config
            if cfg.mode == "remote":
                if not cfg.url:
                    raise InputError("no server URL: set the remote RADA server URL, or choose the local server")
                self._client = RadaClient(cfg.url, cfg.token or None, timeout=cfg.request_timeout_s)
                return
            args: list[str] = []
            if cfg.datasets_dir:
                args += ["--datasets-dir", str(cfg.datasets_dir)]
            if cfg.models_dir:
                Path(cfg.models_dir).mkdir(parents=True, exist_ok=True)
            self._server = LocalServer(python=cfg.python or sys.executable, models_dir=cfg.models_dir,
                                       device=cfg.device, extra_args=args, env=cfg.extra_env)
            self._server.launch(timeout=cfg.start_timeout_s)

    def poll_ready(self) -> bool:
        """True once connected; False while the local server starts; raises its start error."""
        with self._lock:
            if self._connected():
                return True
            if self._server is None:
                self.start()
                if self._connected():
                    return True
            try:
                ready = self._server.poll_ready()
            except BaseException:
                self._drop()
                raise
            if ready:
                self._client = self._server.client(timeout=self.config.request_timeout_s)
            return ready

    @property
    def starting(self) -> bool:
        with self._lock:
            return self._server is not None and not self._connected()

    def client(self) -> Any:
        """A connected :class:`RadaClient`, waiting for the local server if needed (blocks)."""
        while not self.poll_ready():
            time.sleep(0.1)
        return self._client

    def health(self, refresh: bool = False) -> dict[str, Any]:
        client = self.client()
        if refresh or self._health is None:
            self._health = client.health()
        return self._health

    # --- what the server offers ---------------------------------------------------------
    def models(self) -> list[str]:
        return list(self.health(refresh=True).get("models", {}).get("available", []))

    def device_message(self) -> str:
        """One line about the compute device, saying clearly when there is no GPU."""
        info = self.health().get("device", {}) or {}
        kind = str(info.get("type", "?"))
        if kind == "cuda":
            name = info.get("name") or "GPU"
            return f"{self.description}: GPU {name}"
        return (f"{self.description}: no GPU found, running on the CPU (the 'fast' preset takes seconds; "
                f"training on the CPU is slow - use a remote GPU server for it)")

    def import_model(self, checkpoint: str | os.PathLike) -> str:
        """Offer a checkpoint file to the local server by name (copied into its models folder)."""
        src = Path(checkpoint)
        if not src.is_file():
            raise InputError(f"checkpoint not found: {src}")
        if self.config.mode == "remote":
            raise InputError("a remote server only offers its own models: pick one by name")
        if not self.config.models_dir:
            raise InputError("no models folder configured for the local server")
        folder = Path(self.config.models_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in src.stem).lstrip("._-")[:60] or "model"
        target = folder / f"{name}.pt"
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            tmp = folder / f".{name}.pt.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(target)
        return name

    # --- stopping -----------------------------------------------------------------------
    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
        if self._server is not None:
            self._server.stop()
        self._server = self._client = self._health = None

    def stop(self) -> None:
        """Close the connection and stop a local server (its jobs are cancelled); bounded."""
        with self._lock:
            self._drop()


class ServerCalls:
    """Network calls for a GUI: queued until the server is ready, run one at a time on a worker
    thread, their results handed back on the caller's thread by :meth:`pump`.

    The widget's ``QTimer`` calls :meth:`pump`; nothing the GUI thread does waits on the
    network (uploads, status polls and downloads all run on the worker).
    """

    def __init__(self, backend: Backend):
        from concurrent.futures import ThreadPoolExecutor

        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rada-network")
        self._queue: list[tuple[Callable[[Any], Any], Callable[[Any], None], Callable[[BaseException], None]]] = []
        self._running: tuple[Any, Callable[[Any], None], Callable[[BaseException], None]] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._running is not None

    def call(self, work: Callable[[Any], Any], done: Callable[[Any], None],
             failed: Callable[[BaseException], None]) -> None:
        """Run ``work(client)`` on the worker once the server is up; then ``done(result)`` or
        ``failed(error)`` from the next :meth:`pump` (the GUI thread)."""
        self.backend.start()
        self._queue.append((work, done, failed))

    def pump(self) -> bool:
        """Hand back a finished call, start the next one; True while calls remain."""
        if self._running is not None:
            future, done, failed = self._running
            if not future.done():
                return True
            self._running = None
            error = future.exception()
            if error is not None:
                failed(error)
            else:
                done(future.result())
        if self._queue and self._running is None:
            try:
                ready = self.backend.poll_ready()
            except BaseException as exc:  # noqa: BLE001 - the start failed: every waiting call fails
                queued, self._queue = self._queue, []
                for _work, _done, failed in queued:
                    failed(exc)
                return False
            if ready:
                work, done, failed = self._queue.pop(0)
                client = self.backend.client()
                self._running = (self._executor.submit(work, client), done, failed)
        return self.busy

    def clear(self) -> None:
        """Forget waiting calls (a running one finishes, its result is dropped)."""
        self._queue = []
        if self._running is not None:
            future, _done, _failed = self._running
            self._running = (future, lambda _result: None, lambda _error: None)

    def shutdown(self) -> None:
        self.clear()
        self._executor.shutdown(wait=False)

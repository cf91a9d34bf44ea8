"""Where the work runs: a local ``rada serve`` started on demand, or a remote RADA server.

The modules talk to the backend only through :class:`rada.service.client.RadaClient`. A
:class:`Backend` owns one connection: in ``local`` mode it starts ``rada serve`` on a free
loopback port with Slicer's own Python (:class:`rada.service.client.LocalServer`, a fresh
token, a private temporary folder, stopped with Slicer); in ``remote`` mode it connects to
a URL with a token from the settings. Starting a local server takes seconds, so
:meth:`Backend.start_async` does it on a worker thread and :meth:`Backend.poll_ready` tells
the GUI timer when it is up; scripts just call :meth:`Backend.client`.

No Qt here: the widget reads and writes the settings (``SETTINGS_KEYS``) and passes them in.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rada.errors import InputError

#: QSettings keys the modules read and write (the models list is shared by both modules).
SETTINGS_KEYS = {
    "mode": "RADA/ServerMode",            # local | remote
    "url": "RADA/ServerURL",
    "token": "RADA/ServerToken",
    "device": "RADA/Device",
    "models_dir": "RADA/ModelsFolder",
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
                     device=get("device", "auto") or "auto", models_dir=get("models_dir") or None)
        return replace(config, **overrides)

    def key(self) -> tuple:
        """What a running connection depends on (a change means reconnecting)."""
        if self.mode == "remote":
            return ("remote", self.url.rstrip("/"), self.token)
        return ("local", self.device, self.models_dir, self.datasets_dir, self.python)


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
    """One connection to a RADA server (local subprocess or remote), thread-safe to start."""

    def __init__(self, config: BackendConfig | None = None):
        self.config = config or BackendConfig()
        self._server: Any = None              # rada.service.client.LocalServer
        self._client: Any = None              # rada.service.client.RadaClient
        self._health: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

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
    def _connect(self) -> Any:
        from rada.service.client import LocalServer, RadaClient

        cfg = self.config
        if cfg.mode == "remote":
            if not cfg.url:
                raise InputError("no server URL: set the remote RADA server URL, or choose the local server")
            client = RadaClient(cfg.url, cfg.token or None)
            health = client.health()
            return None, client, health
        args: list[str] = []
        if cfg.datasets_dir:
            args += ["--datasets-dir", str(cfg.datasets_dir)]
        if cfg.models_dir:
            Path(cfg.models_dir).mkdir(parents=True, exist_ok=True)
        server = LocalServer(python=cfg.python or sys.executable, models_dir=cfg.models_dir,
                             device=cfg.device, extra_args=args, env=cfg.extra_env)
        server.start(timeout=cfg.start_timeout_s)
        client = server.client()
        return server, client, client.health()

    def client(self) -> Any:
        """A connected :class:`RadaClient`, starting the local server first if needed (blocks)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._client is not None and (self._server is None or self._server.running):
                return self._client
            self._drop()
            self._server, self._client, self._health = self._connect()
            return self._client

    def start_async(self) -> None:
        """Start connecting on a worker thread (returns at once); see :meth:`poll_ready`."""
        with self._lock:
            if self._thread is not None or (self._client is not None and
                                            (self._server is None or self._server.running)):
                return
            self._error = None

            def work() -> None:
                try:
                    server, client, health = self._connect()
                    with self._lock:
                        self._server, self._client, self._health = server, client, health
                except BaseException as exc:  # noqa: BLE001 - handed to the GUI thread
                    with self._lock:
                        self._error = exc
                finally:
                    with self._lock:
                        self._thread = None

            self._thread = threading.Thread(target=work, name="rada-backend-start", daemon=True)
            self._thread.start()

    def poll_ready(self) -> bool:
        """True once connected; raises the start error, if any; False while still starting."""
        with self._lock:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            return self._thread is None and self._client is not None

    @property
    def starting(self) -> bool:
        with self._lock:
            return self._thread is not None

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
        """Close the connection and stop a local server (its jobs are cancelled)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            self._drop()

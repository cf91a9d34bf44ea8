"""Settings of the job server: one dataclass, filled from arguments and ``RADA_*`` variables.

Nothing here is chosen by a client: the work folder, the models and datasets folders are
the server operator's; clients only ever name jobs (by id), models and datasets (by name).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from rada.errors import InputError
from rada.safe_write import atomic_path

MIB = 1024 * 1024

#: Environment variables read by :meth:`ServiceSettings.from_env` (variable -> field).
ENV_FIELDS: dict[str, str] = {
    "RADA_TOKEN": "token",
    "RADA_HOST": "host",
    "RADA_PORT": "port",
    "RADA_MAX_UPLOAD_MB": "max_upload_bytes",
    "RADA_MAX_VOLUME_MB": "max_volume_bytes",
    "RADA_WORKERS": "max_workers",
    "RADA_MAX_QUEUED": "max_queued",
    "RADA_WORK_DIR": "work_dir",
    "RADA_MODELS_DIR": "models_dir",
    "RADA_DATASETS_DIR": "datasets_dir",
    "RADA_RESULT_TTL_S": "result_ttl_s",
    "RADA_DEVICE": "device",
}


@dataclass
class ServiceSettings:
    """Everything ``rada serve`` and :func:`rada.service.app.create_app` need."""

    host: str = "127.0.0.1"                # address to bind; 0.0.0.0 exposes the server
    port: int = 8765                       # 0 = any free port
    token: str | None = None               # None = RADA_TOKEN or a fresh random token
    token_file: Path | None = None         # where a generated token is written (mode 0600)
    health_requires_token: bool = False    # /health is open by default (no job data in it)
    max_upload_bytes: int = 1024 * MIB     # one POST /jobs request, all files together
    max_volume_bytes: int = 4096 * MIB     # one decoded volume (guards against gzip bombs)
    max_workers: int = 1                   # jobs running at once (1: one GPU, no OOM races)
    max_queued: int = 16                   # waiting jobs; more -> 503 with Retry-After
    work_dir: Path | None = None           # None = a fresh temporary folder, removed at exit
    result_ttl_s: float = 3600.0           # finished jobs and their files are kept this long
    max_finished_jobs: int = 64            # ... and at most this many of them
    models_dir: Path | None = None         # trained checkpoints, offered by name
    datasets_dir: Path | None = None       # dataset folders (dataset.json), offered by name
    device: str = "auto"                   # auto | cpu | cuda
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for runners

    def __post_init__(self) -> None:
        for name in ("token_file", "work_dir", "models_dir", "datasets_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.max_workers < 1:
            raise InputError(f"max_workers must be at least 1, got {self.max_workers}")
        if self.max_queued < 0:
            raise InputError(f"max_queued must be 0 or more, got {self.max_queued}")
        if self.max_upload_bytes < 1 or self.max_volume_bytes < 1:
            raise InputError("size limits must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "ServiceSettings":
        """Defaults, then ``RADA_*`` variables, then ``overrides``.

        Args:
            env: the environment (default: ``os.environ``); variables in :data:`ENV_FIELDS`.
            overrides: field values (command-line options); ``None`` values are skipped.

        Returns:
            The settings.

        Raises:
            InputError: a variable that should be a number is not, or a value out of range.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var, name in ENV_FIELDS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                if name in ("max_upload_bytes", "max_volume_bytes"):
                    values[name] = int(float(raw) * MIB)
                elif name in ("port", "max_workers", "max_queued"):
                    values[name] = int(raw)
                elif name == "result_ttl_s":
                    values[name] = float(raw)
                else:
                    values[name] = raw
            except ValueError:
                raise InputError(f"{var}={raw!r} is not a number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_token(self) -> "ServiceSettings":
        """A copy whose ``token`` is set: the given one, else RADA_TOKEN, else a random one.

        Returns:
            ``self`` when a token is already set, else a new :class:`ServiceSettings`.
        """
        if self.token:
            return self
        return replace(self, token=os.environ.get("RADA_TOKEN") or secrets.token_urlsafe(32))


def write_private_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by the owner only (0600 on POSIX), atomically.

    Args:
        path: the file (its missing folders are created).
        text: the content (a token, the ready file's JSON).

    Returns:
        ``path``.

    Raises:
        InputError: ``path`` cannot be written (nothing is left behind).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        # Re-create the staged file owner-only before the secret goes in: whoever opened the
        # first one (made with the umask's mode) holds an inode that never receives the text.
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
    return path

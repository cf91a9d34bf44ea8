"""The one client of the RADA job server (used by the Slicer modules, scripts and tests).

Needs only httpx and numpy/SimpleITK (no FastAPI), so it runs in Slicer's Python::

    from rada.service.client import LocalServer, RadaClient

    with LocalServer().start() as server:          # or RadaClient("https://gpu-box:8765", token)
        client = server.client()
        label, report = client.segment(image, annotation, {"preset": "fast"},
                                       progress=lambda f, stage, msg: print(f, stage, msg))

Errors: bad input (400/413 and jobs failed on input) raise :class:`rada.errors.InputError`
with the server's one-line reason; a cancelled job raises :class:`rada.errors.CancelledError`;
a wrong token :class:`AuthError`; a server speaking another protocol
:class:`ProtocolMismatchError` (saying which side to update); an unreachable server
:class:`ServerUnavailableError`; anything else :class:`ServiceError`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import httpx

from rada import __version__
from rada.annotation import SparseAnnotation
from rada.errors import CancelledError, InputError
from rada.service import PROTOCOL_HEADER, PROTOCOL_VERSION
from rada.service.codec import decode_nrrd, encode_nrrd
from rada.volume import Volume

ProgressFn = Callable[[float, str, str], None]
FINISHED = ("done", "failed", "cancelled")


class ServiceError(RuntimeError):
    """The server answered with an error (``status_code``) or misbehaved."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class AuthError(ServiceError):
    """401: missing or wrong token."""


class ProtocolMismatchError(ServiceError):
    """Client and server speak different protocol versions."""


class ServerUnavailableError(ServiceError):
    """No server answers at the URL (not started, crashed, firewall)."""


class JobFailedError(ServiceError):
    """A job failed for a reason other than bad input."""


@dataclass
class JobStatus:
    """``GET /jobs/{id}``: state is queued, running, done, failed or cancelled.

    Attributes:
        id: the job id.
        kind: the job kind (``segment``, ``train``).
        state: queued, running, done, failed or cancelled.
        stage: the current stage's name.
        fraction: progress in [0, 1].
        message: what the job is doing, or why it ended.
        error: a failed job's one-line error.
        error_type: ``input`` when the job failed on its input, else another kind or None.
        queue_position: place in the queue while queued.
        report: a finished job's report, when the server includes it.
        raw: the whole JSON answer.
    """

    id: str
    kind: str
    state: str
    stage: str
    fraction: float
    message: str
    error: str | None = None
    error_type: str | None = None
    queue_position: int | None = None
    report: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        """True when the job is done, failed or cancelled."""
        return self.state in FINISHED

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "JobStatus":
        """Parse the server's JSON status.

        Args:
            d: the decoded JSON object; ``id`` and ``state`` are required.

        Returns:
            The :class:`JobStatus`.
        """
        return cls(id=d["id"], kind=d.get("kind", ""), state=d["state"], stage=d.get("stage", ""),
                   fraction=float(d.get("fraction", 0.0)), message=d.get("message", ""), error=d.get("error"),
                   error_type=d.get("error_type"), queue_position=d.get("queue_position"),
                   report=d.get("report"), raw=dict(d))

    def raise_for_state(self) -> None:
        """Raise what a failed or cancelled job means for the caller; nothing if done."""
        if self.state == "cancelled":
            raise CancelledError(self.message or "job cancelled")
        if self.state == "failed":
            if self.error_type == "input":
                raise InputError(self.error or "bad input")
            raise JobFailedError(f"{self.kind} job failed on the server: {self.error}")


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine (127.0.0.1, localhost, ::1).

    Args:
        url: a server URL.

    Returns:
        True for a loopback host name or address.
    """
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


class RadaClient:
    """Talk to one RADA server. Thread-safe: a UI thread may ``cancel`` while another ``wait``s."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, check_protocol: bool = True,
                 compress: bool | None = None, verify: bool | str = True, transport: Any = None):
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("RADA_TOKEN", "")
        self.check_protocol = check_protocol
        # gzip costs more than it saves over loopback; across a network it pays.
        self.compress = (not is_loopback(self.url)) if compress is None else compress
        self._health: dict[str, Any] | None = None
        headers = {PROTOCOL_HEADER: str(PROTOCOL_VERSION), "User-Agent": f"rada-client/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify, transport=transport,
                                  timeout=httpx.Timeout(timeout, connect=10.0),
                                  trust_env=not is_loopback(self.url))  # no proxy for loopback

    # --- plumbing ---------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> "RadaClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, check: bool = True, **kwargs: Any) -> httpx.Response:
        if check and self.check_protocol and self._health is None:
            self.health()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailableError(f"cannot reach the RADA server at {self.url}: {exc}") from None
        self._raise_for(response)
        return response

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text.strip()[:300] or response.reason_phrase
        if not isinstance(detail, str):
            detail = json.dumps(detail)[:300]
        code = response.status_code
        if code == 401:
            raise AuthError(f"the RADA server at {self.url} refused the token ({detail}); "
                            f"check RADA_TOKEN or the server's token file", code)
        if code == 409 and "protocol" in detail:
            raise ProtocolMismatchError(detail, code)
        if code in (400, 413, 422):
            raise InputError(detail)
        if code == 503:
            raise ServiceError(f"the RADA server is busy: {detail}", code)
        raise ServiceError(f"RADA server error {code}: {detail}", code)

    # --- the API ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /health``, checking that client and server speak the same protocol.

        Returns:
            The server's health JSON (protocol, versions, limits, ...).

        Raises:
            ProtocolMismatchError: the protocols differ (the message says which side to update).
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        response = self._request("GET", "/health", check=False)
        try:
            info = response.json()
        except ValueError:
            raise ServiceError(f"{self.url} answered /health with something other than JSON: "
                               f"is it a RADA server?") from None
        server_protocol = info.get("protocol") if isinstance(info, dict) else None
        if server_protocol is None:
            raise ServiceError(f"{self.url} is not a RADA server (no protocol in /health)")
        if self.check_protocol and server_protocol != PROTOCOL_VERSION:
            newer = "server" if server_protocol > PROTOCOL_VERSION else "client"
            fix = ("update the RADA extension (and its rada package) on this computer" if newer == "server"
                   else "update rada on the server")
            raise ProtocolMismatchError(
                f"version skew: the RADA server at {self.url} (rada {info.get('rada_version', '?')}) speaks "
                f"protocol {server_protocol}, this client (rada {__version__}) speaks {PROTOCOL_VERSION}: {fix}")
        self._health = info
        return info

    def submit(self, kind: str, volumes: Mapping[str, Volume] | None = None,
               options: Mapping[str, Any] | None = None) -> str:
        """Queue a job of ``kind`` with NRRD-encoded ``volumes``.

        Args:
            kind: the job kind (``segment``, ``train``).
            volumes: upload field name -> volume.
            options: the job's options (JSON-ready).

        Returns:
            The job id.

        Raises:
            InputError: the volumes exceed the server's upload limit, or the server refuses them.
            ServiceError: any other refusal (token, protocol, queue full, unreachable).
        """
        if self.check_protocol and self._health is None:
            self.health()
        files = {name: (f"{name}.nrrd", encode_nrrd(vol, compress=self.compress), "application/octet-stream")
                 for name, vol in (volumes or {}).items()}
        limit = (self._health or {}).get("limits", {}).get("max_upload_bytes")
        total = sum(len(f[1]) for f in files.values())
        if limit and total > limit:
            raise InputError(f"the volumes are {total / 2**20:.0f} MiB, over the server's upload limit of "
                             f"{limit / 2**20:.0f} MiB")
        data = {"kind": kind, "options": json.dumps(dict(options or {}))}
        response = self._request("POST", "/jobs", data=data, files=files or None)
        return response.json()["id"]

    def submit_segment(self, image: Volume, annotation: SparseAnnotation | Volume,
                       options: Mapping[str, Any] | None = None) -> str:
        """Queue a Segment job.

        Args:
            image: the image volume.
            annotation: the sparse annotation, or its label volume (0/1/255) on the image grid.
            options: as :class:`rada.pipeline.SegmentConfig` (``preset``, ``device``, ...).

        Returns:
            The job id.

        Raises:
            InputError: the volumes exceed the upload limit, or the server refuses the input.
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        labels = annotation.labels if isinstance(annotation, SparseAnnotation) else annotation
        return self.submit("segment", {"image": image, "annotation": labels}, options)

    def submit_train(self, options: Mapping[str, Any]) -> str:
        """Queue a training job on a dataset of the server.

        Args:
            options: the training options (``dataset``, ``model_name``, ``iterations``, ...).

        Returns:
            The job id.

        Raises:
            InputError: the server refuses the options.
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        return self.submit("train", None, options)

    def status(self, job_id: str) -> JobStatus:
        """The job's current status (``GET /jobs/{id}``).

        Args:
            job_id: the job.

        Returns:
            The :class:`JobStatus`.

        Raises:
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        return JobStatus.from_json(self._request("GET", f"/jobs/{job_id}").json())

    def jobs(self) -> list[JobStatus]:
        """Every job the server keeps, newest first.

        Returns:
            One :class:`JobStatus` per job.

        Raises:
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        return [JobStatus.from_json(d) for d in self._request("GET", "/jobs").json()]

    def cancel(self, job_id: str) -> JobStatus:
        """Ask the server to stop the job (a running job stops at its next check).

        Args:
            job_id: the job.

        Returns:
            The job's status after the request.

        Raises:
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        return JobStatus.from_json(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Drop the job and its files on the server (cancelling it first if needed).

        Args:
            job_id: the job.

        Raises:
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        self._request("DELETE", f"/jobs/{job_id}")

    def report(self, job_id: str) -> dict[str, Any]:
        """A finished job's JSON report.

        Args:
            job_id: the job.

        Returns:
            The report.

        Raises:
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        return self._request("GET", f"/jobs/{job_id}/report").json()

    def result(self, job_id: str) -> tuple[Volume, dict[str, Any]]:
        """The label volume (same geometry as the submitted image) and the job's report.

        Args:
            job_id: a finished Segment job.

        Returns:
            ``(label, report)``.

        Raises:
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        response = self._request("GET", f"/jobs/{job_id}/result")
        return decode_nrrd(response.content), self.report(job_id)

    def events(self, job_id: str, after: int = 0, read_timeout: float = 60.0) -> Iterator[dict[str, Any]]:
        """The job's progress events, as a server-sent event stream.

        Args:
            job_id: the job.
            after: only events with a larger ``seq`` (to resume a dropped stream).
            read_timeout: seconds without data before the stream counts as lost.

        Yields:
            Dicts with ``seq``, ``state``, ``stage``, ``fraction``, ``message`` and ``event``; the
            last one has ``"event": "end"`` and the final status. Ends when the job has finished.

        Raises:
            ServerUnavailableError: the stream was lost.
            ServiceError: the server refused the request or cannot be reached (:class:`AuthError`,
                :class:`ProtocolMismatchError`, :class:`ServerUnavailableError`, or the HTTP status).
        """
        if self.check_protocol and self._health is None:
            self.health()
        timeout = httpx.Timeout(read_timeout, connect=10.0)
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/events", params={"after": after},
                                   timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for(response)
                name, data = "message", []
                for line in response.iter_lines():
                    if line == "":
                        if data:
                            payload = json.loads("\n".join(data))
                            payload["event"] = name
                            yield payload
                            if name == "end":
                                return
                        name, data = "message", []
                    elif line.startswith(":"):
                        continue
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except httpx.TransportError as exc:
            raise ServerUnavailableError(f"lost the progress stream from {self.url}: {exc}") from None

    def wait(self, job_id: str, progress: ProgressFn | None = None, timeout: float | None = None,
             poll_interval: float = 1.0) -> JobStatus:
        """Block until the job finishes, reporting each change.

        Survives a dropped stream by reconnecting where it left off (then by polling).
        ``cancel(job_id)`` from another thread ends it early.

        Args:
            job_id: the job.
            progress: ``progress(fraction, stage, message)`` while it runs.
            timeout: seconds before :class:`TimeoutError`; None waits for ever.
            poll_interval: base delay between reconnections after a dropped stream.

        Returns:
            The final status (call :meth:`JobStatus.raise_for_state` for failures).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last, failures = 0, 0
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")
            try:
                read_timeout = 30.0 if deadline is None else max(1.0, min(30.0, deadline - time.monotonic()))
                for event in self.events(job_id, after=last, read_timeout=read_timeout):
                    if event["event"] == "end":
                        return JobStatus.from_json(event)
                    last = max(last, int(event.get("seq", last)))
                    if progress is not None and event.get("state") == "running":
                        progress(float(event["fraction"]), str(event["stage"]), str(event["message"]))
                    failures = 0
            except ServerUnavailableError:
                failures += 1
                if failures > 5:
                    raise
                time.sleep(min(poll_interval * failures, 5.0))
            status = self.status(job_id)  # the stream ended without 'end' (proxy, restart)
            if status.finished:
                return status

    def segment(self, image: Volume, annotation: SparseAnnotation | Volume,
                options: Mapping[str, Any] | None = None, progress: ProgressFn | None = None,
                cancel: threading.Event | None = None, timeout: float | None = None,
                keep: bool = False) -> tuple[Volume, dict[str, Any]]:
        """Submit, follow, fetch: the Segment button in one call.

        Args:
            image: the image volume.
            annotation: its sparse annotation or painting, on the image grid.
            options: segment options (:data:`rada.service.runners.SEGMENT_OPTIONS`).
            progress: ``progress(fraction, stage, message)`` while it runs.
            cancel: set it (from any thread) to cancel the job on the server.
            timeout: seconds before :class:`TimeoutError`; None waits for ever.
            keep: keep the job on the server afterwards (default: deleted once fetched).

        Returns:
            The label volume (the image's geometry) and the job's report.

        Raises:
            CancelledError: ``cancel`` was set.
            InputError: the server refused the input.
            JobFailedError: the job failed on the server.
        """
        job_id = self.submit_segment(image, annotation, options)
        stop_watch = threading.Event()
        watcher = None
        if cancel is not None:
            def watch() -> None:
                while not stop_watch.is_set():
                    if cancel.wait(0.1):
                        try:
                            self.cancel(job_id)
                        except ServiceError:
                            pass
                        return
            watcher = threading.Thread(target=watch, name=f"rada-cancel-{job_id[:8]}", daemon=True)
            watcher.start()
        try:
            status = self.wait(job_id, progress, timeout)
            status.raise_for_state()
            return self.result(job_id)
        finally:
            stop_watch.set()
            if watcher is not None:
                watcher.join(1.0)
            if not keep:
                try:
                    self.delete(job_id)
                except ServiceError:
                    pass


class LocalServer:
    """A ``rada serve`` subprocess on a free loopback port, with a fresh token.

    The Slicer module starts one on demand (with Slicer's Python) and stops it when done.
    :meth:`launch` only starts the process (for a GUI: then call :meth:`poll_ready` from a
    timer); :meth:`start` launches and waits until ``/health`` answers, or raises with the end
    of the server's log. The server is told where this ``rada`` package lives (``PYTHONPATH``)
    and watches its standard input, a pipe held by this process: when this process dies, the
    OS closes the pipe and the server stops by itself. The log and the ready file live in a
    private temporary folder removed by :meth:`stop`.
    """

    def __init__(self, python: str | None = None, token: str | None = None, workers: int = 1,
                 models_dir: str | os.PathLike | None = None, device: str | None = None,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None):
        self.python = python or sys.executable
        self.token = token or secrets.token_urlsafe(32)
        self.args = ["--workers", str(workers), *(["--models-dir", str(models_dir)] if models_dir else []),
                     *(["--device", device] if device else []), *extra_args]
        self.env = dict(env or {})
        self.url: str | None = None
        self.process: subprocess.Popen | None = None
        self._dir: Path | None = None
        self._log: Any = None
        self._deadline: float | None = None
        self._timeout = 0.0

    @property
    def log_path(self) -> Path | None:
        """The server's log file, or None when it is not launched."""
        return self._dir / "server.log" if self._dir else None

    def _environment(self) -> dict[str, str]:
        """The server's environment: this ``rada`` package first on ``PYTHONPATH`` (the server
        must run the same code as its client, wherever Slicer installed it)."""
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, **self.env, "RADA_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
        paths = [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_root]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def launch(self, timeout: float = 60.0) -> "LocalServer":
        """Start the process and return at once; :meth:`poll_ready` says when it answers.

        Args:
            timeout: seconds :meth:`poll_ready` waits for the server before giving up.

        Returns:
            self.
        """
        if self.process is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="rada-local-server-"))
        cmd = [self.python, "-m", "rada.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--ready-file", str(self._dir / "ready.json"), "--exit-with-stdin", *self.args]
        self._log = open(self._dir / "server.log", "wb")
        kwargs: dict[str, Any] = {}
        if os.name == "nt":  # no console window popping up from Slicer
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
                                            env=self._environment(), cwd=str(self._dir), **kwargs)
        except OSError as exc:
            self.stop()
            raise ServerUnavailableError(f"cannot start the local RADA server with {self.python}: {exc}") from None
        self._timeout, self._deadline = timeout, time.monotonic() + timeout
        return self

    def poll_ready(self) -> bool:
        """Whether the server answers ``/health`` yet (returns quickly; call it from a timer).

        Returns:
            True once the server answers, False while it starts.

        Raises:
            ServerUnavailableError: the process exited, or did not answer within the launch timeout
                (the message ends with its log); the server is then stopped.
            ServiceError: the server was not launched, or it refused the token or protocol (the
                server is then stopped).
        """
        if self.url is not None and self.running:
            return True
        if self.process is None or self._dir is None:
            raise ServiceError("the local server is not launched")
        ready = self._dir / "ready.json"
        try:
            code = self.process.poll()
            if code is not None:
                raise ServerUnavailableError(f"the local RADA server exited with code {code} while starting:\n"
                                             f"{self.log_tail()}")
            if ready.exists():
                try:
                    url = json.loads(ready.read_text(encoding="utf-8"))["url"]
                    with RadaClient(url, self.token, timeout=2.0) as client:
                        client.health()
                    self.url = url
                    return True
                except (ValueError, KeyError, ServerUnavailableError):
                    pass
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise ServerUnavailableError(f"the local RADA server did not answer within {self._timeout:.0f} s:\n"
                                             f"{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return False

    def start(self, timeout: float = 60.0) -> "LocalServer":
        """Launch and wait until the server answers (scripts and tests; a GUI uses :meth:`launch`).

        Args:
            timeout: seconds to wait for ``/health``.

        Returns:
            self.

        Raises:
            ServerUnavailableError: the process could not start, exited, or did not answer in time.
        """
        self.launch(timeout)
        while not self.poll_ready():
            time.sleep(0.1)
        return self

    def client(self, **kwargs: Any) -> RadaClient:
        """A :class:`RadaClient` for this server.

        Args:
            **kwargs: further :class:`RadaClient` arguments (e.g. ``timeout``).

        Returns:
            The client, holding this server's URL and token.

        Raises:
            ServiceError: the server is not started.
        """
        if self.url is None:
            raise ServiceError("the local server is not started")
        return RadaClient(self.url, self.token, **kwargs)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log.

        Args:
            lines: how many lines.

        Returns:
            The last ``lines`` lines ("" when there is no log).
        """
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (it cancels its jobs and removes its files), then clean up.

        Bounded: closing its standard input asks it to stop; after ``timeout`` seconds it is
        terminated, then killed; this never waits more than about ``timeout + 4`` seconds.

        Args:
            timeout: seconds to wait for a clean stop.
        """
        process = self.process
        if process is not None:
            if process.stdin is not None:
                try:
                    process.stdin.close()
                except OSError:
                    pass
            for action, wait in ((None, timeout), (process.terminate, 2.0), (process.kill, 2.0)):
                if process.poll() is not None:
                    break
                if action is not None:
                    try:
                        action()
                    except OSError:
                        pass
                try:
                    process.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.url = None
        self.process = None

    def __enter__(self) -> "LocalServer":
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_local_server(**kwargs: Any) -> LocalServer:
    """Start a :class:`LocalServer` and wait until healthy.

    Args:
        **kwargs: :class:`LocalServer` arguments, plus ``timeout`` (seconds, default 60).

    Returns:
        The started server.

    Raises:
        ServerUnavailableError: it could not start or did not answer in time.
    """
    timeout = kwargs.pop("timeout", 60.0)
    return LocalServer(**kwargs).start(timeout)

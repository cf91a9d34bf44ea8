"""The FastAPI app of ``rada serve``: jobs over HTTP with a bearer token.

Endpoints (all but ``/health`` need ``Authorization: Bearer <token>``; every response has
an ``X-RADA-Protocol`` header; errors are ``{"detail": "one line"}``):

=========================  ============================================================
``GET /health``            version, protocol, device (+ GPU memory), models, queue
``POST /jobs``             multipart: ``kind`` (segment|train), ``options`` (JSON object
                           text), NRRD files ``image`` and ``annotation`` -> 202 + status
``GET /jobs``              every job kept on the server, newest first
``GET /jobs/{id}``         state, stage, fraction, message, error (+ report when done)
``GET /jobs/{id}/events``  Server-Sent Events: one ``progress`` event per change, then
                           ``end`` with the final status (``?after=seq``/Last-Event-ID)
``POST /jobs/{id}/cancel`` queued: cancelled at once; running: stops at its next check
``GET /jobs/{id}/result``  the label volume as NRRD bytes (409 unless done)
``GET /jobs/{id}/report``  the job's JSON report (409 unless done)
``DELETE /jobs/{id}``      cancel if needed and drop the job's files now
``GET /openapi.json``      the schema (token required like the rest)
=========================  ============================================================

Status codes: 400 bad input (malformed NRRD or form, NaN voxels, annotation values other than
0/1/255), 422 invalid job options (checked at submit), 401 token, 404 unknown job,
409 wrong state or protocol skew, 413 upload or volume too large, 503 queue full.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool

from rada import __version__
from rada.annotation import check_annotation_values
from rada.errors import InputError
from rada.inputs import check_finite
from rada.service import PROTOCOL_HEADER, PROTOCOL_VERSION
from rada.service.codec import CodecError, VolumeTooLargeError, decode_nrrd
from rada.service.jobs import FINISHED, DONE, Job, JobManager, QueueFullError, Runner, list_models
from rada.service.settings import ServiceSettings, write_private_file

log = logging.getLogger("rada.service")

FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_FILES = 8
FORM_HINT = ("send multipart/form-data with the fields kind and options (JSON text) and the NRRD "
             "files image and annotation")
MAX_OPTIONS_BYTES = 64 * 1024
SSE_POLL_S = 0.1
SSE_KEEPALIVE_S = 15.0


class PayloadTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the server limit of {limit / 2**20:.0f} MiB")


class BodyLimitMiddleware:
    """Reject bodies over ``limit`` bytes with 413: by Content-Length before reading anything,
    and while streaming for chunked uploads (counting bytes as they arrive)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                return await _send_json(send, 413, PayloadTooLarge(self.limit).detail, close=True)
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as exc:
            if not started:
                await _send_json(send, 413, exc.detail, close=True)


class ProtocolHeaderMiddleware:
    """Add ``X-RADA-Protocol`` to every response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (PROTOCOL_HEADER.lower().encode(), str(PROTOCOL_VERSION).encode())]
            await send(message)

        await self.app(scope, receive, send_with_header)


async def _send_json(send: Any, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- device information (cached; torch is imported once, only if the device may be CUDA) ----

_DEVICE_CACHE: dict[str, Any] = {}


def device_info(device: str) -> dict[str, Any]:
    if device == "cpu":
        return {"type": "cpu", "name": "cpu"}
    if "static" not in _DEVICE_CACHE:
        try:
            import torch

            if torch.cuda.is_available():
                _DEVICE_CACHE["static"] = {"type": "cuda", "name": torch.cuda.get_device_name(0),
                                           "count": torch.cuda.device_count()}
            else:
                _DEVICE_CACHE["static"] = {"type": "cpu", "name": "cpu",
                                           "note": "no CUDA device visible to torch" if device == "cuda" else None}
        except Exception as exc:  # noqa: BLE001 - a broken torch must not break /health
            _DEVICE_CACHE["static"] = {"type": "cpu", "name": "cpu", "note": f"torch unavailable: {exc}"}
    info = dict(_DEVICE_CACHE["static"])
    if info["type"] == "cuda":
        try:
            import torch

            free, total = torch.cuda.mem_get_info(0)
            info["memory_total_mb"] = round(total / 2**20)
            info["memory_free_mb"] = round(free / 2**20)
        except Exception:  # noqa: BLE001
            pass
    return {k: v for k, v in info.items() if v is not None}


# --- the app --------------------------------------------------------------------------------

def _upload_schema(kinds: list[str]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": kinds, "default": "segment"},
            "options": {"type": "string", "description": "JSON object with the job's options"},
            "image": {"type": "string", "format": "binary", "description": "image volume, NRRD"},
            "annotation": {"type": "string", "format": "binary",
                           "description": "sparse annotation (0/1/255) on the image grid, NRRD"},
        },
    }}}}}


def create_app(settings: ServiceSettings | None = None, runners: Mapping[str, Runner] | None = None) -> FastAPI:
    """The job server's app. ``runners`` maps job kinds to callables (default: segment, train)."""
    from rada.service.jobs import default_runners

    settings = (settings or ServiceSettings.from_env()).with_token()
    runners = dict(default_runners() if runners is None else runners)
    manager = JobManager(settings, runners)
    bearer = HTTPBearer(auto_error=False, description="the server's token (RADA_TOKEN or the token file)")

    def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), settings.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token" if token else "missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        client_protocol = request.headers.get(PROTOCOL_HEADER)
        if client_protocol is not None and client_protocol.strip() != str(PROTOCOL_VERSION):
            raise HTTPException(409, f"protocol skew: the client speaks RADA protocol {client_protocol.strip()[:10]}, "
                                     f"this server (rada {__version__}) speaks {PROTOCOL_VERSION}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.token_file is not None:
            write_private_file(settings.token_file, settings.token + "\n")
        try:
            yield
        finally:
            await run_in_threadpool(manager.shutdown)

    app = FastAPI(title="RADA job server", version=__version__, lifespan=lifespan,
                  description=__doc__.split("\n\n")[0], openapi_url=None, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.manager = manager
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(ProtocolHeaderMiddleware)
    auth = [Depends(authorize)]

    def find(job_id: str) -> Job:
        job = manager.get(job_id) if JOB_ID_RE.match(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r} on this server (finished jobs expire after "
                                     f"{settings.result_ttl_s:.0f} s)")
        return job

    @app.get("/health", dependencies=auth if settings.health_requires_token else [])
    def health() -> dict[str, Any]:
        """Version, protocol, device, models and queue of this server."""
        return {"status": "ok", "rada_version": __version__, "protocol": PROTOCOL_VERSION,
                "device": device_info(settings.device),
                # Models are loaded per job (a segment job reads its checkpoint once): none stays resident.
                "models": {"available": list_models(settings), "loaded": []},
                "kinds": sorted(runners), "queue": manager.counts(),
                "limits": {"max_upload_bytes": settings.max_upload_bytes,
                           "max_volume_bytes": settings.max_volume_bytes},
                "token_required": True}

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.post("/jobs", dependencies=auth, status_code=202, openapi_extra=_upload_schema(sorted(runners)))
    async def submit(request: Request) -> JSONResponse:
        """Queue a job: multipart form with ``kind``, ``options`` and NRRD files."""
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES, max_part_size=MAX_OPTIONS_BYTES)
        except PayloadTooLarge:
            raise
        except StarletteHTTPException as exc:  # starlette's own (FastAPI's is a subclass)
            raise HTTPException(400, f"bad multipart form: {str(exc.detail).rstrip('.')}; {FORM_HINT}") from None
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several types
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise HTTPException(400, f"bad multipart form ({reason}); {FORM_HINT}") from None
        try:
            return await _submit(form)
        finally:
            await form.close()

    async def _submit(form: Any) -> JSONResponse:
        kind = form.get("kind", "segment")
        if not isinstance(kind, str) or kind not in runners:
            raise HTTPException(400, f"unknown job kind {str(kind)[:40]!r}; this server runs: "
                                     f"{', '.join(sorted(runners))}")
        options_text = form.get("options", "{}") or "{}"
        if not isinstance(options_text, str):
            raise HTTPException(400, "options must be a form field with JSON text, not a file")
        try:
            options = json.loads(options_text)
        except ValueError as exc:
            raise HTTPException(400, f"options are not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise HTTPException(400, "options must be a JSON object")
        check = getattr(runners[kind], "check_options", None)
        if check is not None:  # refuse bad options now (422), not after the job has queued
            try:
                check(options, settings)  # the runner checks (and resolves) them again when it runs
            except InputError as exc:
                raise HTTPException(422, " ".join(str(exc).split())) from None
        uploads: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name in ("kind", "options"):
                continue
            if isinstance(value, str):
                raise HTTPException(400, f"unknown form field {name[:40]!r} (volumes must be file uploads)")
            if not FIELD_RE.match(name) or name in uploads:
                raise HTTPException(400, f"bad or repeated file field {name[:40]!r}")
            uploads[name] = value
        missing = [n for n in getattr(runners[kind], "required_inputs", ()) if n not in uploads]
        if missing:
            raise HTTPException(400, f"a {kind} job needs the NRRD file field(s): {', '.join(missing)}")
        job_id, workdir = manager.new_job_dir()
        try:
            inputs = await run_in_threadpool(_store_uploads, uploads, workdir, settings.max_volume_bytes)
            job = manager.submit(job_id, workdir, kind, options, inputs)
        except BaseException:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return JSONResponse(manager.status(job), status_code=202,
                            headers={"Location": f"/jobs/{job.id}"})

    @app.get("/jobs", dependencies=auth)
    def list_jobs() -> list[dict[str, Any]]:
        """Every job kept on the server, newest first (no reports)."""
        with manager.lock:
            jobs = sorted(manager.jobs.values(), key=lambda j: j.created, reverse=True)
            return [{k: v for k, v in manager.status(j).items() if k != "report"} for j in jobs]

    @app.get("/jobs/{job_id}", dependencies=auth)
    def job_status(job_id: str) -> dict[str, Any]:
        """State (queued/running/done/failed/cancelled), stage, fraction, message, error."""
        return manager.status(find(job_id))

    @app.get("/jobs/{job_id}/events", dependencies=auth)
    async def job_events(job_id: str, request: Request, after: int = 0) -> StreamingResponse:
        """Server-Sent Events: ``progress`` per change, then ``end`` with the final status."""
        job = find(job_id)
        last_id = request.headers.get("last-event-id", "")
        start = max(after, int(last_id) if last_id.isdigit() else 0)
        return StreamingResponse(_sse(job, start), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse(job: Job, last: int) -> AsyncIterator[str]:
        quiet_since = time.monotonic()
        yield "retry: 1000\n\n"
        while True:
            events, finished = manager.events_after(job, last)
            for event in events:
                last = event["seq"]
                yield f"id: {last}\nevent: progress\ndata: {json.dumps(event)}\n\n"
            if finished:
                yield f"id: {last}\nevent: end\ndata: {json.dumps(manager.status(job))}\n\n"
                return
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(SSE_POLL_S)

    @app.post("/jobs/{job_id}/cancel", dependencies=auth)
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel: a queued job at once, a running one at its next check (state -> cancelled)."""
        job = find(job_id)
        manager.cancel(job)
        return manager.status(job)

    def _require_done(job: Job) -> None:
        if job.state != DONE:
            detail = f"job {job.id} is {job.state}"
            if job.error:
                detail += f": {job.error}"
            raise HTTPException(409, detail)

    @app.get("/jobs/{job_id}/result", dependencies=auth,
             responses={200: {"content": {"application/octet-stream": {}}, "description": "label volume, NRRD"}})
    def result(job_id: str) -> Response:
        """The label volume (NRRD bytes, same geometry as the image); the report is in /report."""
        job = find(job_id)
        _require_done(job)
        if job.result_path is None:
            raise HTTPException(404, f"a {job.kind} job has no volume result; see /jobs/{job.id}/report")
        try:
            data = job.result_path.read_bytes()
        except FileNotFoundError:
            raise HTTPException(404, f"job {job.id} expired") from None
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{job.id}-label.nrrd"'})

    @app.get("/jobs/{job_id}/report", dependencies=auth)
    def report(job_id: str) -> dict[str, Any]:
        """The job's JSON report."""
        job = find(job_id)
        _require_done(job)
        return job.report or {}

    @app.delete("/jobs/{job_id}", dependencies=auth)
    def delete(job_id: str) -> dict[str, Any]:
        """Cancel the job if needed; drop it and its files once it has stopped."""
        job = find(job_id)
        manager.delete(job)
        return {"id": job.id, "deleted": job.state in FINISHED, "state": job.state}

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "10"})

    @app.exception_handler(VolumeTooLargeError)
    async def _too_large(request: Request, exc: VolumeTooLargeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=400)

    return app


def _store_uploads(uploads: Mapping[str, Any], workdir: Path, max_volume_bytes: int) -> dict[str, Path]:
    """Check every upload decodes as a volume (else InputError/400) and keep it in the job folder."""
    inputs: dict[str, Path] = {}
    for name, upload in uploads.items():
        upload.file.seek(0)
        data = upload.file.read()
        try:
            volume = decode_nrrd(data, max_volume_bytes)
            # The same value checks as the CLI: finite voxels, annotation values 0/1/255 only.
            check_finite(volume, name)
            if name == "annotation":
                check_annotation_values(volume, name)
        except VolumeTooLargeError as exc:
            raise VolumeTooLargeError(f"{name}: {exc}") from None
        except CodecError as exc:
            raise CodecError(f"{name}: {exc}") from None
        except InputError as exc:
            raise InputError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
        path = workdir / f"{name}.nrrd"
        path.write_bytes(data)
        inputs[name] = path
    return inputs


# --- running it -----------------------------------------------------------------------------

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one, no race)."""

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":  # on Windows SO_REUSEADDR would let another process take the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServiceSettings, ready_file: Path | None = None, log_level: str = "info",
          runners: Mapping[str, Runner] | None = None, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None, exit_with_stdin: bool = False) -> None:
    """Run the server until interrupted (``rada serve``).

    ``ready_file`` receives ``{"url", "pid", "protocol"}`` as JSON once the server accepts
    connections (how :class:`rada.service.client.LocalServer` learns a port chosen with 0).
    With ``exit_with_stdin`` the server stops when its standard input reaches end of file:
    the parent holds the pipe's other end, and the OS closes it when the parent dies, so a
    server started by Slicer never outlives it (a parent-pid check would miss pid reuse and
    does not work the same on Windows).
    """

    import uvicorn

    token_given = bool(settings.token or os.environ.get("RADA_TOKEN"))
    settings = settings.with_token()
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    scheme = "https" if ssl_certfile else "http"
    shown_host = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown_host}:{port}"
    app = create_app(settings, runners)

    def on_ready() -> None:
        print(f"RADA server {__version__} (protocol {PROTOCOL_VERSION}) listening on {url}", file=sys.stderr)
        if settings.token_file is not None:
            print(f"  token in {settings.token_file} (owner-only)", file=sys.stderr)
        elif not token_given:
            print(f"  token: {settings.token}", file=sys.stderr)
        if settings.host not in LOOPBACK_HOSTS and not ssl_certfile:
            print("  warning: not loopback and no TLS: the token and the volumes cross the network in clear "
                  "text; prefer an SSH tunnel (ssh -L 8765:127.0.0.1:8765 HOST) or --ssl-certfile/--ssl-keyfile",
                  file=sys.stderr)
        if ready_file is not None:
            write_private_file(Path(ready_file), json.dumps({"url": url, "pid": os.getpid(),
                                                             "protocol": PROTOCOL_VERSION}))

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                on_ready()
                if exit_with_stdin:
                    threading.Thread(target=self._exit_at_stdin_eof, name="rada-stdin-watchdog",
                                     daemon=True).start()

        def _exit_at_stdin_eof(self) -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError, AttributeError):
                pass
            print("standard input closed (the parent is gone): stopping", file=sys.stderr)
            self.should_exit = True

        async def shutdown(self, sockets: Any = None) -> None:
            try:
                await super().shutdown(sockets=sockets)
            finally:  # uvicorn re-raises SIGTERM/SIGINT after this, so clean up here
                if ready_file is not None:
                    Path(ready_file).unlink(missing_ok=True)

    config = uvicorn.Config(app, log_level=log_level, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            timeout_graceful_shutdown=5)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if ready_file is not None:
            Path(ready_file).unlink(missing_ok=True)

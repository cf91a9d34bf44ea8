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

import json
import os
import socket
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from rada import __version__
from rada.errors import InputError
from rada.service import PROTOCOL_VERSION
from rada.service.auth import token_dependency
from rada.service.codec import VolumeTooLargeError
from rada.service.manager import JobManager, QueueFullError, Runner
from rada.service.middleware import BodyLimitMiddleware, ProtocolHeaderMiddleware
from rada.service.routes import health_router, jobs_router, results_router
from rada.service.runners import default_runners
from rada.service.settings import ServiceSettings, write_private_file


def create_app(settings: ServiceSettings | None = None, runners: Mapping[str, Runner] | None = None) -> FastAPI:
    """The job server's app.

    Args:
        settings: the server's settings (default: from ``RADA_*`` variables); a token is made if none is set.
        runners: job kind -> runner (default: :func:`rada.service.runners.default_runners`).

    Returns:
        The FastAPI app; its job manager (``app.state.manager``) starts workers on the first
        job and shuts down, removing every job folder, with the app's lifespan.
    """
    settings = (settings or ServiceSettings.from_env()).with_token()
    manager = JobManager(settings, default_runners() if runners is None else runners)

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
    auth = [Depends(token_dependency(settings))]
    for router in (health_router, jobs_router, results_router):
        app.include_router(router(manager, auth))
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Errors raised below the routes -> ``{"detail": "one line"}`` with their status."""

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "10"})

    @app.exception_handler(VolumeTooLargeError)
    async def _too_large(request: Request, exc: VolumeTooLargeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=400)


# --- running it -----------------------------------------------------------------------------

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one, no race).

    Args:
        host: the address to bind.
        port: the port; 0 lets the OS choose a free one.

    Returns:
        The bound socket (inheritable, for uvicorn).

    Raises:
        OSError: the address is in use or cannot be bound.
    """
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

    Args:
        settings: the server's settings (address, token, limits, folders, device).
        ready_file: where to write ``{"url", "pid", "protocol"}`` once listening (owner-only).
        log_level: uvicorn's log level.
        runners: job kind -> runner (default: :func:`rada.service.runners.default_runners`).
        ssl_certfile: TLS certificate (for a non-loopback host).
        ssl_keyfile: TLS private key.
        exit_with_stdin: stop when standard input reaches end of file (the parent is gone).

    Raises:
        OSError: the address cannot be bound.
    """
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

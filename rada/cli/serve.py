"""``rada serve`` (the job server) and ``rada web`` (the browser app).

The servers are imported inside the ``run_*`` functions: FastAPI, uvicorn and trame are
optional extras and heavy; ``rada --help`` and the other commands must work without them.
"""

from __future__ import annotations

import argparse

from rada.errors import InputError
from rada.service.settings import MIB, ServiceSettings


def add_serve(sub: argparse._SubParsersAction) -> None:
    """Register ``rada serve``."""
    p = sub.add_parser("serve", help="job server for the Slicer modules (FastAPI, token auth)",
                       description="Serve segment/train jobs over HTTP (see rada/service/app.py for the API). "
                                   "Binds 127.0.0.1; every endpoint but /health needs the bearer token "
                                   "(RADA_TOKEN, else a random one printed or written to --token-file). "
                                   "Other settings also come from RADA_* variables (rada/service/settings.py).")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=None, help="port (default 8765; 0 = any free port)")
    p.add_argument("--token-file", default=None, help="write the token here, owner-only (mode 0600)")
    p.add_argument("--ready-file", default=None, help="write {url, pid, protocol} JSON here once listening")
    p.add_argument("--workers", type=int, default=None, help="jobs running at once (default 1: GPU safety)")
    p.add_argument("--max-queued", type=int, default=None, help="waiting jobs before 503 (default 16)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="request size limit (default 1024)")
    p.add_argument("--work-dir", default=None, help="server-side job folder (default: a temporary one)")
    p.add_argument("--models-dir", default=None, help="trained checkpoints offered to clients by name")
    p.add_argument("--datasets-dir", default=None, help="datasets (dataset.json folders) trainable by name")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="device for the jobs")
    p.add_argument("--ssl-certfile", default=None, help="TLS certificate (for a non-loopback --host)")
    p.add_argument("--ssl-keyfile", default=None, help="TLS private key")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--exit-with-stdin", action="store_true",
                   help="stop when standard input closes: the parent (Slicer) died or let go (watchdog)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Run the job server until interrupted (or, with ``--exit-with-stdin``, until stdin closes)."""
    from rada.service.app import serve  # lazy: FastAPI and uvicorn

    settings = ServiceSettings.from_env(
        host=args.host, port=args.port, token_file=args.token_file, max_workers=args.workers,
        max_queued=args.max_queued, work_dir=args.work_dir, models_dir=args.models_dir,
        datasets_dir=args.datasets_dir, device=args.device,
        max_upload_bytes=None if args.max_upload_mb is None else int(args.max_upload_mb * MIB))
    try:
        serve(settings, ready_file=args.ready_file, log_level=args.log_level,
              ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
              exit_with_stdin=args.exit_with_stdin)
    except OSError as exc:  # port in use, bad address
        raise InputError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    return 0


def add_web(sub: argparse._SubParsersAction) -> None:
    """Register ``rada web``."""
    p = sub.add_parser("web", help="RADA in the browser: paint, Segment, see the 3D result (trame-slicer)",
                       description="Serve RADA's web app (Slicer's views and Paint effect via trame-slicer) on "
                                   "127.0.0.1. The page needs ?token=... (printed at start). Segments on a local "
                                   "`rada serve` started for it, or on --server with --token-file.")
    p.add_argument("image", nargs="?", default="", help="volume to open (any format rada reads, DICOM folder)")
    p.add_argument("--port", type=int, default=8080, help="the page's port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--server", default="", help="URL of a running `rada serve` (default: start a local one)")
    p.add_argument("--token-file", default="", help="file holding that server's token")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="local server's device")
    p.add_argument("--save-dir", default="", help="folder the Save button writes to (default: the image's)")
    p.set_defaults(func=run_web)


def run_web(args: argparse.Namespace) -> int:
    """Serve the web app until interrupted."""
    from rada.web import cli_config  # lazy: the web app and its session load slicer-core on first use
    from rada.web.app import run

    return run(cli_config(args))

"""RADA in the browser (``rada web``): trame-slicer views and Paint, RADA's Segment.

Needs the ``web`` extra (trame-slicer, which brings slicer-core). :mod:`rada.web.session`
holds the work (shared with the Slicer module's Qt-free logic); :mod:`rada.web.app` the page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rada.errors import InputError
from rada.web.app import WebConfig
from rada.web.session import SessionConfig


def cli_config(args: argparse.Namespace) -> WebConfig:
    """``rada web``'s arguments as a :class:`rada.web.app.WebConfig` (checked, one-line errors).

    Args:
        args: parsed arguments (image, port, host, server, token_file, device, save_dir).

    Returns:
        The WebConfig.

    Raises:
        InputError: a missing image, token file or save folder, a bad port.
    """
    if args.image and not Path(args.image).exists():
        raise InputError(f"no such file or folder: {args.image}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {args.port}")
    token = ""
    if args.token_file:
        if not args.server:
            raise InputError("--token-file goes with --server URL (the local server makes its own token)")
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read --token-file {args.token_file}: {exc.strerror or exc}") from None
        if not token:
            raise InputError(f"--token-file {args.token_file} is empty")
    if args.save_dir and not Path(args.save_dir).is_dir():
        raise InputError(f"--save-dir {args.save_dir} is not a folder")
    session = SessionConfig(server_url=args.server, token=token, device=args.device)
    return WebConfig(image=args.image, host=args.host, port=args.port, session=session, save_dir=args.save_dir)

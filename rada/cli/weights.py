"""``rada weights download|import|list``: the encoder weights in the per-user cache.

:mod:`rada.guidance.weights` is imported inside the ``run_*`` functions: importing
:mod:`rada.guidance` loads torch, which ``rada --help`` must not pay for.
"""

from __future__ import annotations

import argparse

from rada.cli.common import print_json
from rada.errors import InputError


def add_weights(sub: argparse._SubParsersAction) -> None:
    """Register ``rada weights`` and its three actions."""
    p = sub.add_parser("weights", help="encoder weights: download, import (offline), list",
                       description="Alpha-CLIP / CLIP weights in the per-user cache ($RADA_HOME/weights, else "
                                   "~/.cache/rada/weights). Downloads resume and are sha256-checked; behind a "
                                   "firewall, fetch the files elsewhere and import them.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = actions.add_parser("download", help="download registry files (resumable, sha256-checked)")
    d.add_argument("names", nargs="*", metavar="NAME",
                   help="registry names (rada weights list) or encoder variants such as clip-b16 "
                        "(default: the files of the default encoder, alpha-clip-b16-grit1m)")
    d.add_argument("--url", default=None, help="download from this URL (a mirror) instead; one NAME only")
    d.add_argument("--force", action="store_true", help="download again even if present")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run_weights_download)
    i = actions.add_parser("import", help="copy a weights file fetched elsewhere into the cache (offline path)")
    i.add_argument("file", help="the file, e.g. ViT-B-16.pt or clip_b16_grit1m_fultune_8xe.pth")
    i.add_argument("--name", default=None, help="registry name, if the file was renamed")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=run_weights_import)
    ls = actions.add_parser("list", help="known weights, where they are, their sha256")
    ls.set_defaults(func=run_weights_list)


def run_weights_download(args: argparse.Namespace) -> int:
    """Download registry files (or an encoder variant's files); print where they are."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.guidance import weights as W

    names: list[str] = [] if args.names else W.files_for([W.DEFAULT_VARIANT])
    for n in args.names:
        # a registry name means that file; an encoder variant (not a file name) means its files
        for f in ([W.lookup(n).name] if n in W.REGISTRY or n not in W.VARIANTS else W.files_for([n])):
            if f not in names:
                names.append(f)
    if args.url and len(names) != 1:
        raise InputError(f"--url needs exactly one registry name, got {', '.join(names)}")
    rows = []
    for n in names:
        path = W.download(n, url=args.url, progress=not args.quiet, force=args.force)
        record = W.read_manifest().get(path.name, {})
        rows.append({"name": n, "path": str(path), "sha256": record.get("sha256"),
                     "verified": bool(record.get("verified"))})
    print_json(rows)
    return 0


def run_weights_import(args: argparse.Namespace) -> int:
    """Copy a weights file into the cache; print its path and sha256."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.guidance import weights as W

    path = W.import_file(args.file, name=args.name, progress=not args.quiet)
    record = W.read_manifest().get(path.name, {})
    print_json({"path": str(path), "sha256": record.get("sha256"), "verified": bool(record.get("verified"))})
    return 0


def run_weights_list(args: argparse.Namespace) -> int:
    """Print the known weights, where they are and their sha256."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.guidance import weights as W

    print_json(W.list_weights())
    return 0

"""The ``rada`` command: one subcommand per pipeline step.

Contract (ARCHITECTURE.md): exit 0 on success, 2 on bad input with a one-line reason on
stderr, progress on stderr, machine-readable results on stdout or in ``--report``.
Each subcommand is registered by a ``_add_<name>`` function below and runs a ``_run_<name>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from rada import __version__
from rada.errors import InputError

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")


# --- subcommands ------------------------------------------------------------------------
# (each: an _add_* that builds the parser and sets ``func``)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rada", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rada {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, obj in sorted(globals().items()):
        if name.startswith("_add_") and callable(obj):
            obj(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"rada {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rada {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

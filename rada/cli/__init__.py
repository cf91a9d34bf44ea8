"""The ``rada`` command: one subcommand per pipeline step.

Contract (ARCHITECTURE.md): exit 0 on success, 2 on bad input with a one-line reason on
stderr, progress on stderr, machine-readable results on stdout or in ``--report``.
Each subcommand is registered by an ``add_<name>`` function of its group's module
(:mod:`rada.cli.segment`, :mod:`~rada.cli.data`, :mod:`~rada.cli.train`,
:mod:`~rada.cli.weights`, :mod:`~rada.cli.serve`, :mod:`~rada.cli.demo`) and runs a
``run_<name>``; this module only builds the parser and maps errors to exit codes.

The signatures are the same for every command, so they are documented once, here:
``add_<name>(sub)`` adds the subcommand to ``sub``, the ``rada`` subparsers; ``run_<name>(args)``
takes the parsed command line and returns the exit status 0, raising
:class:`~rada.errors.InputError` for a missing, unreadable or unfitting input or an output
that cannot be written (printed as one line, exit 2).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rada import __version__
from rada.cli import data, demo, segment, serve, train, weights
from rada.errors import InputError

#: Every subcommand's registration, in the order ``rada --help`` lists them.
COMMANDS = (demo.add_demo, train.add_embed, data.add_evaluate, segment.add_predict, data.add_prepare_dataset,
            data.add_prepare_sparse, segment.add_propagate, segment.add_segment, serve.add_serve,
            train.add_train, serve.add_web, weights.add_weights)

#: Optional packages -> the ``pip install "rada[EXTRA]"`` extra that brings them.
EXTRAS = {"fastapi": "server", "uvicorn": "server", "httpx": "server", "multipart": "server",
          "python_multipart": "server", "open_clip": "guidance", "torchvision": "guidance",
          "matplotlib": "plots", "trame": "web", "trame_slicer": "web",
          "slicer": "web", "undo_stack": "web"}


def build_parser() -> argparse.ArgumentParser:
    """The ``rada`` argument parser with every subcommand (imports no torch).

    Returns:
        The parser; parsed arguments carry the subcommand's ``func``.
    """
    parser = argparse.ArgumentParser(prog="rada", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rada {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def missing_extra(exc: ModuleNotFoundError) -> str:
    """One line for a missing optional package: which extra installs it.

    Args:
        exc: the import error.

    Returns:
        The message, naming the ``pip install`` command that fixes it.
    """
    module = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return f"the Python package {module or exc} is missing (pip install {module})"
    return f"this command needs the '{extra}' extra ({module} is missing): pip install \"rada[{extra}]\""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rada`` with ``argv`` (default: the command line).

    Args:
        argv: the arguments after the program name.

    Returns:
        The exit code: 0 success, 2 bad input or environment (one line on stderr),
        130 interrupted. argparse's own usage errors exit 2 before this returns.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"rada {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, ...: the user's environment, not a bug
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"rada {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"rada {args.command}: error: {missing_extra(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rada {args.command}: interrupted", file=sys.stderr)
        return 130

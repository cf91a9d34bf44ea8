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


def _add_prepare_sparse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-sparse", help="dense label -> sparse annotation (the painting protocol)",
                       description="Keep only annotated slices of a dense label: 1 structure, 0 background "
                                   "on those slices, 255 (not annotated) elsewhere.")
    p.add_argument("label", help="dense label volume (any value > 0 is the structure)")
    p.add_argument("--out", required=True, help="sparse annotation to write (.nii.gz, .nrrd, ...)")
    p.add_argument("--slices", default="auto",
                   help="'auto' (largest-foreground slice per axis) or sagittal,coronal,axial indices x,y,z")
    p.add_argument("--label-value", type=int, default=None, help="use only this label value as the structure")
    p.set_defaults(func=_run_prepare_sparse)


def _run_prepare_sparse(args: argparse.Namespace) -> int:
    from rada.annotation import SparseAnnotation
    from rada.io import read_volume, write_volume

    sparse = SparseAnnotation.from_dense(read_volume(args.label), args.slices, args.label_value)
    write_volume(sparse.labels, args.out)
    _print_json({"out": str(args.out), "slices": sparse.slices()})
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, Jaccard, HD95, ASD of predictions against references",
                       description="Score one prediction against one reference, or every prediction in a "
                                   "folder against the reference of the same name in another folder.")
    p.add_argument("pred", help="predicted label volume, or a folder of them")
    p.add_argument("gt", help="reference label volume, or a folder of them (matched by file name)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--csv", default=None, help="also write the per-case table to this CSV file")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from rada.evaluation import evaluate_paths, format_table, write_csv

    rows, summary = evaluate_paths(args.pred, args.gt)
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        _print_json({"cases": rows, "summary": summary})
    else:
        print(format_table(rows, summary))
    return 0


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

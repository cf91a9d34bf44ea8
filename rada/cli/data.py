"""``rada prepare-sparse``, ``rada prepare-dataset``, ``rada evaluate``: annotations, datasets, scores.

The work modules are imported inside the ``run_*`` functions: the parser is built on every
call, and only the command that runs should pay for its imports (SimpleITK, scipy).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rada.cli.common import check_outputs, print_json
from rada.errors import InputError
from rada.safe_write import VOLUME_SUFFIXES


def add_prepare_sparse(sub: argparse._SubParsersAction) -> None:
    """Register ``rada prepare-sparse`` (dense label -> sparse annotation)."""
    p = sub.add_parser("prepare-sparse", help="dense label -> sparse annotation (the painting protocol)",
                       description="Keep only annotated slices of a dense label: 1 structure, 0 background "
                                   "on those slices, 255 (not annotated) elsewhere.")
    p.add_argument("label", help="dense label volume (any value > 0 is the structure)")
    p.add_argument("--out", required=True, help="sparse annotation to write (.nii.gz, .nrrd, ...)")
    p.add_argument("--slices", default="auto",
                   help="'auto' (largest-foreground slice per axis) or sagittal,coronal,axial indices x,y,z")
    p.add_argument("--label-value", type=int, default=None, help="use only this label value as the structure")
    p.set_defaults(func=run_prepare_sparse)


def run_prepare_sparse(args: argparse.Namespace) -> int:
    """Write the sparse annotation of a dense label."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.annotation import SparseAnnotation
    from rada.io import read_volume, write_volume

    check_outputs((args.out, VOLUME_SUFFIXES))
    sparse = SparseAnnotation.from_dense(read_volume(args.label), args.slices, args.label_value)
    write_volume(sparse.labels, args.out)
    print_json({"out": str(args.out), "slices": sparse.slices()})
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Register ``rada evaluate`` (Dice, Jaccard, HD95, ASD)."""
    p = sub.add_parser("evaluate", help="Dice, Jaccard, HD95, ASD of predictions against references",
                       description="Score one prediction against one reference, or every prediction in a "
                                   "folder against the reference of the same name in another folder.")
    p.add_argument("pred", help="predicted label volume, or a folder of them")
    p.add_argument("gt", help="reference label volume, or a folder of them (matched by file name)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--csv", default=None, help="also write the per-case table to this CSV file")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Score predictions against references: a table (or JSON) on stdout, optionally a CSV."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.evaluation import evaluate_paths, format_table, write_csv

    check_outputs((args.csv, None))
    rows, summary = evaluate_paths(args.pred, args.gt)
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        print_json({"cases": rows, "summary": summary})
    else:
        print(format_table(rows, summary))
    return 0


def add_prepare_dataset(sub: argparse._SubParsersAction) -> None:
    """Register ``rada prepare-dataset`` (a benchmark protocol's dataset.json)."""
    p = sub.add_parser("prepare-dataset", help="build a barely-supervised dataset.json from dense labels",
                       description="Build a training dataset folder (dataset.json + sparse annotations) with a "
                                   "benchmark's protocol. la2018: SRC/<ID>/{image,label}.nii.gz; a fixed split "
                                   "(16 validation cases; 8 labeled with their three largest-foreground slices, "
                                   "the rest unlabeled). Images are referenced in place, not copied.")
    p.add_argument("protocol", choices=["la2018"], help="benchmark protocol")
    p.add_argument("source", help="folder with one sub-folder per case")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--split", default=None,
                   help="split JSON (labeled/unlabeled/val id lists); default: drawn from SRC/cases.list with "
                        "the fixed seed (the split of the repository's bench/la2018_split.json)")
    p.set_defaults(func=run_prepare_dataset)


def run_prepare_dataset(args: argparse.Namespace) -> int:
    """Build the dataset folder with the protocol's fixed split."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.dataset import SplitFile, build_la2018

    src = Path(args.source)
    if not src.is_dir():
        raise InputError(f"no such folder: {src}")
    if args.split:
        split_path = Path(args.split)
        if not split_path.exists():
            raise InputError(f"no such split file: {split_path}")
        split = SplitFile.read(split_path)
    elif (src / "cases.list").exists():
        split = SplitFile.make((src / "cases.list").read_text(encoding="utf-8").split())
    else:
        raise InputError(f"no split file and no {src / 'cases.list'} to draw one from")
    spec = build_la2018(src, args.out, split)
    print_json({"dataset": str(Path(args.out) / "dataset.json"), "labeled": len(spec.labeled("train")),
                "unlabeled": len(spec.unlabeled("train")), "val": len(spec.split("val"))})
    return 0

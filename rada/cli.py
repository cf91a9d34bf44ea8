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


def _stderr_progress(desc: str):
    """A tqdm bar on stderr driven by progress(fraction, stage, message) callbacks."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def progress(fraction: float, stage: str, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(f"{stage}: {message}")
        bar.refresh()
    return bar, progress


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="three painted slices -> 3D segmentation (the Segment button)",
                       description="Segment the painted structure of IMAGE in 3D. The annotation is a "
                                   "sparse annotation (0/1/255) or a painting (0/1 volume or .seg.nrrd).")
    p.add_argument("image", help="image volume (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--annotation", required=True, help="sparse annotation or painting on the image grid")
    p.add_argument("--segment", default=None, help="painted segment's name in a .seg.nrrd with several")
    p.add_argument("--out", required=True, help="label volume to write (.nii.gz, .nrrd, .seg.nrrd, ...)")
    p.add_argument("--model", default=None, help="trained RADA checkpoint for this structure (optional)")
    p.add_argument("--preset", default="fast", choices=["fast", "full"],
                   help="fast: seconds on a CPU; full: adds ANTs propagation (minutes on a CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for the model")
    p.add_argument("--report", default=None, help="write the JSON report here (also printed on stdout)")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from rada.io import atomic_path, read_annotation, read_volume, write_volume
    from rada.pipeline import SegmentConfig, segment_case

    image = read_volume(args.image)
    annotation = read_annotation(args.annotation, args.segment)
    bar, progress = _stderr_progress("segment")
    try:
        result = segment_case(image, annotation,
                              SegmentConfig(preset=args.preset, device=args.device, model=args.model),
                              progress=progress)
    finally:
        bar.close()
    write_volume(result.label, args.out)
    report = {"out": str(args.out), **result.report}
    if args.report:
        with atomic_path(args.report) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=float))
    _print_json(report)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run Segment on a built-in phantom (no data needed)",
                       description="Make a synthetic organ phantom, paint its three largest slices, "
                                   "segment it and score the result against the phantom's truth.")
    p.add_argument("--out", default="rada-demo", help="folder for the demo's files (default: ./rada-demo)")
    p.add_argument("--seed", type=int, default=0, help="phantom random seed")
    p.add_argument("--preset", default="fast", choices=["fast", "full"])
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rada.annotation import SparseAnnotation
    from rada.io import Segment, Segmentation, atomic_path, write_segmentation, write_volume
    from rada.metrics import evaluate
    from rada.phantom import PhantomConfig, make_phantom
    from rada.pipeline import SegmentConfig, segment_case
    from rada.shape_prior import visual_hull

    out = Path(args.out)
    image, truth = make_phantom(PhantomConfig(seed=args.seed))
    annotation = SparseAnnotation.from_dense(truth)
    bar, progress = _stderr_progress("demo")
    try:
        result = segment_case(image, annotation, SegmentConfig(preset=args.preset), progress=progress)
    finally:
        bar.close()
    spacing = image.spacing[::-1]
    scores = evaluate(result.label.array, truth.array, spacing)
    hull = evaluate(visual_hull(annotation), truth.array, spacing)
    files = {
        "image": write_volume(image, out / "image.nrrd"),
        "annotation": write_volume(annotation.labels, out / "annotation.nrrd"),
        "segmentation": write_segmentation(
            Segmentation(image, [Segment("organ", result.label.array > 0, (0.9, 0.5, 0.3))]),
            out / "segmentation.seg.nrrd"),
        "truth": write_volume(truth, out / "truth.nrrd"),
    }
    summary = {"dice": round(scores.dice, 4), "hd95_mm": round(scores.hd95_mm, 2),
               "baseline_extrude_intersect_dice": round(hull.dice, 4),
               "seconds": result.report["timings_s"]["total"],
               "files": {k: str(v) for k, v in files.items()}, "report": result.report}
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float))
    print(f"RADA demo: phantom organ segmented from 3 painted slices in {summary['seconds']:.2f} s",
          file=sys.stderr)
    print(f"  Dice {scores.dice:.4f} (extrude-intersect baseline {hull.dice:.4f}), HD95 {scores.hd95_mm:.2f} mm",
          file=sys.stderr)
    print(f"  files in {out}/ (open image.nrrd and segmentation.seg.nrrd in 3D Slicer)", file=sys.stderr)
    _print_json({k: v for k, v in summary.items() if k != "report"})
    return 0


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

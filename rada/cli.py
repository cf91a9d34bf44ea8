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


def _stage_report(report: dict, path: str | None, outputs) -> None:
    """With ``--report PATH``, stage the JSON report in ``outputs`` (written with the other outputs)."""
    if path:
        outputs.stage(path).write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")


def _check_outputs(*paths: tuple[str | None, tuple[str, ...] | None]) -> None:
    """Fail at once, before any work, if an output cannot be written (unknown format, no permission...)."""
    from rada.safe_write import check_output

    for path, allowed in paths:
        if path:
            check_output(path, allowed)


# --- subcommands ------------------------------------------------------------------------
# (each: an _add_* that builds the parser and sets ``func``)


class _LineProgress:
    """Progress for a log file or pipe: one plain line per new stage, no carriage returns."""

    def __init__(self, desc: str):
        self.desc, self.stage = desc, None

    def update(self, fraction: float, stage: str, message: str) -> None:
        if stage != self.stage:
            self.stage = stage
            print(f"{self.desc}: {round(100 * fraction):3d}% {stage}: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _stderr_progress(desc: str):
    """Progress on stderr driven by progress(fraction, stage, message) callbacks.

    A tqdm bar on a terminal; one line per stage otherwise, so logs hold no ``\\r`` redraws.
    """
    if not sys.stderr.isatty():
        lines = _LineProgress(desc)
        return lines, lines.update
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
    p.add_argument("--preset", default="fast", choices=["fast", "full", "finetune"],
                   help="fast: seconds on a CPU; full: adds ANTs propagation (minutes on a CPU); finetune: "
                        "the RADA method on this case, ANTs propagation + tri-view V-Nets fine-tuned on it, "
                        "from --model when given (minutes on a CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for the model")
    p.add_argument("--report", default=None, help="write the JSON report here (also printed on stdout)")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from rada.io import Segment, Segmentation, load_annotation, read_volume, write_segmentation, write_volume
    from rada.pipeline import SegmentConfig, segment_case
    from rada.safe_write import VOLUME_SUFFIXES, OutputSet

    _check_outputs((args.out, VOLUME_SUFFIXES), (args.report, None))
    image = read_volume(args.image)
    painted = load_annotation(args.annotation, args.segment, reference=image)
    bar, progress = _stderr_progress("segment")
    try:
        result = segment_case(image, painted.annotation,
                              SegmentConfig(preset=args.preset, device=args.device, model=args.model),
                              progress=progress)
    finally:
        bar.close()
    report = {"out": str(args.out), **result.report}
    with OutputSet() as outputs:  # the label and the report are written together or not at all
        if painted.segment_name and args.out.lower().endswith(".seg.nrrd"):
            segment = Segment(painted.segment_name, result.label.array > 0, painted.color or (0.9, 0.4, 0.3))
            write_segmentation(Segmentation(result.label, [segment]), args.out, outputs=outputs)
        else:
            write_volume(result.label, args.out, outputs=outputs)
        _stage_report(report, args.report, outputs)
    _print_json(report)
    return 0


def _add_propagate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("propagate", help="ANTs slice-to-slice propagation of the annotated slices",
                       description="Propagate each annotated slice along its own axis (DeSCO-style, "
                                   "registrations in parallel); write the per-view pseudo-labels and "
                                   "distance maps (.npz) and, optionally, the fused 3D estimate.")
    p.add_argument("image", help="image volume")
    p.add_argument("--annotation", required=True, help="sparse annotation or painting on the image grid")
    p.add_argument("--out", required=True, help="per-view pseudo-labels and distances (.npz)")
    p.add_argument("--fused", default=None, help="also write the fused (majority) label volume here")
    p.add_argument("--transform", default="SyNRA", choices=["SyNRA", "SyN"], help="ANTs transform (default SyNRA)")
    p.add_argument("--preset", default="full", choices=["full", "fast"],
                   help="full: ANTs defaults; fast: slices registered at half resolution")
    p.add_argument("--workers", type=int, default=None, help="registration processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="registration seed (runs are reproducible)")
    p.add_argument("--no-crop", action="store_true", help="register full slices, not the annotated region")
    p.set_defaults(func=_run_propagate)


def _run_propagate(args: argparse.Namespace) -> int:
    from rada.io import read_annotation, read_volume, write_volume
    from rada.propagation import PropagationConfig, propagate, save_propagation
    from rada.safe_write import VOLUME_SUFFIXES

    _check_outputs((args.out, None), (args.fused, VOLUME_SUFFIXES))
    image = read_volume(args.image)
    annotation = read_annotation(args.annotation, reference=image).validate(image)
    config = PropagationConfig(transform=args.transform, resolution={"full": "full", "fast": "half"}[args.preset],
                               workers=args.workers, seed=args.seed, crop=not args.no_crop)
    bar, progress = _stderr_progress("propagate")
    try:
        result = propagate(image, annotation, config,
                           progress=lambda fraction, message: progress(fraction, "register", message))
    finally:
        bar.close()
    save_propagation(result, args.out)
    if args.fused:
        write_volume(image.with_array(result.fused), args.fused)
    _print_json({"out": str(args.out), "fused": args.fused, "annotated_slices": annotation.slices(),
                 "stats": {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))}})
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
    from rada.io import Segment, Segmentation, write_segmentation, write_volume
    from rada.metrics import evaluate
    from rada.phantom import PhantomConfig, make_phantom
    from rada.pipeline import SegmentConfig, segment_case
    from rada.safe_write import OutputSet
    from rada.shape_prior import visual_hull

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write into {out}: it is a file, not a folder")
    _check_outputs((str(out / "report.json"), None))
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
    with OutputSet() as outputs:
        files = {
            "image": write_volume(image, out / "image.nrrd", outputs=outputs),
            "annotation": write_volume(annotation.labels, out / "annotation.nrrd", outputs=outputs),
            "segmentation": write_segmentation(
                Segmentation(image, [Segment("organ", result.label.array > 0, (0.9, 0.5, 0.3))]),
                out / "segmentation.seg.nrrd", outputs=outputs),
            "truth": write_volume(truth, out / "truth.nrrd", outputs=outputs),
        }
        summary = {"dice": round(scores.dice, 4), "hd95_mm": round(scores.hd95_mm, 2),
                   "baseline_extrude_intersect_dice": round(hull.dice, 4),
                   "seconds": result.report["timings_s"]["total"],
                   "files": {k: str(v) for k, v in files.items()}, "report": result.report}
        outputs.stage(out / "report.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
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
    from rada.safe_write import VOLUME_SUFFIXES

    _check_outputs((args.out, VOLUME_SUFFIXES))
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

    _check_outputs((args.csv, None))
    rows, summary = evaluate_paths(args.pred, args.gt)
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        _print_json({"cases": rows, "summary": summary})
    else:
        print(format_table(rows, summary))
    return 0


def _int_triple(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers z,y,x, got {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive integers z,y,x, got {text!r}")
    return values  # type: ignore[return-value]


def _add_prepare_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-dataset", help="build a barely-supervised dataset.json from dense labels",
                       description="Build a training dataset folder (dataset.json + sparse annotations) with a "
                                   "benchmark's protocol. la2018: SRC/<ID>/{image,label}.nii.gz; a fixed split "
                                   "(16 validation cases; 8 labeled with their three largest-foreground slices, "
                                   "the rest unlabeled). Images are referenced in place, not copied.")
    p.add_argument("protocol", choices=["la2018"], help="benchmark protocol")
    p.add_argument("source", help="folder with one sub-folder per case")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--split", default=None,
                   help="split JSON (labeled/unlabeled/val id lists); default: bench/la2018_split.json of the "
                        "repository, else drawn from SRC/cases.list with the fixed seed")
    p.set_defaults(func=_run_prepare_dataset)


def _run_prepare_dataset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rada.dataset import SplitFile, build_la2018

    src = Path(args.source)
    if not src.is_dir():
        raise InputError(f"no such folder: {src}")
    split_path = Path(args.split) if args.split else Path(__file__).resolve().parents[1] / "bench" / "la2018_split.json"
    if split_path.exists():
        split = SplitFile.read(split_path)
    elif args.split:
        raise InputError(f"no such split file: {split_path}")
    elif (src / "cases.list").exists():
        split = SplitFile.make((src / "cases.list").read_text(encoding="utf-8").split())
    else:
        raise InputError(f"no split file and no {src / 'cases.list'} to draw one from")
    spec = build_la2018(src, args.out, split)
    _print_json({"dataset": str(Path(args.out) / "dataset.json"), "labeled": len(spec.labeled("train")),
                 "unlabeled": len(spec.unlabeled("train")), "val": len(spec.split("val"))})
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="co-train the tri-view RADA model on a dataset (resumable; torchrun for multi-GPU)",
                       description="Barely-supervised tri-view co-training (METHOD.md 5) on a dataset.json folder. "
                                   "Writes RUN/checkpoint.pt, RUN/log.csv and RUN/loss.png; pseudo-labels are "
                                   "propagated once per labeled case and cached in RUN/pseudo_labels. Multi-GPU: "
                                   "torchrun --nproc_per_node=N -m rada.cli train ...")
    p.add_argument("dataset", help="dataset folder (or its dataset.json)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", default=None, help="JSON file with TrainConfig fields (overridden by the flags below)")
    p.add_argument("--guidance", default="auto",
                   help="guidance embeddings file (rada embed), 'auto' (default: the dataset's "
                        "guidance_embeddings.npz, else computed if the encoder weights are installed, else off "
                        "with the reason in the checkpoint) or 'off'")
    p.add_argument("--iterations", type=int, default=None, help="default 6000")
    p.add_argument("--width", type=int, default=None, help="V-Net base width (default 16)")
    p.add_argument("--patch", type=_int_triple, default=None, help="training patch z,y,x (default 80,112,112)")
    p.add_argument("--loss-form", choices=["sgtc", "paper"], default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--validate-every", type=int, default=None,
                   help="validation Dice/HD95 on the dataset's val cases every N iterations (default 500, 0: never)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-bf16", action="store_true", help="full fp32 on CUDA")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoint.pt exactly")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from rada.train import TrainConfig, train_dataset

    cfg = TrainConfig()
    if args.config:
        try:
            raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot use config {args.config}: {exc}") from None
        cfg = TrainConfig.from_dict(raw, cfg)  # partial and nested; unknown keys/types are one-line errors
    sched = cfg.schedule if args.iterations is None else replace(cfg.schedule, iterations=args.iterations)
    overrides = {k: v for k, v in {"patch_size": args.patch, "loss_form": args.loss_form, "seed": args.seed,
                                   "checkpoint_every": args.checkpoint_every, "device": args.device,
                                   "validate_every": args.validate_every}.items()
                 if v is not None}
    backbone = cfg.model.backbone if args.width is None else replace(cfg.model.backbone, width=args.width)
    cfg = replace(cfg, model=replace(cfg.model, backbone=backbone), schedule=sched,
                  bf16=cfg.bf16 and not args.no_bf16, progress=not args.quiet, **overrides).validate()
    guidance = args.guidance

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"rada train: {message}", file=sys.stderr)

    result = train_dataset(args.dataset, args.out, cfg, guidance, resume=args.resume, progress=progress)
    import os

    if os.environ.get("RANK", "0") == "0":
        _print_json({"checkpoint": str(result.checkpoint), "iterations": result.iterations, "log": str(result.log),
                     "curve": str(result.curve) if result.curve else None, "guidance": result.guidance,
                     "best": str(result.best) if result.best else None,
                     "best_val_dice": result.validation.get("best_dice"),
                     "best_iteration": result.validation.get("best_iteration")})
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment a volume with a trained RADA checkpoint (sliding window)",
                       description="Sliding-window inference of a trained tri-view model: one view's softmax "
                                   "or the mean of the three. The output keeps the image's geometry.")
    p.add_argument("image", help="image volume (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--model", required=True, help="checkpoint from rada train")
    p.add_argument("--out", required=True, help="label volume to write")
    p.add_argument("--annotation", default=None, help="sparse annotation: annotated voxels keep their value")
    p.add_argument("--probability", default=None, help="also write the foreground probability here")
    p.add_argument("--view", default="mean", choices=["mean", "sagittal", "coronal", "axial"])
    p.add_argument("--stride", type=_int_triple, default=None, help="window stride z,y,x (default half the patch)")
    p.add_argument("--blending", default="gaussian", choices=["gaussian", "uniform"])
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--report", default=None, help="write the JSON report here (also printed on stdout)")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    import time

    from rada.infer import InferenceConfig, predict
    from rada.io import read_annotation, read_volume, write_volume
    from rada.safe_write import VOLUME_SUFFIXES, OutputSet

    _check_outputs((args.out, VOLUME_SUFFIXES), (args.probability, VOLUME_SUFFIXES), (args.report, None))
    image = read_volume(args.image)
    annotation = read_annotation(args.annotation, reference=image) if args.annotation else None
    t0 = time.perf_counter()
    result = predict(image, args.model, InferenceConfig(stride=args.stride, blending=args.blending,
                                                        batch_size=args.batch_size, view=args.view,
                                                        device=args.device), annotation=annotation)
    report = {"out": str(args.out), "seconds": round(time.perf_counter() - t0, 3),
              "foreground_voxels": int(result.label.array.sum()),
              **{k: v for k, v in result.info.items()}}
    with OutputSet() as outputs:
        write_volume(result.label, args.out, outputs=outputs)
        if args.probability:
            write_volume(result.probability, args.probability, outputs=outputs)
        _stage_report(report, args.report, outputs)
    _print_json(report)
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from rada.service.app import serve
    from rada.service.settings import MIB, ServiceSettings

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


def _add_web(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run_web)


def _run_web(args: argparse.Namespace) -> int:
    from rada.web import cli_config
    from rada.web.app import run

    return run(cli_config(args))


def _add_weights(sub: argparse._SubParsersAction) -> None:
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
    d.set_defaults(func=_run_weights_download)
    i = actions.add_parser("import", help="copy a weights file fetched elsewhere into the cache (offline path)")
    i.add_argument("file", help="the file, e.g. ViT-B-16.pt or clip_b16_grit1m_fultune_8xe.pth")
    i.add_argument("--name", default=None, help="registry name, if the file was renamed")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=_run_weights_import)
    ls = actions.add_parser("list", help="known weights, where they are, their sha256")
    ls.set_defaults(func=_run_weights_list)


def _run_weights_download(args: argparse.Namespace) -> int:
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
    _print_json(rows)
    return 0


def _run_weights_import(args: argparse.Namespace) -> int:
    from rada.guidance import weights as W

    path = W.import_file(args.file, name=args.name, progress=not args.quiet)
    record = W.read_manifest().get(path.name, {})
    _print_json({"path": str(path), "sha256": record.get("sha256"), "verified": bool(record.get("verified"))})
    return 0


def _run_weights_list(args: argparse.Namespace) -> int:
    from rada.guidance import weights as W

    _print_json(W.list_weights())
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    # Not importing rada.guidance here: it loads torch, which would cost every `rada` call
    # (and every one-line error) seconds; the encoder name is checked when embed runs.
    p = sub.add_parser("embed", help="Alpha-CLIP text + per-view visual embeddings, computed once (cache file)",
                       description="Compute the frozen dual encoder's guidance embeddings once: the prompt's "
                                   "text embedding and, per view, the mean visual embedding of the labeled "
                                   "volumes' annotated slices (image + mask). Input: a dataset folder (its "
                                   "labeled train cases; written to DATASET/guidance_embeddings.npz by default) "
                                   "or image volumes with --annotation. Without weights the guidance is off: "
                                   "exit 2, or with --allow-off a file that says so.")
    p.add_argument("inputs", nargs="+", metavar="DATASET_OR_IMAGES", help="dataset folder, or image volumes")
    p.add_argument("--annotation", nargs="+", default=None, help="sparse annotations, one per image")
    p.add_argument("--organ", default=None, help="structure name for the prompt (images mode; datasets have one)")
    p.add_argument("--prompt", default=None,
                   help="text prompt (default: 'An image containing the {organ}, with the rest being background')")
    p.add_argument("--out", default=None, help="embeddings file (.npz)")
    p.add_argument("--encoder", default=None,
                   help="weights variant in the cache (default alpha-clip-b16-grit1m; see rada weights list)")
    p.add_argument("--openai", default=None, help="use this OpenAI ViT-B-16.pt instead of the cache")
    p.add_argument("--visual", default=None, help="use this Alpha-CLIP visual checkpoint instead of the cache")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument("--allow-off", action="store_true", help="without weights, write a guidance-off file (exit 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rada.guidance import compute_embeddings, embed_dataset, save_embeddings
    from rada.guidance.weights import DEFAULT_VARIANT, VARIANTS, ResolvedWeights, sha256_file

    args.encoder = args.encoder or DEFAULT_VARIANT
    if args.encoder not in VARIANTS:
        raise InputError(f"unknown --encoder {args.encoder!r}; use one of {', '.join(sorted(VARIANTS))}")

    weights = None
    if args.openai or args.visual:
        if not args.openai:
            raise InputError("--visual needs --openai (the Alpha-CLIP file holds only the visual tower)")
        files = [Path(f) for f in (args.openai, args.visual) if f]
        for f in files:
            if not f.is_file():
                raise InputError(f"no such file: {f}")
        weights = ResolvedWeights("files", files[0], files[1] if len(files) > 1 else None,
                                  {f.name: sha256_file(f) for f in files})
    for given in [*args.inputs, *(args.annotation or [])]:
        if not Path(given).exists():
            raise InputError(f"no such file or folder: {given}")
    first = Path(args.inputs[0])
    dataset_mode = len(args.inputs) == 1 and (first.is_dir() or first.name == "dataset.json")
    t0 = time.perf_counter()
    if args.quiet:
        bar, progress = None, (lambda fraction, stage, message: None)
    else:
        bar, progress = _stderr_progress("embed")
    try:
        if dataset_mode:
            if args.annotation:
                raise InputError("--annotation is for images; a dataset lists its own annotations")
            try:
                emb, out = embed_dataset(first, args.out, weights, variant=args.encoder, prompt=args.prompt,
                                         device=args.device, batch_size=args.batch_size, allow_off=args.allow_off,
                                         progress=lambda f, m: progress(f, "embed", m))
            except InputError as exc:
                if str(exc).startswith("guidance off"):
                    raise InputError(f"{exc}; --allow-off writes a guidance-off file instead") from None
                raise
        else:
            from rada.io import read_annotation, read_volume

            if not args.annotation or len(args.annotation) != len(args.inputs):
                raise InputError(f"give one --annotation per image ({len(args.inputs)} images, "
                                 f"{len(args.annotation or [])} annotations)")
            if not args.organ:
                raise InputError("--organ is needed for images (e.g. --organ 'left atrium')")
            if not args.out:
                raise InputError("--out is needed for images")
            emb = compute_embeddings((read_volume(p) for p in args.inputs),
                                     (read_annotation(a) for a in args.annotation), args.organ, weights,
                                     prompt=args.prompt, variant=args.encoder, device=args.device,
                                     batch_size=args.batch_size, case_ids=[Path(p).name for p in args.inputs],
                                     progress=lambda f, m: progress(f, "embed", m))
            out = None
    finally:
        if bar is not None:
            bar.close()
    if not emb.enabled and not args.allow_off:
        raise InputError(f"{emb.reason}; --allow-off writes a guidance-off file instead")
    if out is None:
        out = save_embeddings(emb, args.out)
    source = emb.source
    _print_json({"out": str(out), "enabled": emb.enabled, "reason": emb.reason, "organ": emb.organ,
                 "prompt": emb.prompt, "encoder": source.get("variant"), "sha256": source.get("sha256"),
                 "slices": source.get("slices"), "cases": source.get("cases"),
                 "seconds": round(time.perf_counter() - t0, 3)})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rada", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rada {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, obj in sorted(globals().items()):
        if name.startswith("_add_") and callable(obj):
            obj(sub)
    return parser


#: Optional packages -> the ``pip install "rada[EXTRA]"`` extra that brings them.
_EXTRAS = {"fastapi": "server", "uvicorn": "server", "httpx": "server", "multipart": "server",
           "python_multipart": "server", "open_clip": "guidance", "torchvision": "guidance",
           "matplotlib": "plots", "trame": "web", "trame_slicer": "web",
           "slicer": "web", "undo_stack": "web"}


def _missing_extra(exc: ModuleNotFoundError) -> str:
    """One line for a missing optional package: which extra installs it."""
    module = (exc.name or "").split(".")[0]
    extra = _EXTRAS.get(module)
    if extra is None:
        return f"the Python package {module or exc} is missing (pip install {module})"
    return f"this command needs the '{extra}' extra ({module} is missing): pip install \"rada[{extra}]\""


def main(argv: Sequence[str] | None = None) -> int:
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
        print(f"rada {args.command}: error: {_missing_extra(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rada {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``rada segment``, ``rada propagate``, ``rada predict``: a label volume from one image.

The work modules are imported inside the ``run_*`` functions: the parser is built on every
call (``--help`` and one-line errors included), and only the command that runs should pay
for its imports (SimpleITK, scipy, torch).
"""

from __future__ import annotations

import argparse
import time

from rada.cli.common import check_outputs, int_triple, print_json, stage_report, stderr_progress
from rada.safe_write import VOLUME_SUFFIXES, OutputSet
from rada.views import VIEW_NAMES


def add_segment(sub: argparse._SubParsersAction) -> None:
    """Register ``rada segment`` (the Segment button without Slicer)."""
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
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    """Segment one image from its painting; write the label (and the report) together."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.io import Segment, Segmentation, load_annotation, read_volume, write_segmentation, write_volume
    from rada.pipeline import SegmentConfig, segment_case

    check_outputs((args.out, VOLUME_SUFFIXES), (args.report, None))
    image = read_volume(args.image)
    painted = load_annotation(args.annotation, args.segment, reference=image)
    bar, progress = stderr_progress("segment")
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
        stage_report(report, args.report, outputs)
    print_json(report)
    return 0


def add_propagate(sub: argparse._SubParsersAction) -> None:
    """Register ``rada propagate`` (ANTs slice-to-slice propagation)."""
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
    p.set_defaults(func=run_propagate)


def run_propagate(args: argparse.Namespace) -> int:
    """Propagate the annotated slices; write the pseudo-labels (.npz) and optionally the fused label."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.io import read_annotation, read_volume, write_volume
    from rada.propagation import PropagationConfig, propagate, save_propagation

    check_outputs((args.out, None), (args.fused, VOLUME_SUFFIXES))
    image = read_volume(args.image)
    annotation = read_annotation(args.annotation, reference=image).validate(image)
    # the flag's historical names: fast = registration at half resolution
    config = PropagationConfig(transform=args.transform, resolution={"full": "full", "fast": "half"}[args.preset],
                               workers=args.workers, seed=args.seed, crop=not args.no_crop)
    bar, progress = stderr_progress("propagate")
    try:
        result = propagate(image, annotation, config,
                           progress=lambda fraction, message: progress(fraction, "register", message))
    finally:
        bar.close()
    save_propagation(result, args.out)
    if args.fused:
        write_volume(image.with_array(result.fused), args.fused)
    print_json({"out": str(args.out), "fused": args.fused, "annotated_slices": annotation.slices(),
                "stats": {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))}})
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    """Register ``rada predict`` (sliding-window inference of a trained checkpoint)."""
    p = sub.add_parser("predict", help="segment a volume with a trained RADA checkpoint (sliding window)",
                       description="Sliding-window inference of a trained tri-view model: one view's softmax "
                                   "or the mean of the three. The output keeps the image's geometry.")
    p.add_argument("image", help="image volume (NIfTI, NRRD, MHA or a DICOM folder)")
    p.add_argument("--model", required=True, help="checkpoint from rada train")
    p.add_argument("--out", required=True, help="label volume to write")
    p.add_argument("--annotation", default=None, help="sparse annotation: annotated voxels keep their value")
    p.add_argument("--probability", default=None, help="also write the foreground probability here")
    p.add_argument("--view", default="mean", choices=["mean", *VIEW_NAMES])
    p.add_argument("--stride", type=int_triple, default=None, help="window stride z,y,x (default half the patch)")
    p.add_argument("--blending", default="gaussian", choices=["gaussian", "uniform"])
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--report", default=None, help="write the JSON report here (also printed on stdout)")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Predict one image with a checkpoint; write the label, probability and report together."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.infer import InferenceConfig, predict
    from rada.io import read_annotation, read_volume, write_volume

    check_outputs((args.out, VOLUME_SUFFIXES), (args.probability, VOLUME_SUFFIXES), (args.report, None))
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
        stage_report(report, args.report, outputs)
    print_json(report)
    return 0

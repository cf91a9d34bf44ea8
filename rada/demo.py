"""The built-in demo: Segment on a synthetic organ phantom, scored against its truth.

``rada demo`` needs no data: it makes a phantom, paints its three largest slices, segments
it, scores the result (and the extrude-intersect baseline) and writes the files a user can
open in 3D Slicer, all together or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rada.annotation import SparseAnnotation
from rada.errors import InputError
from rada.io import Segment, Segmentation, write_segmentation, write_volume
from rada.metrics import SegmentationScores, evaluate
from rada.phantom import PhantomConfig, make_phantom
from rada.pipeline import SegmentConfig, segment_case
from rada.safe_write import OutputSet, check_output
from rada.shape_prior import visual_hull


@dataclass(frozen=True)
class DemoConfig:
    """What ``rada demo`` runs.

    Attributes:
        out: folder for the demo's files.
        seed: the phantom's random seed.
        preset: the Segment preset (``fast`` or ``full``).
    """

    out: Path = Path("rada-demo")
    seed: int = 0
    preset: str = "fast"


@dataclass
class DemoResult:
    """The demo's scores and its summary (also written to ``out/report.json``).

    Attributes:
        scores: the segmentation against the phantom's truth.
        baseline: extrude-intersect of the three painted slices against the truth.
        summary: Dice, HD95 (mm), baseline Dice, seconds, files and the Segment report.
    """

    scores: SegmentationScores                       # the segmentation against the phantom's truth
    baseline: SegmentationScores                     # extrude-intersect of the three painted slices
    summary: dict[str, Any] = field(default_factory=dict)


def run_demo(config: DemoConfig, progress: Callable[[float, str, str], None] | None = None) -> DemoResult:
    """Segment a phantom organ from its three largest slices and write the demo's files.

    Args:
        config: output folder, phantom seed and Segment preset.
        progress: ``progress(fraction, stage, message)`` of the segmentation.

    Returns:
        The scores and the summary (files, Dice, HD95, seconds, the Segment report).

    Raises:
        InputError: ``config.out`` is a file, or its files cannot be written (checked before any work).
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write into {out}: it is a file, not a folder")
    check_output(out / "report.json")
    image, truth = make_phantom(PhantomConfig(seed=config.seed))
    annotation = SparseAnnotation.from_dense(truth)
    result = segment_case(image, annotation, SegmentConfig(preset=config.preset), progress=progress)
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
    return DemoResult(scores, hull, summary)

"""Segment from three painted slices: RADA vs. the baselines a clinician already has.

Per case, side by side in one run: Dice / HD95 (mm) / seconds for
  * extrude-intersect: each painted slice extruded along its axis, intersected;
  * ANTs majority: DeSCO-style slice-to-slice propagation along each axis (sequential,
    full resolution, SyNRA), majority of the three (skip with --no-ants: ~75 s per case);
  * rada fast: `rada segment --preset fast` (shape prior + intensities, CPU);
  * rada full: `--preset full` (adds parallel ANTs propagation), with --full;
  * rada + model: with --model CKPT (a model trained on cases disjoint from these).

Cases: the fixed validation split in bench/la2018_split.json when present (never tuned
on), else the last 16 of cases.list; plus the abdominal CT liver.

    python bench/segment.py [--cases N] [--no-ants] [--full] [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rada.annotation import SparseAnnotation
from rada.io import read_volume
from rada.metrics import evaluate
from rada.pipeline import SegmentConfig, segment_case
from rada.shape_prior import visual_hull

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def validation_cases() -> list[str]:
    split = ROOT / "bench" / "la2018_split.json"
    if split.exists():
        return json.loads(split.read_text(encoding="utf-8"))["val"]
    return (DATA / "la2018" / "cases.list").read_text(encoding="utf-8").split()[-16:]


def ants_majority(image, sparse):
    """The reference path: sequential DeSCO-style propagation at full resolution."""
    from rada.propagation import PropagationConfig, propagate

    reference = PropagationConfig(workers=1, crop=False, stop_at_extent=False, transform="SyNRA")
    return propagate(image, sparse, reference).fused > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--no-ants", action="store_true", help="skip the slow ANTs reference path")
    ap.add_argument("--full", action="store_true", help="also run the full preset")
    ap.add_argument("--model", default=None, help="trained checkpoint to add as evidence")
    args = ap.parse_args()

    methods = {"extrude-intersect": lambda im, sp: visual_hull(sp)}
    if not args.no_ants:
        methods["ANTs majority"] = ants_majority
    methods["rada fast"] = lambda im, sp: segment_case(im, sp, SegmentConfig("fast")).label.array > 0
    if args.full:
        methods["rada full"] = lambda im, sp: segment_case(im, sp, SegmentConfig("full")).label.array > 0
    if args.model:
        methods["rada fast+model"] = lambda im, sp: segment_case(
            im, sp, SegmentConfig("fast", model=args.model)).label.array > 0

    cases = [(cid, DATA / "la2018" / cid) for cid in validation_cases()[: args.cases]]
    cases.append(("CT liver", DATA / "ct_abdomen_liver"))
    names = list(methods)
    head = f"{'case':<22}" + "".join(f"| {n:^24}" for n in names)
    sub = f"{'':<22}" + "".join(f"| {'Dice':>7} {'HD95mm':>7} {'s':>7} " for _ in names)
    print(head, sub, "-" * len(sub), sep="\n", flush=True)
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {"LA": {n: [] for n in names},
                                                                       "CT": {n: [] for n in names}}
    for cid, folder in cases:
        image, label = read_volume(folder / "image.nii.gz"), read_volume(folder / "label.nii.gz")
        sparse = SparseAnnotation.from_dense(label)
        row = f"{cid[:22]:<22}"
        for name, fn in methods.items():
            t0 = time.perf_counter()
            mask = fn(image, sparse)
            seconds = time.perf_counter() - t0
            s = evaluate(mask, label.array > 0, image.spacing[::-1])
            hd = s.hd95_mm if s.hd95_mm is not None else float("nan")
            results["CT" if cid == "CT liver" else "LA"][name].append((s.dice, hd, seconds))
            row += f"| {s.dice:>7.4f} {hd:>7.2f} {seconds:>7.2f} "
        print(row, flush=True)
    print("-" * len(sub))
    for group, per in results.items():
        if not any(per.values()):
            continue
        row = f"{'mean ' + group:<22}"
        for name in names:
            arr = np.array(per[name])
            row += f"| {arr[:, 0].mean():>7.4f} {np.nanmean(arr[:, 1]):>7.2f} {arr[:, 2].mean():>7.2f} "
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reduced LA2018 protocol: does tri-view co-training learn more than its pseudo-labels?

Sized for 2 CPU cores in <= 45 minutes (lower resolution, width, patch and iterations than
the paper), resumable: run it again with the same ``--out`` and it continues where it
stopped (the checkpoint is exact; baselines and pseudo-labels are cached).

1. Data: LA2018 from ``../shared/data/la2018`` with ``bench/la2018_split.json`` (8 labeled
   cases with their three largest-foreground slices, the rest of the train split unlabeled,
   the first ``--val-cases`` of its 16 validation cases), every volume downscaled by ``--shrink`` (SimpleITK BinShrink for
   images, nearest for labels; spacing updated, origin and direction kept) into ``--out``.
2. Baselines on the validation cases, each given the case's own three painted slices
   (the trained model gets none): the ANTs pseudo-labels (per view, and their majority) and
   ``rada segment --preset fast``.
3. Training (``rada.train.train_dataset``, guidance ``auto``) with validation Dice/HD95 every
   ``--validate-every`` iterations; ``--minutes`` is the whole script's budget (preparation
   included): training stops at the last validation that leaves it unspent.
4. ``bench/RESULTS.md`` gets the table; the curve and (if <= 10 MB) the best checkpoint
   are copied beside it.

    nice -n 10 python bench/reduced_la.py --out /tmp/rada-reduced-la --minutes 45
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rada, not an installed one
MAX_CHECKPOINT_MB = 10.0


class BudgetSpent(Exception):
    """The time budget is spent; the last checkpoint is on disk."""


def shrink_dataset(source: Path, out: Path, factor: int, n_val: int) -> Path:
    """Downscaled LA cases in ``out/cases/<ID>/{image,label}.nii.gz`` and the dataset in ``out/dataset``
    (the first ``n_val`` validation cases of the split); ``factor`` 1 uses the source cases as they are."""
    import SimpleITK as sitk

    from rada.dataset import SplitFile, build_la2018

    split = SplitFile.read(REPO / "bench" / "la2018_split.json")
    split = SplitFile(split.labeled, split.unlabeled, split.val[:n_val])
    dataset = out / "dataset"
    if factor == 1:  # the paper's resolution: reference the source cases in place, nothing rewritten
        if not (dataset / "dataset.json").exists():
            build_la2018(source, dataset, split)
        return dataset
    cases = out / "cases"
    for cid in split.labeled + split.unlabeled + split.val:
        dst = cases / cid
        if (dst / "label.nii.gz").exists():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(str(source / cid / "image.nii.gz"), sitk.sitkFloat32)
        label = sitk.ReadImage(str(source / cid / "label.nii.gz"), sitk.sitkFloat32)
        small = sitk.BinShrink(image, [factor] * 3)
        small_label = sitk.Cast(sitk.BinShrink(label, [factor] * 3) >= 0.5, sitk.sitkUInt8)
        sitk.WriteImage(small, str(dst / "image.nii.gz"), True)
        sitk.WriteImage(small_label, str(dst / "label.nii.gz"), True)
    if not (dataset / "dataset.json").exists():
        build_la2018(cases, dataset, split)
    return dataset


def baselines(dataset: Path, out: Path) -> dict:
    """Dice/HD95 (voxels) on the validation cases of the ANTs pseudo-labels and of ``segment --preset fast``."""
    cache = out / "baselines.json"
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    from rada.annotation import SparseAnnotation
    from rada.dataset import read_dataset
    from rada.io import read_volume
    from rada.metrics import evaluate
    from rada.pipeline import SegmentConfig, segment_case
    from rada.propagation import PropagationConfig, propagate

    spec = read_dataset(dataset)
    rows: dict[str, list] = {"pseudo_sagittal": [], "pseudo_coronal": [], "pseudo_axial": [], "pseudo_majority": [],
                             "segment_fast": []}
    t0 = time.perf_counter()
    for case in spec.split("val"):
        image, label = read_volume(spec.path(case.image)), read_volume(spec.path(case.label))
        truth = label.array > 0
        annotation = SparseAnnotation.from_dense(label)
        result = propagate(image, annotation, PropagationConfig())
        known = annotation.known()
        votes = np.zeros(truth.shape, np.int16)
        for view, prop in result.views.items():
            pseudo = np.asarray(prop.label, bool).copy()
            pseudo[known] = annotation.array[known] == 1  # the painted planes, as the training targets
            votes += pseudo
            rows[f"pseudo_{view}"].append(evaluate(pseudo, truth).as_dict())
        rows["pseudo_majority"].append(evaluate(votes >= 2, truth).as_dict())
        seg = segment_case(image, annotation, SegmentConfig(preset="fast", device="cpu"))
        rows["segment_fast"].append(evaluate(seg.label.array > 0, truth).as_dict())
        print(f"baselines {case.id}: majority Dice {rows['pseudo_majority'][-1]['dice']:.3f}, "
              f"fast Dice {rows['segment_fast'][-1]['dice']:.3f}", file=sys.stderr)
    summary = {k: _mean_scores(v) for k, v in rows.items()}
    summary["seconds"] = time.perf_counter() - t0
    cache.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _mean_scores(rows: list[dict]) -> dict:
    hd = [r["hd95"] for r in rows if r["hd95"] is not None]
    return {"dice": float(np.mean([r["dice"] for r in rows])), "hd95": float(np.mean(hd)) if hd else None,
            "empty": sum(r["hd95"] is None for r in rows), "n": len(rows)}


def train_reduced(dataset: Path, run: Path, args: argparse.Namespace, deadline: float | None) -> object:
    """Train until the schedule ends or, with a ``deadline`` (``time.monotonic()``), stop right after
    the last validation whose next block of ``--validate-every`` iterations would not finish in time
    (so the run ends on a validated, checkpointed iteration inside the budget)."""
    from rada.nets import ModelConfig
    from rada.train import ScheduleConfig, TrainConfig, train_dataset

    # The paper's schedule shape, compressed to the run's nominal length (milestones, ramps, alpha refreshes).
    schedule = ScheduleConfig().scaled(args.iterations)
    config = TrainConfig(model=ModelConfig.make(width=args.width), schedule=schedule, patch_size=args.patch,
                         device="cpu", checkpoint_every=args.checkpoint_every, validate_every=args.validate_every,
                         progress=not args.quiet, seed=0)
    last: dict[str, float] = {}  # time and iteration of the last validation (or of the first callback)

    def budget(iteration: int, values: dict) -> None:
        now = time.monotonic()
        if not last:  # timed from here: the pseudo-label propagation before it is not an iteration
            last.update(time=now, iteration=iteration)
            return
        if deadline is None or iteration % args.validate_every:
            return
        # seconds per iteration over the last block, its validation included
        per_iteration = (now - last["time"]) / max(iteration - last["iteration"], 1)
        last.update(time=now, iteration=iteration)
        if now + 1.1 * per_iteration * args.validate_every > deadline:
            raise BudgetSpent(iteration)

    try:
        return train_dataset(dataset, run, replace(config), "auto", resume=True, callback=budget,
                             progress=lambda m: print(f"train: {m}", file=sys.stderr))
    except BudgetSpent:
        return None


def write_results(run: Path, base: dict, args: argparse.Namespace, minutes: dict[str, float]) -> Path:
    """Append/replace the reduced-LA section of bench/RESULTS.md; copy the curve and small checkpoint."""
    from rada.checkpoint import load_checkpoint
    from rada.train.run_log import plot_log, read_log

    state = load_checkpoint(run / "checkpoint.pt")
    val = state.get("validation") or {}
    history = val.get("history", [])
    rows = read_log(run / "log.csv")
    bench = REPO / "bench"
    curve = plot_log(run / "log.csv", bench / "reduced_la_curve.png")
    best = run / "best.pt"
    kept = None
    if best.exists() and best.stat().st_size / 2**20 <= MAX_CHECKPOINT_MB:
        kept = bench / "reduced_la_best.pt"
        shutil.copyfile(best, kept)
    g = state.get("guidance", {})
    lines = [
        "## Reduced LA2018 protocol (bench/reduced_la.py)",
        "",
        f"LA2018 downscaled x{args.shrink} (BinShrink), 8 labeled cases (three painted slices each) + "
        f"{args.unlabeled} unlabeled, {args.val_cases} validation cases (first of bench/la2018_split.json); width {args.width}, patch "
        f"{list(args.patch)}, {state['iteration']} of {args.iterations} iterations done "
        f"(this session's wall clock: {_fmt_minutes(minutes)}; CPU, {args.threads} torch threads); "
        f"{g.get('reason') or ('guidance on' if g.get('enabled') else 'guidance off')}.",
        "",
        "| method (validation cases) | sees the case's painted slices | Dice | HD95 (vox) | empty |",
        "|---|---|---|---|---|",
    ]
    for key, name in (("pseudo_sagittal", "ANTs pseudo-label, sagittal view"),
                      ("pseudo_coronal", "ANTs pseudo-label, coronal view"),
                      ("pseudo_axial", "ANTs pseudo-label, axial view"),
                      ("pseudo_majority", "ANTs pseudo-labels, majority of 3"),
                      ("segment_fast", "`rada segment --preset fast`")):
        b = base[key]
        lines.append(f"| {name} | yes | {b['dice']:.4f} | {_fmt(b['hd95'])} | {b['empty']}/{b['n']} |")
    for h in history:
        lines.append(f"| tri-view co-training, iteration {h['iteration']} | no | {h['dice']:.4f} | "
                     f"{_fmt(h['hd95'])} | {h['empty']}/{len(h['per_case'])} |")
    if val.get("best_dice") is not None:
        lines += ["", f"Best validation Dice {val['best_dice']:.4f} at iteration {val['best_iteration']}."]
    if rows:
        sec = [r["seconds"] for r in rows]
        lines += [f"Median {np.median(sec):.2f} s per iteration on this machine."]
    lines += ["", f"Curve: `bench/{curve.name}`." if curve else "",
              f"Best checkpoint: `bench/{kept.name}` ({kept.stat().st_size / 2**20:.1f} MB)." if kept else
              "Best checkpoint not kept (none yet, or over 10 MB).", ""]
    results = bench / "RESULTS.md"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n\n"
    section = "\n".join(lines).rstrip("\n") + "\n"
    start = text.find("## Reduced LA2018 protocol")
    if start < 0:  # a new section at the end
        text = text.rstrip("\n") + "\n\n" + section
    else:  # replaced where it stands; a hand-written reading after its generated lines is replaced too
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    results.write_text(text, encoding="utf-8")
    return results


def _fmt_minutes(minutes: dict[str, float]) -> str:
    return ", ".join(f"{name} {m:.1f} min" for name, m in minutes.items()) + f", total {sum(minutes.values()):.1f} min"


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "la2018"))
    p.add_argument("--out", default="/tmp/rada-reduced-la", help="work folder (resumable; not in the repository)")
    p.add_argument("--shrink", type=int, default=2)
    p.add_argument("--val-cases", type=int, default=8, help="first N validation cases of the split (of 16)")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--patch", type=lambda s: tuple(int(v) for v in s.split(",")), default=(32, 48, 48))
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--minutes", type=float, default=45.0,
                   help="wall-clock budget of the whole script, preparation included: training stops at the last "
                        "validation that leaves the budget unspent (0: no limit)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (2 on a quiet 2-core machine: 2.3 s per iteration against 3.6 s with 1)")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--report-only", action="store_true", help="only rewrite bench/RESULTS.md from the run")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.validate_every % args.checkpoint_every:
        p.error("--validate-every must be a multiple of --checkpoint-every (a stop must land on a checkpoint)")
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    deadline = t0 + 60 * args.minutes if args.minutes else None
    out = Path(args.out)
    data = Path(args.data)
    if not data.is_dir():
        print(f"no LA2018 data at {data}", file=sys.stderr)
        return 2
    minutes: dict[str, float] = {}
    mark = [t0]

    def lap(name: str) -> None:
        now = time.monotonic()
        minutes[name] = (now - mark[0]) / 60
        mark[0] = now

    dataset = shrink_dataset(data, out, args.shrink, args.val_cases)
    from rada.dataset import read_dataset

    args.unlabeled = len(read_dataset(dataset).unlabeled("train"))
    lap("data")
    base = baselines(dataset, out) if not args.skip_baselines else {}
    lap("baselines")
    run = out / "run"
    if not args.report_only:
        train_reduced(dataset, run, args, deadline)
        lap("pseudo-labels + training")
    if base:
        print(write_results(run, base, args, minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Segment vs. the tools a clinician already has, on every structure and the LA validation split.

For k = 1, 2, 3 painted slices per axis (the protocol of ``shared/data/README.md``: k = 1 the
largest-area slice, k >= 2 the centres of k equal parts of the structure's extent on that
axis, which may show no structure), per case, side by side in one run, Dice and seconds of:

  * ``fast``: ``rada segment --preset fast`` (``rada.pipeline.segment_case``);
  * ``full``: ``--preset full`` (adds ANTs propagation; ~30 s per LA case);
  * ``finetune``: ``--preset finetune`` (ANTs propagation + the tri-view V-Nets fine-tuned on
    the case, device profile; ~60-85 s per LA case on 2 CPU cores);
  * ``growcut``: Slicer's Grow from seeds (``slicer.vtkImageGrowCutSegment``; seeds: painted
    structure = 1, painted background = 2), needs slicer-core;
  * ``fill``: Slicer's Fill between slices (``slicer.vtkITKMorphologicalContourInterpolator``
    on the painted structure), needs slicer-core;
  * ``extrude``: extrude-intersect, every painted slice extruded along its axis, intersected.

Groups: structures dev / structures held-out / LA dev / LA held-out, as fixed before tuning in
``bench/peers_split.json``. Means per group, per k and method, then the goal checks of issue
#10: the gap to the best classic tool, k -> k + 1 drops, and the worst cases; and of issue #11:
``finetune`` against ``fast`` per case.

Memory: every (case, method) runs in a fresh process, and its peak resident memory is read
from the kernel's high-water mark (reset before each k; Linux only, nan elsewhere). ANTs
registration workers are other processes and are not counted.

    python bench/peers.py [--methods fast,growcut,fill,extrude] [--k 1,2,3]
                          [--cases SUBSTR,...] [--groups dev,heldout] [--full-k 1]
                          [--finetune-k 1] [--jobs 2]
                          [--reuse earlier.json] [--json out.json]

``--reuse`` takes the classic tools of an earlier run's JSON that are not run now (same cases
and k; the painted slices are checked where the JSON records them) into the table, so that a change to ``fast`` is compared with the
unchanged, deterministic classic tools without rerunning them (Grow from seeds takes 10-60 s
per case). The printed header names the file they come from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))  # this checkout's rada, not an installed one
SPLIT = json.loads((ROOT / "bench" / "peers_split.json").read_text(encoding="utf-8"))
ALL_METHODS = ("fast", "full", "finetune", "growcut", "fill", "extrude")
#: Methods slow enough to be run only at some k (``--full-k``, ``--finetune-k``).
SLOW = ("full", "finetune")
CLASSIC = ("growcut", "fill", "extrude")


def list_cases() -> list[dict[str, str]]:
    """Every structure of ``structures/cases.tsv`` and the 16 LA validation cases, with their group."""
    cases = []
    tsv = DATA / "structures" / "cases.tsv"
    for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
        source, structure = line.split("\t")[:2]
        name = f"{source}/{structure}"
        cases.append({"name": name, "group": "struct-" + ("heldout" if name in SPLIT["heldout_structures"] else "dev"),
                      "image": str(DATA / "structures" / source / "image.nii.gz"),
                      "label": str(DATA / "structures" / source / "labels" / f"{structure}.nii.gz")})
    val = json.loads((ROOT / "bench" / "la2018_split.json").read_text(encoding="utf-8"))["val"]
    for i, cid in enumerate(val):
        cases.append({"name": f"la/{cid}", "group": "LA-" + ("heldout" if i >= 8 else "dev"),
                      "image": str(DATA / "la2018" / cid / "image.nii.gz"),
                      "label": str(DATA / "la2018" / cid / "label.nii.gz")})
    return cases


def _vtk_image(array: np.ndarray, spacing_xyz) -> "object":
    import vtk
    from vtk.util import numpy_support

    img = vtk.vtkImageData()
    img.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    img.SetSpacing(*spacing_xyz)
    data = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    img.GetPointData().SetScalars(data)
    return img


def _numpy(img, shape) -> np.ndarray:
    from vtk.util import numpy_support

    return numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(shape)


def growcut(image, sparse) -> np.ndarray:
    """Slicer's Grow from seeds: painted structure seeds label 1, painted background label 2."""
    import slicer

    seeds = np.zeros(sparse.shape, np.int16)
    known = sparse.known()
    seeds[known & sparse.foreground()] = 1
    seeds[known & ~sparse.foreground()] = 2
    gc = slicer.vtkImageGrowCutSegment()
    gc.SetIntensityVolume(_vtk_image(image.array.astype(np.int16 if image.array.dtype.kind in "iu" else np.float32),
                                     image.spacing))
    gc.SetSeedLabelVolume(_vtk_image(seeds, image.spacing))
    gc.Update()
    return _numpy(gc.GetOutput(), sparse.shape) == 1


def fill_between(image, sparse) -> np.ndarray:
    """Slicer's Fill between slices: morphological contour interpolation of the painted structure."""
    import slicer

    lab = np.zeros(sparse.shape, np.uint8)
    lab[sparse.known() & sparse.foreground()] = 1
    mci = slicer.vtkITKMorphologicalContourInterpolator()
    mci.SetInputData(_vtk_image(lab, image.spacing))
    mci.Update()
    return _numpy(mci.GetOutput(), sparse.shape) > 0


def _reset_peak_rss() -> None:
    """Reset this process's resident-memory high-water mark (Linux >= 4.0; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB (nan where /proc is absent)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return float("nan")
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return round(kib / 1024, 1) if kib is not None else float("nan")


def _method(name: str) -> Callable:
    from rada.pipeline import SegmentConfig, segment_case
    from rada.shape_prior import visual_hull

    if name in ("fast", "full", "finetune"):
        return lambda im, sp: segment_case(im, sp, SegmentConfig(name)).label.array > 0
    return {"growcut": growcut, "fill": fill_between, "extrude": lambda im, sp: visual_hull(sp)}[name]


def run_case(case: dict[str, str], ks: list[int], methods: list[str],
             only_ks: dict[str, list[int]] | None = None) -> list[dict]:
    """All methods at every k on one case; one row per (case, k).

    Args:
        case: one entry of :func:`list_cases`.
        ks: painted slices per axis.
        methods: names from ``ALL_METHODS``.
        only_ks: per slow method, the only k it runs at (others are reported as skipped).

    Returns:
        Rows with, per method, Dice, seconds and peak memory (MiB), or the error it raised.
    """
    from rada.annotation import SparseAnnotation, protocol_slices
    from rada.io import read_volume
    from rada.metrics import dice

    image, label = read_volume(case["image"]), read_volume(case["label"])
    truth = label.array > 0
    rows = []
    for k in ks:
        chosen = protocol_slices(truth, k)
        sparse = SparseAnnotation.from_dense(label, chosen)
        row = {"case": case["name"], "group": case["group"], "k": k, "slices": chosen}
        for m in methods:
            if only_ks and m in only_ks and k not in only_ks[m]:
                row[m] = {"dice": float("nan"), "s": float("nan"), "mb": float("nan"),
                          "skipped": f"not run at this k (--{m}-k)"}
                continue
            run = _method(m)  # imports happen here, outside the timing
            _reset_peak_rss()
            t0 = time.perf_counter()
            try:
                mask = run(image, sparse)
                row[m] = {"dice": round(dice(mask, truth), 4), "s": round(time.perf_counter() - t0, 2),
                          "mb": _peak_rss_mb()}
            except Exception as exc:  # a crash is a result to report, not a reason to stop the table
                row[m] = {"dice": float("nan"), "s": round(time.perf_counter() - t0, 2), "mb": _peak_rss_mb(),
                          "error": f"{type(exc).__name__}: {exc}"[:200]}
        rows.append(row)
    return rows


def _print_row(row: dict, methods: list[str]) -> None:
    cells = "".join(f"| {row[m]['dice']:6.3f} {row[m]['s']:6.2f} {row[m].get('mb', float('nan')):6.0f} "
                    for m in methods)
    err = "; ".join(f"{m}: {row[m]['error']}" for m in methods if "error" in row[m])
    print(f"{row['case'][:34]:<34} {row['k']:>2} {cells}{'  ' + err if err else ''}", flush=True)


def _mean(values: list[float]) -> float:
    """Mean over the values that were measured (nan when none was)."""
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: list[dict], methods: list[str]) -> dict:
    """Means per group and k; goal checks (gap to best classic tool, k -> k+1 drops, worst cases)."""
    groups = sorted({r["group"] for r in rows})
    summary: dict = {"means": {}, "gaps": [], "drops": []}
    sets = {g: [g] for g in groups}
    sets["struct-all"] = [g for g in groups if g.startswith("struct")]
    sets["LA-all"] = [g for g in groups if g.startswith("LA")]
    for name, members in sets.items():
        for k in sorted({r["k"] for r in rows}):
            sel = [r for r in rows if r["group"] in members and r["k"] == k]
            if sel:
                summary["means"][f"{name} k={k}"] = {
                    m: [round(_mean([r[m]["dice"] for r in sel]), 4), round(_mean([r[m]["s"] for r in sel]), 2),
                        round(_mean([r[m].get("mb", float("nan")) for r in sel]), 0)]
                    for m in methods} | {"n": len(sel)}
    classic = [m for m in CLASSIC if m in methods]
    ours = [m for m in ("fast", "full", "finetune") if m in methods]
    for r in rows:
        for m in ours:
            if m in methods and classic and not np.isnan(r[m]["dice"]):
                best = max(classic, key=lambda c: np.nan_to_num(r[c]["dice"]))
                summary["gaps"].append({"case": r["case"], "k": r["k"], "method": m,
                                        "gap": round(r[m]["dice"] - r[best]["dice"], 4), "best": best})
    by = {(r["case"], r["k"]): r for r in rows}
    for (case, k), r in by.items():
        nxt = by.get((case, k + 1))
        for m in ours:
            if nxt is not None and not np.isnan(nxt[m]["dice"] - r[m]["dice"]):
                summary["drops"].append({"case": case, "k": k, "method": m,
                                         "change": round(nxt[m]["dice"] - r[m]["dice"], 4)})
    # issue #11: the finetune preset against fast on the same painting
    summary["finetune_vs_fast"] = [
        {"case": r["case"], "group": r["group"], "k": r["k"],
         "change": round(r["finetune"]["dice"] - r["fast"]["dice"], 4)}
        for r in rows if "finetune" in methods and "fast" in methods
        and not np.isnan(r["finetune"]["dice"] - r["fast"]["dice"])]
    return summary


def print_summary(summary: dict, methods: list[str]) -> None:
    print("\nmean Dice (mean seconds, mean peak MiB) per group and k")
    print(f"{'group':<22} {'n':>3} " + "".join(f"| {m:^22} " for m in methods))
    for name, means in summary["means"].items():
        print(f"{name:<22} {means['n']:>3} " + "".join(
            f"| {means[m][0]:6.3f} ({means[m][1]:5.2f}, {means[m][2]:5.0f}) " for m in methods))
    for m in ("fast", "full", "finetune"):
        gaps = [g for g in summary["gaps"] if g["method"] == m]
        if gaps:
            bad = sorted(gaps, key=lambda g: g["gap"])
            print(f"\n{m}: cases more than 0.02 below the best classic tool: "
                  f"{sum(g['gap'] < -0.02 for g in gaps)} of {len(gaps)}")
            for g in bad[:8]:
                print(f"   {g['case']:<34} k={g['k']} {g['gap']:+.3f} vs {g['best']}")
        drops = [d for d in summary["drops"] if d["method"] == m]
        if drops:
            print(f"{m}: k -> k+1 drops over 0.01: {sum(d['change'] < -0.01 for d in drops)} of {len(drops)}")
            for d in sorted(drops, key=lambda d: d["change"])[:5]:
                print(f"   {d['case']:<34} k={d['k']}->{d['k'] + 1} {d['change']:+.3f}")
    changes = summary.get("finetune_vs_fast", [])
    if changes:
        print("\nfinetune - fast, mean Dice change per group and k (goal: >= +0.01; no case below -0.02)")
        for key in sorted({(c["group"], c["k"]) for c in changes}):
            sel = [c["change"] for c in changes if (c["group"], c["k"]) == key]
            print(f"   {key[0]:<18} k={key[1]} n={len(sel):>2} mean {np.mean(sel):+.4f} "
                  f"min {min(sel):+.3f} cases below -0.02: {sum(v < -0.02 for v in sel)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="fast,growcut,fill,extrude",
                    help=f"comma-separated, of {','.join(ALL_METHODS)} (full: ANTs, slow)")
    ap.add_argument("--k", default="1,2,3", help="painted slices per axis, comma-separated")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names (default all)")
    ap.add_argument("--groups", default="", help="comma-separated substrings of groups, e.g. dev or LA-dev")
    ap.add_argument("--full-k", default=None, help="run 'full' only at these k (comma-separated)")
    ap.add_argument("--finetune-k", default=None, help="run 'finetune' only at these k (comma-separated)")
    ap.add_argument("--jobs", type=int, default=1, help="(case, method) pairs run in parallel")
    ap.add_argument("--reuse", default=None,
                    help="an earlier --json: its classic tools that are not run now join the table")
    ap.add_argument("--json", default=None, help="write rows and summary here")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}")
    ks = [int(k) for k in args.k.split(",")]
    only_ks = {m: [int(k) for k in v.split(",")]
               for m, v in (("full", args.full_k), ("finetune", args.finetune_k)) if v}
    cases = list_cases()
    if args.cases:
        cases = [c for c in cases if any(s in c["name"] for s in args.cases.split(","))]
    if args.groups:
        cases = [c for c in cases if any(s in c["group"] for s in args.groups.split(","))]
    if not DATA.exists():
        print(f"no data at {DATA}", file=sys.stderr)
        return 2
    reused, reused_methods = {}, []
    if args.reuse:
        earlier = json.loads(Path(args.reuse).read_text(encoding="utf-8"))["rows"]
        reused = {(r["case"], r["k"]): r for r in earlier}
        # only the classic tools: ours depend on this checkout's code
        reused_methods = [m for m in CLASSIC if m not in methods and all(m in r for r in earlier)]
        print(f"methods {', '.join(reused_methods)}: taken from {args.reuse} (not rerun)")
    run_methods, methods = methods, methods + reused_methods
    print(f"{'case':<34} {'k':>2} " + "".join(f"| {m:^20} " for m in methods))
    print(f"{'':<34} {'':>2} " + "".join(f"| {'Dice':>6} {'s':>6} {'MiB':>6} " for _ in methods), flush=True)
    # One process per (case, method), so each method's peak memory is its own.
    tasks = [(case, m) for case in cases for m in run_methods]
    by_key: dict[tuple[str, int], dict] = {}
    with ProcessPoolExecutor(args.jobs, max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_case, case, ks, [m], only_ks) for case, m in tasks]
        for future in futures:
            for part in future.result():
                row = by_key.setdefault((part["case"], part["k"]), {})
                row.update(part)
                if reused_methods and not any(m in row for m in reused_methods):
                    old = reused.get((part["case"], part["k"]))
                    if old is None or old.get("slices", part["slices"]) != part["slices"]:
                        raise SystemExit(f"--reuse: {part['case']} k={part['k']} is not in {args.reuse} "
                                         "with the same painted slices")
                    row.update({m: old[m] for m in reused_methods})
                if all(m in row for m in methods):
                    _print_row(row, methods)
    rows = list(by_key.values())
    summary = summarise(rows, methods)
    print_summary(summary, methods)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())

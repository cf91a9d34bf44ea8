"""How the ``finetune`` preset should use its networks: fused with the fast evidence, at which
weight, or alone -- beside ``fast``, on the cases and painting protocol of ``bench/peers.py``.

Per case (k painted slices per axis, ``protocol_slices``), side by side: Dice and seconds of
``fast``; the fine-tune run once (its seconds, stage times and peak resident memory), then
the same fine-tuned probability fused with the fast evidence at each ``--weights`` value
(``combine=fuse``, ``probability_weight``) and used alone (``combine=alone``) -- only the
cheap fusion step is repeated, the fine-tune comes from the per-image memory -- and the ANTs
pseudo-label the networks learned from. Each case runs in a fresh process (peak memory per
case). Means per group (dev / held-out, fixed in ``bench/peers_split.json`` before any
tuning): choose on the dev groups, read the held-out ones.

    nice -n 10 python bench/finetune.py [--groups LA,struct-dev] [--cases SUBSTR,...] [--k 1]
                                        [--weights 0.1,0.25,0.5,1] [--profile cpu|gpu] [--model CKPT]
                                        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rada, not an installed one
sys.path.insert(0, str(ROOT / "bench"))
from peers import _peak_rss_mb, list_cases  # noqa: E402  (same protocol and groups as peers.py)


def run_case(case: dict[str, str], k: int, weights: list[float], profile: str, model: str | None) -> dict:
    """Everything for one case, in this process."""
    import numpy as np
    import torch

    from rada.annotation import SparseAnnotation, protocol_slices
    from rada.finetune import FinetuneConfig
    from rada.io import read_volume
    from rada.metrics import dice
    from rada.pipeline import SegmentCache, SegmentConfig, segment_case

    image, label = read_volume(case["image"]), read_volume(case["label"])
    truth = label.array > 0
    annotation = SparseAnnotation.from_dense(label, protocol_slices(truth, k))
    row: dict = {"case": case["name"], "group": case["group"], "k": k}
    t = time.perf_counter()
    fast = segment_case(image, annotation, SegmentConfig(preset="fast"))
    row["fast"] = {"dice": round(dice(fast.label.array > 0, truth), 4), "s": round(time.perf_counter() - t, 2)}
    ft_cfg = FinetuneConfig.cpu() if profile == "cpu" else FinetuneConfig.gpu()
    cache = SegmentCache()
    for i, w in enumerate(weights):
        t = time.perf_counter()
        out = segment_case(image, annotation, SegmentConfig(preset="finetune", model=model,
                                                            finetune=replace(ft_cfg, probability_weight=w)),
                           cache=cache)
        entry = {"dice": round(dice(out.label.array > 0, truth), 4), "s": round(time.perf_counter() - t, 2)}
        if i == 0:  # the run that fine-tuned; later weights reuse its probability
            entry |= {"mb": _peak_rss_mb(), "stages": out.report["finetune"]["timings_s"],
                      "device": out.report["finetune"]["device"]}
            if torch.cuda.is_available():  # the GPU profile's peak GPU memory
                entry["gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            box = tuple(slice(a, b) for a, b in out.report["finetune"]["box_zyx"])
        else:
            assert out.report["finetune"]["started_from"] == "cached result"
        row[f"fuse {w:g}"] = entry
    alone = segment_case(image, annotation, SegmentConfig(preset="finetune", model=model,
                                                          finetune=replace(ft_cfg, combine="alone")), cache=cache)
    row["alone"] = {"dice": round(dice(alone.label.array > 0, truth), 4)}
    pseudo = np.zeros_like(truth)
    pseudo[box] = cache.finetune.pseudo_label > 0
    row["pseudo"] = {"dice": round(dice(pseudo, truth), 4)}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default="LA,struct-dev", help="comma-separated substrings of groups")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names")
    ap.add_argument("--k", type=int, default=1, help="painted slices per axis")
    ap.add_argument("--weights", default="0.1,0.25,0.5,1", help="probability_weight values of combine=fuse")
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--model", default=None, help="trained checkpoint to start the fine-tune from")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    cases = list_cases()
    if args.one:
        case = next(c for c in cases if c["name"] == args.one)
        print(json.dumps(run_case(case, args.k, weights, args.profile, args.model)))
        return 0
    cases = [c for c in cases if any(s in c["group"] for s in args.groups.split(","))
             and (not args.cases or any(s in c["name"] for s in args.cases.split(",")))]
    methods = ["fast"] + [f"fuse {w:g}" for w in weights] + ["alone", "pseudo"]
    print(f"{'case':<34} " + "".join(f"| {m:>9} " for m in methods) + "| finetune s, MiB")
    rows = []
    for case in cases:
        cmd = [sys.executable, __file__, "--one", case["name"], "--k", str(args.k), "--weights", args.weights,
               "--profile", args.profile] + (["--model", args.model] if args.model else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{case['name']:<34} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        first = r[methods[1]]
        print(f"{r['case'][:34]:<34} " + "".join(f"| {r[m]['dice']:9.4f} " for m in methods)
              + f"| {first['s']:6.1f} {first['mb']:6.0f} {first['stages']}"
              + (f" GPU {first['gpu_mib']} MiB" if "gpu_mib" in first else ""), flush=True)
    print(f"\nmean Dice per group, k={args.k}; 'vs fast': mean and worst case of (Dice - fast)")
    print(f"{'group':<16} {'n':>3} " + "".join(f"| {m:^22} " for m in methods))
    groups = sorted({r["group"] for r in rows})
    for g in groups + ["all"]:
        sel = [r for r in rows if g in ("all", r["group"])]
        if not sel:
            continue
        cells = []
        for m in methods:
            d = [r[m]["dice"] for r in sel]
            diff = [r[m]["dice"] - r["fast"]["dice"] for r in sel]
            cells.append(f"| {sum(d) / len(d):.4f} {sum(diff) / len(diff):+.4f} {min(diff):+.3f} ")
        print(f"{g:<16} {len(sel):>3} " + "".join(cells))
    s = [r[methods[1]]["s"] for r in rows]
    print(f"\nfine-tune seconds per case: mean {sum(s) / len(s):.1f}, max {max(s):.1f}; "
          f"peak MiB max {max(r[methods[1]]['mb'] for r in rows):.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    # One torch/OpenMP thread per process (inherited by the per-case processes), as in
    # bench/peers.py: tiny 3D convolutions on two contended threads run ~10x slower.
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())

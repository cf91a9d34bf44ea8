"""The ``finetune`` preset beside ``fast`` on LA validation cases (k = 1 painted slice per axis).

Per case, side by side: Dice, seconds and peak RSS of ``fast``; of ``finetune`` with its
probability fused with the fast evidence (``combine=fuse``) and used alone (``alone``, the
same fine-tuned probability, so only the fuse step differs); of the ANTs pseudo-label the
fine-tune learned from; and the fine-tune's stage times. Each case runs in a fresh process
so peak RSS is per case. Cases: the fixed validation split (bench/la2018_split.json), never
tuned on.

    nice -n 10 python bench/finetune.py [--cases 3] [--profile cpu|gpu] [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rada, not an installed one
DATA = ROOT.parent / "shared" / "data" / "la2018"


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_case(case: str, profile: str, model: str | None, threads: int | None) -> dict:
    """Everything for one case, in this process."""
    import numpy as np

    from rada.annotation import SparseAnnotation
    from rada.finetune import FinetuneConfig
    from rada.io import read_volume
    from rada.metrics import dice
    from rada.pipeline import SegmentCache, SegmentConfig, segment_case

    image = read_volume(DATA / case / "image.nii.gz")
    truth = read_volume(DATA / case / "label.nii.gz").array > 0
    annotation = SparseAnnotation.from_dense(read_volume(DATA / case / "label.nii.gz"))
    row: dict = {"case": case}
    t = time.perf_counter()
    fast = segment_case(image, annotation, SegmentConfig(preset="fast"))
    row["fast"] = {"dice": dice(fast.label.array > 0, truth), "s": time.perf_counter() - t, "rss_mb": _peak_mb()}
    ft_cfg = FinetuneConfig.cpu(threads=threads) if profile == "cpu" else FinetuneConfig.gpu()
    cache = SegmentCache()
    t = time.perf_counter()
    fused = segment_case(image, annotation, SegmentConfig(preset="finetune", finetune=ft_cfg, model=model),
                         cache=cache)
    row["finetune"] = {"dice": dice(fused.label.array > 0, truth), "s": time.perf_counter() - t,
                       "rss_mb": _peak_mb(), "stages": fused.report["finetune"]["timings_s"],
                       "device": fused.report["finetune"]["device"]}
    t = time.perf_counter()
    alone = segment_case(image, annotation, SegmentConfig(preset="finetune", finetune=FinetuneConfig(
        **{**ft_cfg.__dict__, "combine": "alone"}), model=model), cache=cache)
    assert alone.report["finetune"]["started_from"] == "cached result"
    row["alone"] = {"dice": dice(alone.label.array > 0, truth), "s": row["finetune"]["s"], "rss_mb": _peak_mb()}
    box = tuple(slice(a, b) for a, b in fused.report["finetune"]["box_zyx"])
    pseudo = np.zeros_like(truth)
    pseudo[box] = cache.finetune.pseudo_label > 0
    row["pseudo"] = {"dice": dice(pseudo, truth)}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--model", default=None, help="trained checkpoint to start the fine-tune from")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the fine-tune (CPU profile)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.profile, args.model, args.threads)))
        return 0
    cases = json.loads((ROOT / "bench" / "la2018_split.json").read_text(encoding="utf-8"))["val"][:args.cases]
    rows = []
    for case in cases:
        cmd = [sys.executable, __file__, "--one", case, "--profile", args.profile]
        if args.model:
            cmd += ["--model", args.model]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{case[:8]}  fast {r['fast']['dice']:.4f} {r['fast']['s']:5.1f}s | finetune(fuse) "
              f"{r['finetune']['dice']:.4f} {r['finetune']['s']:5.1f}s {r['finetune']['rss_mb']:.0f}MB | alone "
              f"{r['alone']['dice']:.4f} | ANTs pseudo {r['pseudo']['dice']:.4f} | stages {r['finetune']['stages']}",
              flush=True)
    print("\n| method | mean Dice | min (Dice - fast) | s/case | peak RSS MB |")
    print("|---|---|---|---|---|")
    for m in ("fast", "finetune", "alone", "pseudo"):
        d = [r[m]["dice"] for r in rows]
        gap = min(r[m]["dice"] - r["fast"]["dice"] for r in rows)
        s = [r[m].get("s", float("nan")) for r in rows]
        rss = max(r[m].get("rss_mb", float("nan")) for r in rows)
        name = {"finetune": "finetune (fused)", "alone": "finetune (alone)", "pseudo": "ANTs pseudo-label"}.get(m, m)
        print(f"| {name} | {sum(d) / len(d):.4f} | {gap:+.4f} | {sum(s) / len(s):.1f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

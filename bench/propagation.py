"""Registration propagation: DeSCO-style reference path vs rada's default, side by side.

(a) reference: registrations one by one in one process, full-resolution slices (no crop),
    SyNRA, each chain until the warped label is empty or the volume edge (DeSCO's loop);
(b) rada default: ``PropagationConfig()`` - parallel registrations (one per core), slices
    cropped to the annotated extent + margin, each axis stopped at the structure's extent
    seen on the other two annotated axes.

Both start from the same simulated annotation (largest-foreground slice per axis, METHOD.md
1) and score the fused propagation (majority of the three views) against the dense label.
Cases: the last five of ``cases.list`` (fixed, never used to tune anything here). Wall time
depends on what else runs on the machine (the parallel path needs every core); the CPU
time ratio (this process plus its joined worker processes) does not.

    python bench/propagation.py [--cases N] [--data DIR] [--fast] [--json OUT]

``--fast`` adds a third column set for ``PropagationConfig(resolution="half")``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from rada.annotation import SparseAnnotation
from rada.io import read_volume
from rada.propagation import PropagationConfig, propagate

try:
    from rada.metrics import dice
except ImportError:  # pragma: no cover - metrics.py is written by another engineer
    def dice(pred: np.ndarray, ref: np.ndarray) -> float:
        p, r = np.asarray(pred, bool), np.asarray(ref, bool)
        total = p.sum() + r.sum()
        return 1.0 if total == 0 else float(2.0 * (p & r).sum() / total)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RADA_SHARED_DATA", REPO.parent / "shared" / "data")) / "la2018"

REFERENCE = PropagationConfig(workers=1, crop=False, stop_at_extent=False, transform="SyNRA")


def _cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the pool workers,
    joined when ``propagate`` returns)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(image, annotation, label, config: PropagationConfig) -> dict:
    t, c = time.perf_counter(), _cpu_seconds()
    result = propagate(image, annotation, config)
    seconds, cpu = time.perf_counter() - t, _cpu_seconds() - c
    return {"dice": dice(result.fused, label), "seconds": seconds, "cpu_seconds": cpu,
            "registrations": result.stats["registrations_run"], "workers": result.stats["workers"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cases", type=int, default=5, help="how many of the last cases of cases.list")
    ap.add_argument("--fast", action="store_true", help="also run the half-resolution registration")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args(argv)

    ids = (args.data / "cases.list").read_text(encoding="utf-8").split()[-args.cases:]
    configs = {"reference": REFERENCE, "rada": PropagationConfig()}
    if args.fast:
        configs["rada-fast"] = PropagationConfig(resolution="half")
    print(f"cores available: {PropagationConfig().n_workers()}; cases: {', '.join(ids)}", file=sys.stderr)

    rows = []
    for cid in ids:
        image = read_volume(args.data / cid / "image.nii.gz")
        label = read_volume(args.data / cid / "label.nii.gz")
        ref = label.array > 0
        annotation = SparseAnnotation.from_dense(label)
        row = {"case": cid, "shape": list(image.shape)}
        for name, cfg in configs.items():
            row[name] = run(image, annotation, ref, cfg)
            print(f"  {cid} {name}: {row[name]}", file=sys.stderr, flush=True)
        rows.append(row)

    names = list(configs)
    head = f"{'case':<22}" + "".join(f"{n + ' Dice':>16}{n + ' s':>12}{n + ' cpu s':>14}{n + ' regs':>14}"
                                     for n in names)
    head += "".join(f"{'speed-up ' + n:>20}{'cpu ratio ' + n:>20}" for n in names[1:])
    print(head)
    for row in rows:
        line = f"{row['case']:<22}" + "".join(
            f"{row[n]['dice']:>16.4f}{row[n]['seconds']:>12.1f}{row[n]['cpu_seconds']:>14.1f}"
            f"{row[n]['registrations']:>14d}" for n in names)
        line += "".join(f"{row['reference']['seconds'] / row[n]['seconds']:>19.2f}x"
                        f"{row['reference']['cpu_seconds'] / row[n]['cpu_seconds']:>19.2f}x" for n in names[1:])
        print(line)
    mean = {n: {k: float(np.mean([r[n][k] for r in rows]))
                for k in ("dice", "seconds", "cpu_seconds", "registrations")} for n in names}
    line = f"{'mean':<22}" + "".join(
        f"{mean[n]['dice']:>16.4f}{mean[n]['seconds']:>12.1f}{mean[n]['cpu_seconds']:>14.1f}"
        f"{mean[n]['registrations']:>14.0f}" for n in names)
    line += "".join(f"{mean['reference']['seconds'] / mean[n]['seconds']:>19.2f}x"
                    f"{mean['reference']['cpu_seconds'] / mean[n]['cpu_seconds']:>19.2f}x" for n in names[1:])
    print(line)
    for n in names[1:]:
        print(f"{n}: total speed-up {mean['reference']['seconds'] / mean[n]['seconds']:.2f}x (wall), "
              f"{mean['reference']['cpu_seconds'] / mean[n]['cpu_seconds']:.2f}x (CPU time), "
              f"mean Dice difference {mean[n]['dice'] - mean['reference']['dice']:+.4f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "mean": mean}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

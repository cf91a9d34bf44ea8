"""The paper's LA2018 protocol, time-boxed to one GPU for ``--budget-minutes`` (default 8).

Full resolution, width 16, patch 80x112x112, 8 labeled cases (three largest-foreground
slices) + the rest of the train split unlabeled (bench/la2018_split.json), guidance
``auto``, validation on the split's validation cases. The 6000-iteration schedule is
compressed to what fits:

1. prepare the dataset and propagate the 8 labeled cases' pseudo-labels (ANTs, all CPU
   cores; cached in ``--out``, so a second run skips it);
2. probe: ``--probe-iterations`` training iterations and one validation pass in a scratch
   run measure seconds per iteration and per validation on this machine;
3. N = (budget left - validations - margin) / (seconds per iteration), the schedule scaled
   to N (``ScheduleConfig.scaled``), trained with a validation every N/4 iterations;
4. the measured numbers go to ``--out/gpu_result.json`` and to ``bench/RESULTS.md``.

    python bench/paper_la_gpu.py --out /tmp/rada-la-gpu                 # an H100
    python bench/paper_la_gpu.py --device cpu --threads 1 --width 4 --patch 16,32,32 --shrink 2 \\
        --budget-minutes 6 --out /tmp/rada-la-cpu-check                  # the same code, on a CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "la2018"))
    p.add_argument("--out", default="/tmp/rada-la-gpu")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="wall clock for everything, setup included")
    p.add_argument("--device", default="auto")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--patch", type=lambda s: tuple(int(v) for v in s.split(",")), default=(80, 112, 112))
    p.add_argument("--shrink", type=int, default=1, help="downscale factor (1 = the paper's resolution)")
    p.add_argument("--val-cases", type=int, default=16)
    p.add_argument("--probe-iterations", type=int, default=12)
    p.add_argument("--margin-s", type=float, default=20.0, help="seconds kept for saving and the report")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 on a shared CPU: oversubscribed threads ran ~10x slower)")
    p.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    args = p.parse_args(argv)
    t0 = time.monotonic()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rada.dataset import read_dataset
    from rada.nets import ModelConfig
    from rada.train import ScheduleConfig, TrainConfig, Trainer, load_training_data
    from rada.device import select_device
    from rada.train.guidance_choice import choose_guidance, with_guidance
    from rada.train.validation import validate
    from reduced_la import shrink_dataset

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f} s] {message}", file=sys.stderr, flush=True)

    out = Path(args.out)
    device = select_device(args.device)
    say(f"device {device}; preparing the dataset and the pseudo-labels")
    dataset = shrink_dataset(Path(args.data), out, args.shrink, args.val_cases)
    spec = read_dataset(dataset)
    data = load_training_data(spec, out / "pseudo_labels")
    t_prepare = time.monotonic() - t0
    say(f"{len(data.labeled)} labeled, {len(data.unlabeled)} unlabeled, {len(data.validation)} validation cases")

    base = TrainConfig(model=ModelConfig.make(width=args.width), patch_size=args.patch, device=str(device),
                       progress=False, checkpoint_every=10**9, validate_every=0)
    choice = choose_guidance("auto", True, spec.root, out)
    base = with_guidance(base, choice)

    # Probe: seconds per iteration (after the first two: cudnn autotune, allocator) and per validation.
    probe_dir = out / "probe"
    shutil.rmtree(probe_dir, ignore_errors=True)
    trainer = Trainer(replace(base, schedule=ScheduleConfig(iterations=args.probe_iterations)), data, probe_dir,
                      choice.embeddings, guidance_reason=choice.reason)
    times = []
    for t in range(args.probe_iterations):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        s = time.perf_counter()
        trainer.step(t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - s)
    s_iter = sorted(times[2:])[len(times[2:]) // 2]
    say(f"probe: {s_iter:.3f} s/iteration (median of {len(times) - 2})")
    s = time.perf_counter()
    validate(trainer.model, data.validation, base.patch_size, bf16=trainer.use_bf16)
    s_val = time.perf_counter() - s
    say(f"probe: {s_val:.1f} s per validation")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del trainer
    shutil.rmtree(probe_dir, ignore_errors=True)

    left = args.budget_minutes * 60 - (time.monotonic() - t0) - args.margin_s
    n_val = 4
    iterations = int((left - n_val * s_val) / s_iter) // n_val * n_val  # the last validation is at the end
    if iterations < 10:
        print(f"only {iterations} iterations fit in the budget (prepare {t_prepare:.0f} s, "
              f"{s_iter:.2f} s/iteration): nothing trained", file=sys.stderr)
        return 1
    schedule = ScheduleConfig().scaled(iterations)
    config = replace(base, schedule=schedule, validate_every=iterations // n_val,
                     checkpoint_every=iterations // n_val)
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    say(f"training {iterations} iterations (schedule scaled from 6000)")
    t_train = time.monotonic()
    result = Trainer(config, data, run, choice.embeddings, guidance_reason=choice.reason).fit()
    t_train = time.monotonic() - t_train
    val = result.validation
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "budget_minutes": args.budget_minutes, "total_minutes": (time.monotonic() - t0) / 60,
        "prepare_s": t_prepare, "seconds_per_iteration": s_iter, "seconds_per_validation": s_val,
        "peak_gib": peak, "iterations": iterations, "train_s": t_train, "width": args.width,
        "patch": list(args.patch), "shrink": args.shrink, "val_cases": len(data.validation),
        "labeled": len(data.labeled), "unlabeled": len(data.unlabeled), "guidance": result.guidance,
        "best_dice": val.get("best_dice"), "best_iteration": val.get("best_iteration"),
        "history": [{k: h[k] for k in ("iteration", "dice", "hd95")} for h in val.get("history", [])],
    }
    (out / "gpu_result.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    if not args.no_results:
        _write_results(summary)
    return 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _write_results(s: dict) -> None:
    lines = ["## Paper LA2018 protocol, time-boxed (bench/paper_la_gpu.py)", "",
             f"{s['device']}: {s['iterations']} iterations of width {s['width']}, patch {s['patch']} in a "
             f"{s['budget_minutes']:.0f}-minute budget ({s['prepare_s']:.0f} s preparing, "
             f"{s['seconds_per_iteration'] * 1000:.0f} ms/iteration, {s['seconds_per_validation']:.1f} s per "
             f"validation of {s['val_cases']} cases); guidance {'on' if s['guidance']['enabled'] else 'off'} "
             f"({s['guidance']['reason']}).", "", "| iteration | val Dice | HD95 (vox) |", "|---|---|---|"]
    lines += [f"| {h['iteration']} | {h['dice']:.4f} | {_fmt(h['hd95'])} |" for h in s["history"]]
    results = REPO / "bench" / "RESULTS.md"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n\n"
    start = text.find("## Paper LA2018 protocol, time-boxed")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + (text[end + 1:] if end >= 0 else "")
    results.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())

"""Milliseconds per training iteration: a reference-style step vs RADA's, side by side.

reference  fp32; views one after another (forward, loss, backward, step per view); for each
           student view, each teacher runs a clean pass for its pseudo-label and 8 separate
           noisy passes for its certainty (3 x 2 x (1 + 8) teacher forwards).
ours-seq   RADA's step (one forward per view, teachers' pseudo-labels reused from their own
           student outputs, one backward) but the 8 noisy passes run one by one.
ours       RADA's step: the 8 noisy passes batched into ONE forward per teacher, shared by
           both students; bf16 autocast on CUDA.

Each row runs in its own process (clean peak memory: max RSS on CPU, max allocated on CUDA).
Synthetic data; small by default on CPU, the paper's size on CUDA.

    python bench/train_step.py                       # CPU: width 4, patch 32^3
    python bench/train_step.py --width 16 --patch 80,112,112 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

MODES = ("reference", "ours-seq", "ours")


def _data(patch, seed=0):
    from rada.views import VIEWS
    from rada.train import LabeledCase, TrainingData

    rng = np.random.default_rng(seed)
    shape = tuple(int(p * 1.25) for p in patch)
    img = rng.normal(size=shape).astype(np.float32)
    lab = (img > 0.5).astype(np.uint8)
    dist = {v.name: rng.integers(0, 20, size=shape).astype(np.uint16) for v in VIEWS}
    labeled = [LabeledCase(str(i), img, {v.name: lab for v in VIEWS}, dist, np.zeros(shape, bool)) for i in range(2)]
    return TrainingData(labeled, [img[::-1].copy(), img[:, ::-1].copy()])


def reference_step(trainer, t: int) -> None:
    """The reference's way, with the same building blocks."""
    from rada.train import schedules as S
    from rada.train.cotraining import certainty_mask, noisy_copies
    from rada.train.data import sample_batch
    from rada.train.losses import masked_cross_entropy, supervised_loss

    cfg, sch = trainer.config, trainer.config.schedule
    batch = sample_batch(trainer.data, t, S.distance_decay(t, sch), cfg.patch_size, cfg.labeled_batch, cfg.unlabeled_batch)
    x, labels, weights = trainer._to_device(batch)
    nl, b, thr = batch.n_labeled, S.beta(t, sch), S.entropy_threshold(t, sch)
    names = list(trainer.model.nets)
    for v in names:
        net, opt = trainer.model[v], trainer.optimizers[v]
        out = net(x)
        sup = supervised_loss(out[:nl], labels[v], weights[v])
        unsup = []
        for k in names:
            if k == v:
                continue
            teacher = trainer.model[k]
            with torch.no_grad():
                pseudo = teacher(x[nl:]).argmax(1)
                probs = [torch.softmax(teacher(noisy_copies(x[nl:], 1, cfg.noise_std, cfg.noise_clip)), 1)
                         for _ in range(cfg.teacher_passes)]
                mask = certainty_mask(torch.stack(probs).mean(0), thr)
            unsup.append(masked_cross_entropy(out[nl:], pseudo, mask))
        loss = (1 - 2 * b) * sup + b * sum(unsup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run_one(mode: str, args) -> dict:
    from rada.nets import ModelConfig
    from rada.train import ScheduleConfig, TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(model=ModelConfig.make(width=args.width, guidance=False), patch_size=args.patch,
                      schedule=ScheduleConfig(iterations=10**6), device=args.device, progress=False,
                      bf16=(mode == "ours"), batched_teachers=(mode == "ours"))
    trainer = Trainer(cfg, _data(args.patch), "/tmp/rada-bench-unused")
    dev = trainer.device
    step = (lambda t: reference_step(trainer, t)) if mode == "reference" else trainer.step

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for t in range(args.warmup):
        step(t)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for t in range(args.warmup, args.warmup + args.iters):
        t0 = time.perf_counter()
        step(t)
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"mode": mode, "ms_median": statistics.median(times), "ms_min": min(times),
            "peak_mib": peak, "memory": "max allocated (CUDA)" if dev.type == "cuda" else "max RSS (process)",
            "device": str(dev), "bf16": trainer.use_bf16}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=int, default=None, help="default 4 on CPU, 16 on CUDA")
    ap.add_argument("--patch", default=None, help="z,y,x; default 32,32,32 on CPU, 80,112,112 on CUDA")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.width = args.width or (16 if cuda else 4)
    args.patch = tuple(int(v) for v in (args.patch or ("80,112,112" if cuda else "32,32,32")).split(","))
    if args.mode:
        print(json.dumps(run_one(args.mode, args)))
        return 0
    rows = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--mode", mode, "--device", args.device, "--width", str(args.width),
               "--patch", ",".join(map(str, args.patch)), "--iters", str(args.iters), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode:
            sys.stderr.write(out.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = rows[0]["ms_median"]
    print(f"train step, width {args.width}, patch {'x'.join(map(str, args.patch))} (z,y,x), batch 2+2 per view, "
          f"T=8, device {rows[0]['device']}, {args.iters} timed iterations after {args.warmup} warm-up")
    print(f"{'mode':<10} {'ms/iter (median)':>17} {'ms/iter (min)':>14} {'speed-up':>9} {'peak MiB':>9}  bf16")
    for r in rows:
        print(f"{r['mode']:<10} {r['ms_median']:>17.1f} {r['ms_min']:>14.1f} {ref / r['ms_median']:>8.2f}x "
              f"{r['peak_mib']:>9.0f}  {r['bf16']}")
    print(f"peak memory: {rows[0]['memory']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

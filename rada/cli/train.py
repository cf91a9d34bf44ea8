"""``rada train`` and ``rada embed``: co-train the tri-view model, compute its guidance embeddings.

:mod:`rada.train` and :mod:`rada.guidance` are imported inside the ``run_*`` functions: they
load torch, which would cost every ``rada`` call (``--help`` and one-line errors included) seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from rada.cli.common import int_triple, print_json, stderr_progress


def add_train(sub: argparse._SubParsersAction) -> None:
    """Register ``rada train``."""
    p = sub.add_parser("train", help="co-train the tri-view RADA model on a dataset (resumable; torchrun for multi-GPU)",
                       description="Barely-supervised tri-view co-training (METHOD.md 5) on a dataset.json folder. "
                                   "Writes RUN/checkpoint.pt, RUN/log.csv and RUN/loss.png; pseudo-labels are "
                                   "propagated once per labeled case and cached in RUN/pseudo_labels. Multi-GPU: "
                                   "torchrun --nproc_per_node=N -m rada.cli train ...")
    p.add_argument("dataset", help="dataset folder (or its dataset.json)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--config", default=None, help="JSON file with TrainConfig fields (overridden by the flags below)")
    p.add_argument("--guidance", default="auto",
                   help="guidance embeddings file (rada embed), 'auto' (default: the dataset's "
                        "guidance_embeddings.npz, else computed if the encoder weights are installed, else off "
                        "with the reason in the checkpoint) or 'off'")
    p.add_argument("--iterations", type=int, default=None, help="default 6000")
    p.add_argument("--width", type=int, default=None, help="V-Net base width (default 16)")
    p.add_argument("--patch", type=int_triple, default=None, help="training patch z,y,x (default 80,112,112)")
    p.add_argument("--loss-form", choices=["sgtc", "paper"], default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--validate-every", type=int, default=None,
                   help="validation Dice/HD95 on the dataset's val cases every N iterations (default 500, 0: never)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-bf16", action="store_true", help="full fp32 on CUDA")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoint.pt exactly")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Train on a dataset: the config file (if any), the flags on top; JSON summary from rank 0."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.train import TrainConfig, train_dataset
    from rada.config import read_config_file

    cfg = read_config_file(TrainConfig, args.config) if args.config else TrainConfig()
    cfg = cfg.with_overrides(iterations=args.iterations, width=args.width, patch_size=args.patch,
                             loss_form=args.loss_form, seed=args.seed, checkpoint_every=args.checkpoint_every,
                             device=args.device, validate_every=args.validate_every,
                             bf16=cfg.bf16 and not args.no_bf16, progress=not args.quiet)

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"rada train: {message}", file=sys.stderr)

    result = train_dataset(args.dataset, args.out, cfg, args.guidance, resume=args.resume, progress=progress)
    if os.environ.get("RANK", "0") == "0":  # one summary from a torchrun job, not one per process
        print_json({"checkpoint": str(result.checkpoint), "iterations": result.iterations, "log": str(result.log),
                    "curve": str(result.curve) if result.curve else None, "guidance": result.guidance,
                    "best": str(result.best) if result.best else None,
                    "best_val_dice": result.validation.get("best_dice"),
                    "best_iteration": result.validation.get("best_iteration")})
    return 0


def add_embed(sub: argparse._SubParsersAction) -> None:
    """Register ``rada embed`` (the encoder name is checked when it runs, not here: no torch)."""
    p = sub.add_parser("embed", help="Alpha-CLIP text + per-view visual embeddings, computed once (cache file)",
                       description="Compute the frozen dual encoder's guidance embeddings once: the prompt's "
                                   "text embedding and, per view, the mean visual embedding of the labeled "
                                   "volumes' annotated slices (image + mask). Input: a dataset folder (its "
                                   "labeled train cases; written to DATASET/guidance_embeddings.npz by default) "
                                   "or image volumes with --annotation. Without weights the guidance is off: "
                                   "exit 2, or with --allow-off a file that says so.")
    p.add_argument("inputs", nargs="+", metavar="DATASET_OR_IMAGES", help="dataset folder, or image volumes")
    p.add_argument("--annotation", nargs="+", default=None, help="sparse annotations, one per image")
    p.add_argument("--organ", default=None, help="structure name for the prompt (images mode; datasets have one)")
    p.add_argument("--prompt", default=None,
                   help="text prompt (default: 'An image containing the {organ}, with the rest being background')")
    p.add_argument("--out", default=None, help="embeddings file (.npz)")
    p.add_argument("--encoder", default=None,
                   help="weights variant in the cache (default alpha-clip-b16-grit1m; see rada weights list)")
    p.add_argument("--openai", default=None, help="use this OpenAI ViT-B-16.pt instead of the cache")
    p.add_argument("--visual", default=None, help="use this Alpha-CLIP visual checkpoint instead of the cache")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument("--allow-off", action="store_true", help="without weights, write a guidance-off file (exit 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    """Compute the guidance embeddings file; print where it is and what it holds."""
    # lazy: only the command that runs loads its work modules (module docstring)
    from rada.guidance.build import EmbedRequest, build_embeddings

    request = EmbedRequest(inputs=args.inputs, annotations=args.annotation, organ=args.organ, prompt=args.prompt,
                           out=args.out, encoder=args.encoder, openai=args.openai, visual=args.visual,
                           device=args.device, batch_size=args.batch_size, allow_off=args.allow_off)
    t0 = time.perf_counter()
    bar, progress = (None, None) if args.quiet else stderr_progress("embed")
    try:
        emb, out = build_embeddings(request, None if progress is None else
                                    (lambda fraction, message: progress(fraction, "embed", message)))
    finally:
        if bar is not None:
            bar.close()
    source = emb.source
    print_json({"out": str(out), "enabled": emb.enabled, "reason": emb.reason, "organ": emb.organ,
                "prompt": emb.prompt, "encoder": source.get("variant"), "sha256": source.get("sha256"),
                "slices": source.get("slices"), "cases": source.get("cases"),
                "seconds": round(time.perf_counter() - t0, 3)})
    return 0

"""One checkpoint file per model: weights of the three views, optimiser states, iteration,
RNG states, guidance embeddings, config, preprocessing, versions and a content hash.

Written atomically (temporary file + rename): a crash never leaves a partial checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any, Mapping

import torch

from rada import __version__
from rada.errors import InputError
from rada.safe_write import atomic_path

FORMAT = "rada-checkpoint"
FORMAT_VERSION = 1


def content_hash(views: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 of the views' weights (names, dtypes, element counts and bytes, in a fixed order).

    Format 1 hashes each tensor flattened, so its shape is not part of the hash (a weight of
    another shape fails ``load_state_dict`` anyway); changing that would invalidate every
    stored checkpoint's hash.

    Args:
        views: view name -> state dict of that view's network.

    Returns:
        The hex digest; equal for equal weights regardless of device or dict order.
    """
    h = hashlib.sha256()
    for view in sorted(views):
        for name in sorted(views[view]):
            t = views[view][name].detach().cpu().contiguous().reshape(-1)
            h.update(f"{view}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions recorded in every checkpoint.

    Returns:
        ``{"rada": ..., "torch": ..., "python": ...}``.
    """
    return {"rada": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically, adding format, versions and content hash.

    Args:
        state: the checkpoint contents; must hold ``views`` (view name -> state dict). The
            tensors are copied to the CPU before saving.
        path: the target file; written via a temporary file, so a crash leaves no half file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    views = {k: {n: t.detach().cpu() for n, t in sd.items()} for k, sd in state["views"].items()}
    full = {**state, "views": views, "format": FORMAT, "format_version": FORMAT_VERSION,
            "versions": versions(), "content_hash": content_hash(views)}
    target = Path(path)
    with atomic_path(target) as tmp:
        torch.save(full, tmp)
    return target


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint (on the CPU) and check its format and content hash.

    Args:
        path: the checkpoint file.
        verify: recompute the content hash and compare it with the stored one.

    Returns:
        The checkpoint dict as written by :func:`save_checkpoint`.

    Raises:
        InputError: the file is missing, unreadable, not a RADA checkpoint, or (with
            ``verify``) its weights do not match its content hash.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no checkpoint at {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise InputError(f"cannot read checkpoint {p}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{p} is not a RADA checkpoint")
    missing = [k for k in ("views", "content_hash") if k not in state]
    if missing:
        raise InputError(f"checkpoint {p} is incomplete: it has no {missing[0]!r}")
    if verify and content_hash(state["views"]) != state["content_hash"]:
        raise InputError(f"checkpoint {p} is corrupted: its weights do not match its content hash")
    return state


__all__ = ["save_checkpoint", "load_checkpoint", "content_hash", "versions", "FORMAT_VERSION"]

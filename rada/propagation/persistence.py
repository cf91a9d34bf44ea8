"""Saving and loading a :class:`~rada.propagation.PropagationResult` (one ``.npz``, no pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rada.errors import InputError
from rada.propagation.config import PropagationResult, ViewPropagation
from rada.safe_write import atomic_path


def save_propagation(result: PropagationResult, path: str | os.PathLike) -> Path:
    """Write a result as a compressed ``.npz``, atomically.

    Args:
        result: what :func:`rada.propagation.propagate` returned.
        path: the target file.

    Returns:
        ``path`` as a Path.

    Raises:
        InputError: the file cannot be written.
    """
    target = Path(path)
    arrays: dict[str, np.ndarray] = {"fused": np.asarray(result.fused, np.uint8),
                                     "stats": np.asarray(json.dumps(result.stats, default=str))}
    for name, view in result.views.items():
        arrays[f"label_{name}"] = np.asarray(view.label, np.uint8)
        arrays[f"distance_{name}"] = np.asarray(view.distance)
        arrays[f"axis_{name}"] = np.asarray(view.axis)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return target


def load_propagation(path: str | os.PathLike) -> PropagationResult:
    """Read a result written by :func:`save_propagation`.

    Args:
        path: the ``.npz`` file.

    Returns:
        The result, views in the order they were saved.

    Raises:
        InputError: the file is missing or not a propagation result.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            names = [k[len("label_"):] for k in z.files if k.startswith("label_")]
            views = {n: ViewPropagation(str(z[f"axis_{n}"]), z[f"label_{n}"], z[f"distance_{n}"]) for n in names}
            return PropagationResult(views, z["fused"], json.loads(str(z["stats"])))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read propagation result {p}: {exc}") from None


__all__ = ["load_propagation", "save_propagation"]

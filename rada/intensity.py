"""Intensity normalisation shared by training, inference and the pipeline."""

from __future__ import annotations

import numpy as np


def zscore(array: np.ndarray) -> np.ndarray:
    """Per-volume z-score normalisation.

    Args:
        array: image intensities, any numeric dtype.

    Returns:
        ``(array - mean) / std`` as float32 (``std`` taken as 1 for a constant image).
    """
    a = np.asarray(array, dtype=np.float32)
    std = float(a.std())
    return (a - float(a.mean())) / (std if std > 0 else 1.0)


__all__ = ["zscore"]

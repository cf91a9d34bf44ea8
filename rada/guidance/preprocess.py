"""Alpha-CLIP input preprocessing, exactly as METHOD.md section 3 fixes it.

Image slice -> [0, 1] by a percentile clip -> 3 channels -> zero-pad to a centred square ->
224x224 bicubic (antialiased, as PIL's resize in CLIP's own transform) -> clamp to [0, 1] ->
CLIP mean/std.

Mask -> 0/1 -> (Alpha-CLIP's ``ToTensor()(uint8 0/255)`` = [0, 1]) -> same padding (padding is
background) -> 224x224 bilinear (torchvision's ``Resize`` default) -> ``(m - 0.5) / 0.26``:
foreground +1.923, background -1.923; "no mask" is +1.923 everywhere.

The trap this module guards against: Alpha-CLIP's reference recipe is
``ToTensor()(binary_mask * 255)``, which divides by 255 only for uint8 input. A bool or int64
mask times 255 is left unscaled and normalises to ~979 instead of +1.923, silently. Here any
mask is first turned into a strict 0/1 array (bool, any integer 0/1 or 0/255, float 0..1);
other values are rejected, and the result is range-checked.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rada.errors import InputError

#: CLIP's image normalisation (OpenAI), RGB.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: Alpha-CLIP's mask normalisation: ``Normalize(0.5, 0.26)``.
MASK_MEAN, MASK_STD = 0.5, 0.26
MASK_FOREGROUND = (1.0 - MASK_MEAN) / MASK_STD    # +1.923...
MASK_BACKGROUND = (0.0 - MASK_MEAN) / MASK_STD    # -1.923...
IMAGE_SIZE = 224
#: DEFAULT percentiles of the intensity clip that maps a slice to [0, 1].
PERCENTILES: tuple[float, float] = (0.5, 99.5)


def _pad_square(x: torch.Tensor, value: float) -> torch.Tensor:
    """Zero-pad (with ``value``) the last two dims of ``[C, H, W]`` to a centred square."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top), value=value)


def scale_intensity(slice2d: np.ndarray, percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
    """A 2D slice to [0, 1] by clipping at the given percentiles.

    Args:
        slice2d: the ``[H, W]`` image slice.
        percentiles: ``(low, high)`` percentiles mapped to 0 and 1.

    Returns:
        float32 ``[H, W]`` in [0, 1]; all zeros for a flat slice.

    Raises:
        InputError: the slice is not 2D or holds NaN or infinite values.
    """
    a = np.asarray(slice2d, dtype=np.float32)
    if a.ndim != 2:
        raise InputError(f"expected a 2D slice, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError("the image slice holds NaN or infinite values")
    lo, hi = (float(v) for v in np.percentile(a, [percentiles[0], percentiles[1]]))
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0, dtype=np.float32)


def preprocess_image(slice2d: np.ndarray, size: int = IMAGE_SIZE,
                     percentiles: Sequence[float] = PERCENTILES) -> torch.Tensor:
    """One 2D image slice -> a CLIP-normalised ``[3, size, size]`` float32 tensor.

    The slice is scaled to [0, 1] (:func:`scale_intensity`), padded with black to a square,
    repeated to RGB, resized (bicubic, antialiased) and normalised with CLIP's mean and std.

    Args:
        slice2d: the ``[H, W]`` image slice.
        size: output side in pixels (the encoder's input size).
        percentiles: intensity clip percentiles.

    Returns:
        ``[3, size, size]`` float32 tensor.

    Raises:
        InputError: the slice is not 2D or holds NaN or infinite values.
    """
    x = torch.from_numpy(scale_intensity(slice2d, percentiles))[None]          # [1, H, W] in [0, 1]
    x = _pad_square(x, 0.0).expand(3, -1, -1)                                  # grey -> RGB, black padding
    x = F.interpolate(x[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
    x = x.clamp_(0.0, 1.0)                                                     # PIL's bicubic saturates at 0/255
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def binary_mask(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any mask encoding -> a strict float32 0/1 array (the guard against the unscaled-mask trap).

    Args:
        mask: bool; integers holding only {0, 1} or only {0, 255} (uint8 ``binary_mask * 255``
            included, at any integer width); floats in [0, 1] (soft masks kept as they are).

    Returns:
        float32 array of the mask's shape.

    Raises:
        InputError: other integer values, floats outside [0, 1] or not finite, or another dtype.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.dtype == np.bool_:
        return m.astype(np.float32)
    if np.issubdtype(m.dtype, np.integer):
        values = set(np.unique(m).tolist())
        if values <= {0, 1}:
            return m.astype(np.float32)
        if values <= {0, 255}:
            return (m == 255).astype(np.float32)
        raise InputError(f"mask values {sorted(values)[:5]} are neither 0/1 nor 0/255")
    if np.issubdtype(m.dtype, np.floating):
        if not np.isfinite(m).all() or m.min(initial=0.0) < 0 or m.max(initial=0.0) > 1:
            raise InputError("a float mask must lie in [0, 1] (got values outside, e.g. an unscaled 0/255 mask)")
        return m.astype(np.float32)
    raise InputError(f"unsupported mask dtype {m.dtype}")


def preprocess_mask(mask: np.ndarray | torch.Tensor | None, shape: tuple[int, int] | None = None,
                    size: int = IMAGE_SIZE) -> torch.Tensor:
    """A 2D mask as Alpha-CLIP's region-mask input (the paper's "alpha" channel).

    Args:
        mask: the 2D structure mask, or None for "the whole image" (+1.923 everywhere).
        shape: the image slice's shape, which the mask must match (unused for None).
        size: the encoder's input side.

    Returns:
        float32 ``[1, size, size]``, ``(m - 0.5) / 0.26`` after padding to a square and resizing.

    Raises:
        InputError: not 2D, or a shape that differs from the slice.
    """
    if mask is None:
        return torch.full((1, size, size), MASK_FOREGROUND, dtype=torch.float32)
    m = binary_mask(mask)
    if m.ndim != 2:
        raise InputError(f"expected a 2D mask, got shape {m.shape}")
    if shape is not None and tuple(m.shape) != tuple(shape):
        raise InputError(f"mask shape {m.shape} differs from the image slice {tuple(shape)}")
    x = _pad_square(torch.from_numpy(m)[None], 0.0)
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    region_mask = (x.clamp_(0.0, 1.0) - MASK_MEAN) / MASK_STD
    if region_mask.abs().max() > MASK_FOREGROUND + 1e-4:  # cannot happen after binary_mask; kept as the trap's tripwire
        raise AssertionError(f"region_mask out of range (max |region_mask| = {float(region_mask.abs().max()):.3f})")
    return region_mask


def preprocess_pair(image_slice: np.ndarray, mask: np.ndarray | torch.Tensor | None,
                    size: int = IMAGE_SIZE, percentiles: Sequence[float] = PERCENTILES
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """An image slice and its mask, ready for the Alpha-CLIP visual encoder.

    Args:
        image_slice: the 2D image slice.
        mask: its structure mask, or None (the whole image).
        size: the encoder's input side ``S``.
        percentiles: the intensity window of the slice.

    Returns:
        ``([3, S, S]`` image, ``[1, S, S]`` region mask).
    """
    image = preprocess_image(image_slice, size, percentiles)
    region_mask = preprocess_mask(mask, tuple(np.shape(image_slice)), size)
    return image, region_mask


__all__ = ["CLIP_MEAN", "CLIP_STD", "MASK_MEAN", "MASK_STD", "MASK_FOREGROUND", "MASK_BACKGROUND",
           "IMAGE_SIZE", "PERCENTILES", "scale_intensity", "preprocess_image", "binary_mask",
           "preprocess_mask", "preprocess_pair"]

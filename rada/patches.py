"""Patch geometry shared by training, fine-tuning and inference: padding and size checks."""

from __future__ import annotations

from typing import Sequence

from rada.errors import InputError


def centred_padding(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """Padding that makes every side of ``shape`` at least ``patch``, split evenly (odd extra after).

    Args:
        shape: the array's size per axis.
        patch: the patch size per axis.

    Returns:
        ``(before, after)`` per axis, as :func:`numpy.pad` takes it; ``(0, 0)`` where the array
        is already large enough.
    """
    return [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(shape, patch)]


def check_patch_size(patch_size: Sequence[int], levels: int, what: str = "patch_size") -> tuple[int, int, int]:
    """Refuse a patch the V-Net cannot take: each side must be a multiple of ``2 ** (levels - 1)``.

    Args:
        patch_size: the patch size ``[z, y, x]``.
        levels: the V-Net's encoder levels (it halves the size ``levels - 1`` times).
        what: how to name the setting in the message.

    Returns:
        The patch size as a tuple of three ints.

    Raises:
        InputError: not three sides, or a side that is not a positive multiple of the divisor.
    """
    divisor = 2 ** (levels - 1)
    if len(patch_size) != 3 or any(p < divisor or p % divisor for p in patch_size):
        raise InputError(f"{what} {list(patch_size)} must be three multiples of {divisor} "
                         f"(the V-Net halves the size {divisor.bit_length() - 1} times)")
    return tuple(int(p) for p in patch_size)  # type: ignore[return-value]


__all__ = ["centred_padding", "check_patch_size"]

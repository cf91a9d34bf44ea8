"""Where torch runs: the one place a device is chosen (then passed down, never re-guessed)."""

from __future__ import annotations

import torch

from rada.errors import InputError


def select_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device to run on; CUDA only where it exists or is asked for.

    Args:
        preference: ``auto`` (this process's CUDA device when there is one, else CPU), ``cpu``,
            ``cuda`` (the GPU of ``local_rank``) or ``cuda:N``.
        local_rank: this process's rank on its machine (torchrun); picks the GPU for ``cuda``.

    Returns:
        The device; a CUDA device is also made torch's current one.

    Raises:
        InputError: CUDA was asked for, but torch sees no CUDA GPU.
    """
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda asked for, but torch sees no CUDA GPU")
        if preference == "cuda":
            preference = f"cuda:{local_rank % torch.cuda.device_count()}"
        device = torch.device(preference)
        torch.cuda.set_device(device)
        return device
    return torch.device(preference)


__all__ = ["select_device"]

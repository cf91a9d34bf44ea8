"""Sliding-window inference of a trained tri-view model (METHOD.md section 6).

Windows of the training patch tile the volume with a given stride (the last window of
every axis is flush with the end, so every voxel is covered); a volume smaller than the
patch is padded. Window predictions are blended with a Gaussian (nnU-Net) or uniform
importance map and run in batches. The output is one view's softmax or the mean of the
three views' softmaxes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from rada.device import select_device
from rada.errors import InputError
from rada.intensity import zscore
from rada.nets.triview import ModelConfig, TriViewModel
from rada.patches import centred_padding, check_patch_size
from rada.protocol import to_input_grid, to_model_grid
from rada.checkpoint import load_checkpoint
from rada.volume import Volume

Predictor = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings.

    Attributes:
        patch_size: window ``[z, y, x]``; None: the checkpoint's training patch.
        stride: step between windows ``[z, y, x]``; None: half the patch (50 % overlap).
        blending: ``gaussian`` or ``uniform`` window weights.
        sigma_scale: Gaussian sigma as a fraction of the patch size.
        batch_size: windows per forward pass.
        view: ``mean`` (of the three views' softmax) or a view name.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        bf16: bf16 autocast, on CUDA only.
        threshold: foreground probability above which a voxel is labelled.
        constrain_to_annotation: annotated voxels keep their painted value.
    """

    patch_size: tuple[int, int, int] | None = None   # None: the checkpoint's training patch
    stride: tuple[int, int, int] | None = None
    blending: str = "gaussian"                      # "gaussian" or "uniform"
    sigma_scale: float = 0.125
    batch_size: int = 4
    view: str = "mean"                              # "mean" or a view name
    device: str = "auto"
    bf16: bool = True                               # bf16 autocast on CUDA only
    threshold: float = 0.5
    constrain_to_annotation: bool = True            # annotated voxels keep their painted value


@dataclass
class Prediction:
    """A prediction on the image grid.

    Attributes:
        label: uint8 0/1 label with the input image's geometry.
        probability: float32 foreground probability, same grid.
        info: facts about the run: device, view, blending, guidance, checkpoint content hash
            and the model grid.
    """

    label: Volume
    probability: Volume
    info: dict[str, Any] = field(default_factory=dict)


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start indices of sliding windows along one axis.

    The last window ends at ``size``, so the axis is covered; a stride above the patch is
    clamped to the patch, or voxels between windows would be skipped.

    Args:
        size: the axis length (at least ``patch`` after padding).
        patch: the window length.
        stride: the step between windows.

    Returns:
        The start indices (``[0]`` when the axis fits in one window).

    Raises:
        ValueError: a stride that is not positive.
    """
    if size <= patch:
        return [0]
    if stride <= 0:
        raise ValueError("stride must be positive")
    stride = min(stride, patch)
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def importance_map(patch: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights of one window.

    Args:
        patch: the window size.
        mode: ``gaussian`` (centred on the window, nnU-Net's) or ``uniform`` (all ones).
        sigma_scale: the Gaussian's sigma as a fraction of the window.

    Returns:
        float32 weights, maximum 1, no zeros.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "uniform":
        return np.ones(tuple(patch), np.float32)
    if mode != "gaussian":
        raise ValueError(f"unknown blending {mode!r} (gaussian or uniform)")
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) - (p - 1) / 2 for p in patch], indexing="ij")
    sq = sum((g / max(p * sigma_scale, 1e-6)) ** 2 for g, p in zip(grids, patch))
    w = np.exp(-0.5 * sq)
    w /= w.max()
    w = np.maximum(w, w[w > 0].min() if (w > 0).any() else 1.0)
    return w.astype(np.float32)


def sliding_window(array: np.ndarray, predictor: Predictor, patch: Sequence[int], stride: Sequence[int] | None = None,
                   blending: str = "gaussian", batch_size: int = 4, device: torch.device | str = "cpu",
                   sigma_scale: float = 0.125, return_coverage: bool = False):
    """Blend ``predictor`` over a ``[z, y, x]`` array, window by window.

    Arrays smaller than ``patch`` are padded (centred, with the array's minimum) and the
    result cropped back.

    Args:
        array: the image ``[z, y, x]``.
        predictor: ``[B, 1, *patch] -> [B, C, *patch]`` probabilities.
        patch: window size ``[z, y, x]``.
        stride: step between windows ``[z, y, x]`` (default half the patch; clamped to the
            patch).
        blending: ``gaussian`` or ``uniform`` importance weights.
        batch_size: windows per predictor call.
        device: where the windows and the accumulators live.
        sigma_scale: Gaussian sigma as a fraction of the patch size.
        return_coverage: also return the per-voxel sum of blending weights.

    Returns:
        ``[C, z, y, x]`` float32 probabilities, or ``(probabilities, coverage)`` where
        ``coverage`` ``[z, y, x]`` is positive everywhere.

    Raises:
        ValueError: a stride that is not positive.
    """
    patch = tuple(int(p) for p in patch)
    stride = tuple(int(s) for s in (stride or [max(1, p // 2) for p in patch]))
    shape = array.shape
    pads = centred_padding(shape, patch)
    padded = np.pad(array, pads, mode="constant", constant_values=float(array.min())) if any(
        a or b for a, b in pads) else array
    starts = [window_starts(s, p, st) for s, p, st in zip(padded.shape, patch, stride)]
    corners = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    dev = torch.device(device)
    vol = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).to(dev)
    weight = torch.from_numpy(importance_map(patch, blending, sigma_scale)).to(dev)
    acc: Tensor | None = None
    norm = torch.zeros(padded.shape, device=dev)
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        x = torch.stack([vol[z:z + patch[0], y:y + patch[1], x0:x0 + patch[2]] for z, y, x0 in chunk])[:, None]
        prob = predictor(x).float()
        if acc is None:
            acc = torch.zeros((prob.shape[1],) + padded.shape, device=dev)
        for (z, y, x0), p in zip(chunk, prob):
            acc[:, z:z + patch[0], y:y + patch[1], x0:x0 + patch[2]] += p * weight
            norm[z:z + patch[0], y:y + patch[1], x0:x0 + patch[2]] += weight
    assert acc is not None
    out = acc / norm
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, shape))
    out = out[(slice(None),) + crop].cpu().numpy()
    if return_coverage:
        return out, norm[crop].cpu().numpy()
    return out


def load_model(checkpoint: str | os.PathLike | dict, device: torch.device | str = "cpu") -> tuple[TriViewModel, dict]:
    """Load a trained tri-view model.

    Args:
        checkpoint: a checkpoint file, or its already loaded state.
        device: where the model goes.

    Returns:
        The :class:`TriViewModel` in eval mode, and the checkpoint's metadata (no weights).
    """
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = TriViewModel(ModelConfig.from_dict(state["model_config"]))
    for k, net in model.nets.items():
        net.load_state_dict(state["views"][k])
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k not in ("views", "optimizers", "rng")}
    return model, meta


def model_predictor(model: TriViewModel, view: str = "mean", bf16: bool = False) -> Predictor:
    """A predictor for :func:`sliding_window`: ``[B, 1, ...] -> [B, 2, ...]`` probabilities.

    Args:
        model: the tri-view model.
        view: one view's softmax, or ``mean`` (the mean of the three views' softmaxes).
        bf16: autocast to bfloat16 (CUDA only).

    Returns:
        The predictor (no gradients).

    Raises:
        InputError: an unknown view.
    """
    if view != "mean" and view not in model.nets:
        raise InputError(f"unknown view {view!r}; use mean or one of {', '.join(model.nets)}")
    device = next(model.parameters()).device
    use_bf16 = bf16 and device.type == "cuda"

    @torch.no_grad()
    def predict(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return model.probabilities(x, view)
    return predict


def predict_probability(model: TriViewModel, image: np.ndarray, config: InferenceConfig = InferenceConfig(),
                        patch_size: Sequence[int] | None = None) -> np.ndarray:
    """Foreground probability of a z-scored image by sliding-window inference.

    Args:
        model: the tri-view model (on its device).
        image: the z-scored image ``[z, y, x]``.
        config: inference settings; its ``patch_size`` wins over ``patch_size``.
        patch_size: the checkpoint's training patch.

    Returns:
        float32 ``[z, y, x]`` foreground probability.

    Raises:
        InputError: no patch size, or one the V-Net cannot take.
    """
    patch = config.patch_size or patch_size
    if patch is None:
        raise InputError("no patch size: give InferenceConfig.patch_size or the checkpoint's")
    patch = check_patch_size(patch, len(model.config.backbone.encoder_blocks))
    device = next(model.parameters()).device
    model.eval()
    prob = sliding_window(image, model_predictor(model, config.view, config.bf16), patch, config.stride,
                          config.blending, config.batch_size, device, config.sigma_scale)
    return prob[1]


def predict(image: Volume, model: str | os.PathLike | TriViewModel, config: InferenceConfig = InferenceConfig(),
            annotation: Any = None, patch_size: Sequence[int] | None = None) -> Prediction:
    """Segment ``image`` (raw intensities; z-scored here) with a checkpoint or a loaded model.

    Args:
        image: the image; the result is on its grid.
        model: a checkpoint file or a loaded :class:`TriViewModel`.
        config: inference settings (device, view, blending, threshold).
        annotation: a :class:`rada.annotation.SparseAnnotation` on the image grid; with
            ``constrain_to_annotation``, annotated voxels keep their painted value.
        patch_size: the window, when ``model`` is a loaded model (a checkpoint carries its own).

    Returns:
        The label and probability volumes and a JSON-ready ``info``.

    Raises:
        InputError: a bad checkpoint, device, patch size or annotation grid.
    """
    device = select_device(config.device)
    meta: dict = {}
    if not isinstance(model, TriViewModel):
        model, meta = load_model(model, device)
        patch_size = patch_size or meta.get("preprocessing", {}).get("patch_size")
    model = model.to(device).eval()
    # The checkpoint's protocol (HU window, spacing): predict on its grid, come back to the input's.
    model_input = to_model_grid(image, meta.get("preprocessing", {}))
    prob = predict_probability(model, zscore(model_input.array), config, patch_size)
    prob = to_input_grid(model_input.with_array(prob.astype(np.float32)), image).array
    label = (prob >= config.threshold).astype(np.uint8)
    if annotation is not None and config.constrain_to_annotation:
        mismatch = image.grid_mismatch(annotation.labels)
        if mismatch:
            raise InputError(f"annotation geometry differs from the image: {mismatch}")
        annotation.paste(label)
    info = {"device": str(device), "view": config.view, "blending": config.blending,
            "guidance": meta.get("guidance", {}).get("enabled", model.guided) if meta else model.guided,
            "content_hash": meta.get("content_hash"),
            "model_grid": {"spacing": list(model_input.spacing), "shape_zyx": list(model_input.shape)}}
    return Prediction(image.with_array(label), image.with_array(prob.astype(np.float32)), info)


__all__ = ["InferenceConfig", "Prediction", "window_starts", "importance_map", "sliding_window", "load_model",
           "model_predictor", "predict_probability", "predict"]


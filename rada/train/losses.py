"""Losses of RADA training (METHOD.md section 5), computed in float32.

``weighted_ce = -sum(W log p_y) / sum(W)``;
``weighted_dice = 1 - (2 sum(W p y) + eps) / (sum(W y^2) + sum(W p^2) + eps)`` on the
foreground channel; ``supervised = 0.5 wCE + 0.5 wDice``. The unsupervised term is the
cross entropy to a teacher's argmax, averaged over the voxels where the teacher is certain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor, eps: float = 1e-8) -> Tensor:
    """``-sum(W log p_y) / sum(W)``.

    Args:
        logits: ``[B, C, ...]``.
        target: class indices ``[B, ...]``.
        weight: per-voxel weights ``[B, ...]``.
        eps: keeps an all-zero weight finite.

    Returns:
        The scalar loss (float32).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    w = weight.float()
    return (w * nll).sum() / (w.sum() + eps)


def weighted_dice_loss(logits: Tensor, target: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """``1 - (2 sum(W p y) + eps) / (sum(W y^2) + sum(W p^2) + eps)``, p = foreground softmax.

    Args:
        logits: ``[B, 2, ...]`` (channel 1 is the foreground).
        target: class indices ``[B, ...]``.
        weight: per-voxel weights ``[B, ...]``.
        eps: smoothing of numerator and denominator.

    Returns:
        The scalar loss (float32).
    """
    p = torch.softmax(logits.float(), dim=1)[:, 1]
    y = (target == 1).float()
    w = weight.float()
    inter = (w * p * y).sum()
    return 1.0 - (2.0 * inter + eps) / ((w * y * y).sum() + (w * p * p).sum() + eps)


def supervised_loss(logits: Tensor, target: Tensor, weight: Tensor, ce_weight: float = 0.5) -> Tensor:
    """``ce_weight * wCE + (1 - ce_weight) * wDice`` (METHOD.md: 0.5 each).

    Args:
        logits: ``[B, 2, ...]``.
        target: class indices ``[B, ...]``.
        weight: per-voxel weights ``[B, ...]`` (the pseudo-labels' alpha^d weights).
        ce_weight: the cross entropy's share.

    Returns:
        The scalar loss (float32).
    """
    return (ce_weight * weighted_cross_entropy(logits, target, weight)
            + (1.0 - ce_weight) * weighted_dice_loss(logits, target, weight))


def masked_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Cross entropy to ``target`` averaged over the ``mask`` voxels.

    Args:
        logits: ``[B, C, ...]``.
        target: class indices ``[B, ...]`` (a teacher's argmax).
        mask: the voxels to average over ``[B, ...]`` (the teacher's certain voxels).

    Returns:
        The scalar loss (float32); 0 when the mask is empty.
    """
    nll = F.cross_entropy(logits.float(), target.long(), reduction="none")
    m = mask.float()
    return (m * nll).sum() / m.sum().clamp_min(1.0)


def entropy(probabilities: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-voxel entropy (nats) over the class dimension.

    Args:
        probabilities: ``[B, C, ...]``, summing to 1 over dimension 1.
        eps: keeps ``log(0)`` finite.

    Returns:
        ``[B, ...]``.
    """
    return -(probabilities * torch.log(probabilities + eps)).sum(dim=1)


__all__ = ["weighted_cross_entropy", "weighted_dice_loss", "supervised_loss", "masked_cross_entropy", "entropy"]

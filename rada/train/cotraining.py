"""Uncertainty-masked cross pseudo supervision between the three views (METHOD.md section 5).

Each view learns from the argmax of each of the other two views (their detached outputs
on the same unlabeled patches), masked where that teacher is certain: the entropy of the
mean softmax over ``T`` noisy passes (input + clamp(N(0, sigma^2), +-c)) is below a
threshold. The ``T`` passes go through the network as ONE batch of ``T * B`` samples; the
teacher's BatchNorm running statistics are left untouched by them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from rada.train.losses import entropy, masked_cross_entropy, supervised_loss


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Context manager: keep batch-norm running statistics unchanged within the block.

    Batch statistics are still used (train mode), but the running statistics (and
    ``num_batches_tracked``) of every batch norm in ``module`` are restored on exit.

    Args:
        module: a network with batch-norm layers.

    Yields:
        None.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def noisy_copies(x: Tensor, passes: int, std: float = 0.1, clip: float = 0.2) -> Tensor:
    """``passes`` noisy copies of ``x`` stacked on the batch axis (draws from torch's global RNG).

    Args:
        x: ``[B, ...]``.
        passes: number of copies.
        std: standard deviation of the Gaussian noise.
        clip: the noise is clipped to ``[-clip, clip]``.

    Returns:
        ``[passes * B, ...]`` (copy ``i`` is rows ``i * B`` to ``(i + 1) * B``).
    """
    xs = x.repeat(passes, *([1] * (x.dim() - 1)))
    return xs + torch.clamp(torch.randn_like(xs) * std, -clip, clip)


@torch.no_grad()
def teacher_mean_probability(net: nn.Module, x: Tensor, passes: int = 8, std: float = 0.1, clip: float = 0.2,
                             batched: bool = True) -> Tensor:
    """Mean softmax of ``passes`` noisy passes of ``net`` on ``x`` (no gradients, running
    batch-norm statistics untouched).

    Args:
        net: the teacher network.
        x: ``[B, 1, ...]`` unlabeled patches.
        passes: number of noisy passes.
        std: standard deviation of the noise.
        clip: the noise is clipped to ``[-clip, clip]``.
        batched: one forward for all passes; False runs them one by one (the reference's
            way, kept for the benchmark). The noise is drawn the same way in both.

    Returns:
        ``[B, C, ...]`` float32 probabilities.
    """
    with frozen_bn_stats(net):
        noisy = noisy_copies(x, passes, std, clip)
        if batched:
            logits = net(noisy)
        else:
            logits = torch.cat([net(chunk) for chunk in noisy.split(x.shape[0])])
        p = torch.softmax(logits.float(), dim=1)
    return p.view(passes, x.shape[0], *p.shape[1:]).mean(0)


def certainty_mask(mean_probability: Tensor, threshold: float) -> Tensor:
    """Voxels whose entropy (nats) is below ``threshold``.

    Args:
        mean_probability: ``[B, C, ...]`` (from :func:`teacher_mean_probability`).
        threshold: entropy threshold in nats.

    Returns:
        Boolean ``[B, ...]``.
    """
    return entropy(mean_probability) < threshold


def view_losses(logits: Mapping[str, Tensor], labels: Mapping[str, Tensor], weights: Mapping[str, Tensor],
                n_labeled: int, masks: Mapping[str, Tensor] | None, beta: float,
                form: str = "sgtc") -> dict[str, dict[str, Tensor]]:
    """The losses of every view; teachers' pseudo-labels are the argmax of their (detached)
    outputs on the unlabeled part.

    ``form='sgtc'``: ``(1 - 2 beta) L_sup + beta L_j + beta L_k`` (DEFAULT);
    ``form='paper'``: ``(1 - beta) L_sup + beta (L_j + L_k) / 2``.

    Args:
        logits: per view, ``[B, 2, ...]``: ``n_labeled`` labeled rows, then unlabeled rows.
        labels: per view, the labeled rows' pseudo-labels ``[n_labeled, ...]``.
        weights: per view, their alpha^d weights ``[n_labeled, ...]``.
        n_labeled: number of labeled rows.
        masks: per view, its certain voxels on the unlabeled rows; None: supervised only.
        beta: the unsupervised weight.
        form: ``"sgtc"`` or ``"paper"``.

    Returns:
        Per view: ``sup``, ``unsup`` (sum over the other views) and ``total`` (scalars).

    Raises:
        ValueError: an unknown ``form``.
    """
    names = list(logits)
    pseudo = {k: logits[k][n_labeled:].detach().argmax(1) for k in names} if masks else {}
    out: dict[str, dict[str, Tensor]] = {}
    for v in names:
        sup = supervised_loss(logits[v][:n_labeled], labels[v], weights[v])
        if masks:
            terms = [masked_cross_entropy(logits[v][n_labeled:], pseudo[k], masks[k]) for k in names if k != v]
            unsup = torch.stack(terms).sum()
        else:
            terms, unsup = [], sup.new_zeros(())
        if form == "sgtc":
            total = (1 - len(terms) * beta) * sup + beta * unsup if terms else sup
        elif form == "paper":
            total = (1 - beta) * sup + beta * unsup / max(len(terms), 1) if terms else sup
        else:
            raise ValueError(f"unknown loss form {form!r} (sgtc or paper)")
        out[v] = {"sup": sup, "unsup": unsup, "total": total}
    return out


__all__ = ["frozen_bn_stats", "noisy_copies", "teacher_mean_probability", "certainty_mask", "view_losses"]

"""The guidance head of SGTC extended as RADA describes (METHOD.md section 4).

``E_ra = ReLU(Linear(1024 -> 256)(Adapter(concat(text, visual))))`` with
``Adapter = Linear(1024 -> 256, no bias)-ReLU-Linear(256 -> 1024, no bias)-ReLU``;
``g = Conv1x1(GAP(ReLU(GN(x5))))``; ``gamma = 1x1 convs (|g| + 256) -> 256 -> 128 -> 64 -> 8``
on ``concat(g, E_ra)`` (no activation between them);
``logits = Conv1x1(8 -> 2)(Conv1x1(w -> 8)(ReLU(GN(x9))) + gamma)``.

Without guidance (``embedding_dim = 0``) E_ra is omitted and the controller sees only ``g``:
the plain tri-view baseline. The paper's channel numbers are those of width 16; the GAP
branch scales with the backbone width, the controller's hidden sizes stay fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadConfig:
    """Guidance head sizes. ``embedding_dim = 0`` switches the guidance off.

    Attributes:
        embedding_dim: guidance embedding length: concat(text 512, visual 512); 0 = no guidance.
        adapter_dim: hidden size of the embedding adapter.
        projection_dim: size of the region embedding E_ra.
        controller_dims: output channels of the controller's 1x1x1 convolutions; the last one
            is the classifier's hidden width.
        num_classes: output classes (2: background, structure).
        groups: GroupNorm groups (fewer when the channels are not a multiple).
    """

    embedding_dim: int = 1024        # concat(text 512, visual 512); 0 = no guidance
    adapter_dim: int = 256
    projection_dim: int = 256        # E_ra
    controller_dims: tuple[int, ...] = (256, 128, 64, 8)
    num_classes: int = 2
    groups: int = 16

    @property
    def guided(self) -> bool:
        """True when the head takes a guidance embedding (``embedding_dim > 0``)."""
        return self.embedding_dim > 0


def group_norm(channels: int, groups: int = 16) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or fewer when ``channels`` is not a multiple (narrow test nets).

    Args:
        channels: channels to normalise.
        groups: wanted number of groups; ``gcd(groups, channels)`` is used.

    Returns:
        The :class:`torch.nn.GroupNorm` layer.
    """
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class Adapter(nn.Sequential):
    """CLIP-Adapter style bottleneck: Linear(d -> h, no bias)-ReLU-Linear(h -> d, no bias)-ReLU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim, bias=False), nn.ReLU(inplace=True))


class GuidanceHead(nn.Module):
    """Maps ``(x5, x9[, embedding])`` to 2-class logits at the resolution of ``x9``."""

    def __init__(self, bottleneck_channels: int, feature_channels: int, config: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.config = config
        if config.guided:
            self.adapter = Adapter(config.embedding_dim, config.adapter_dim)
            self.projection = nn.Sequential(nn.Linear(config.embedding_dim, config.projection_dim),
                                            nn.ReLU(inplace=True))
        self.gap = nn.Sequential(group_norm(bottleneck_channels, config.groups), nn.ReLU(inplace=True),
                                 nn.AdaptiveAvgPool3d(1), nn.Conv3d(bottleneck_channels, bottleneck_channels, 1))
        dims = (bottleneck_channels + (config.projection_dim if config.guided else 0),) + config.controller_dims
        self.controller = nn.Sequential(*(nn.Conv3d(a, b, 1) for a, b in zip(dims[:-1], dims[1:])))
        hidden = config.controller_dims[-1]
        self.pre_classifier = nn.Sequential(group_norm(feature_channels, config.groups), nn.ReLU(inplace=True),
                                            nn.Conv3d(feature_channels, hidden, 1))
        self.classifier = nn.Conv3d(hidden, config.num_classes, 1)

    def region_embedding(self, embedding: Tensor) -> Tensor:
        """E_ra, the projected region embedding.

        Args:
            embedding: ``[embedding_dim]`` (1024) or ``[B, embedding_dim]`` guidance embedding.

        Returns:
            ``[B, projection_dim]`` (256); B = 1 for a vector.
        """
        return self.projection(self.adapter(embedding.reshape(-1, self.config.embedding_dim)))

    def forward(self, x5: Tensor, x9: Tensor, embedding: Tensor | None = None) -> Tensor:
        """Class logits from the backbone's bottleneck and last decoder features.

        The bottleneck is pooled (with the region embedding appended when guided) and the
        controller turns it into a per-channel shift added to the decoder features before the
        classifier.

        Args:
            x5: bottleneck features ``[B, C5, z, y, x]``.
            x9: last decoder features ``[B, C, Z, Y, X]``.
            embedding: ``[1024]`` or ``[B, 1024]`` guidance embedding; required when guided,
                ignored otherwise.

        Returns:
            Logits ``[B, num_classes, Z, Y, X]``.

        Raises:
            ValueError: the head is guided and ``embedding`` is None.
        """
        g = self.gap(x5)                                           # [B, C5, 1, 1, 1]
        if self.config.guided:
            if embedding is None:
                raise ValueError("this head was built with guidance; pass the 1024-d embedding")
            e = self.region_embedding(embedding.to(g.dtype))       # [1 or B, 256]
            e = e.expand(g.shape[0], -1)[:, :, None, None, None]
            g = torch.cat([g, e], dim=1)
        gamma = self.controller(g)                                 # [B, 8, 1, 1, 1]
        return self.classifier(self.pre_classifier(x9) + gamma)


__all__ = ["HeadConfig", "GuidanceHead", "Adapter", "group_norm"]

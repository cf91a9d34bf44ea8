"""Three views, three networks: the tri-view model of DeSCO / SGTC / RADA.

A *view* is data, not code: its name and the array axis (``[z, y, x]`` order) along which its
pseudo-label was propagated. Every view has its own V-Net and guidance head; all three see
the same input patch, and differ by the pseudo-labels and voxel weights they learn from
and by their visual embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from rada.nets.head import GuidanceHead, HeadConfig
from rada.nets.vnet import VNet, VNetConfig
from rada.views import VIEWS, View


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one view's network (the three copies share it).

    Attributes:
        backbone: the V-Net's settings.
        head: the guidance head's settings.
    """

    backbone: VNetConfig = field(default_factory=VNetConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    @classmethod
    def make(cls, width: int = 16, guidance: bool = True, **head: object) -> "ModelConfig":
        """Shortcut: ``ModelConfig.make(width=4, guidance=False)``.

        Args:
            width: first backbone stage's channels.
            guidance: build the guidance head input (1024-d embedding) or not.
            **head: further :class:`HeadConfig` fields.

        Returns:
            The :class:`ModelConfig`.
        """
        return cls(VNetConfig(width=width), HeadConfig(embedding_dim=1024 if guidance else 0, **head))

    def as_dict(self) -> dict:
        """The config as nested dicts (stored in checkpoints).

        Returns:
            ``dataclasses.asdict`` of the config.
        """
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        """Rebuild a config written by :meth:`as_dict` (JSON lists become tuples again).

        Args:
            d: mapping with ``backbone`` and ``head`` entries, each complete.

        Returns:
            The :class:`ModelConfig`.
        """
        b, h = dict(d["backbone"]), dict(d["head"])
        for k in ("encoder_blocks", "decoder_blocks"):
            b[k] = tuple(b[k])
        h["controller_dims"] = tuple(h["controller_dims"])
        return cls(VNetConfig(**b), HeadConfig(**h))


class ViewNet(nn.Module):
    """One view's network: V-Net backbone + guidance head -> logits ``[B, 2, Z, Y, X]``.

    The view's guidance embedding ``concat(text, visual[view])`` (1024 floats, constant:
    the encoders are frozen) is a buffer, so it travels with the weights.
    """

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.backbone = VNet(config.backbone)
        self.head = GuidanceHead(config.backbone.bottleneck_channels, config.backbone.width, config.head)
        if config.head.guided:
            self.register_buffer("embedding", torch.zeros(config.head.embedding_dim))

    @property
    def guided(self) -> bool:
        """True when the network was built with guidance."""
        return self.config.head.guided

    def set_embedding(self, embedding: Tensor) -> None:
        """Set the constant guidance embedding (1024 floats).

        Args:
            embedding: the embedding, any shape with ``embedding_dim`` (1024) elements; copied to the buffer's
                device and dtype.

        Raises:
            ValueError: the network was built without guidance.
        """
        if not self.guided:
            raise ValueError("this network was built without guidance")
        self.embedding.copy_(embedding.detach().reshape(-1).to(self.embedding))

    def forward(self, x: Tensor) -> Tensor:
        """Segment a batch of patches.

        Args:
            x: images ``[B, 1, Z, Y, X]``.

        Returns:
            Logits ``[B, num_classes, Z, Y, X]``.
        """
        x5, x9 = self.backbone(x)
        return self.head(x5, x9, self.embedding if self.guided else None)


class TriViewModel(nn.Module):
    """Three :class:`ViewNet`, one per view, addressed by view name."""

    def __init__(self, config: ModelConfig = ModelConfig(), views: Sequence[View] = VIEWS) -> None:
        super().__init__()
        self.config = config
        self.views = tuple(views)
        self.nets = nn.ModuleDict({v.name: ViewNet(config) for v in self.views})

    def __getitem__(self, name: str) -> ViewNet:
        return self.nets[name]  # type: ignore[return-value]

    def items(self) -> Iterator[tuple[View, ViewNet]]:
        """The view networks in view order.

        Yields:
            ``(view, network)`` pairs.
        """
        for v in self.views:
            yield v, self.nets[v.name]  # type: ignore[misc]

    @property
    def guided(self) -> bool:
        """True when the view networks were built with guidance."""
        return self.config.head.guided

    def set_guidance(self, text: Tensor, visual: Mapping[str, Tensor]) -> None:
        """Give every view its constant guidance embedding ``concat(text[512], visual[view][512])``.

        Args:
            text: the text embedding.
            visual: the visual embedding of each view, by view name.
        """
        for v, net in self.items():
            net.set_embedding(torch.cat([text.reshape(-1), visual[v.name].reshape(-1)]))

    def forward(self, x: Tensor, view: str | None = None) -> Tensor | dict[str, Tensor]:
        """Logits of one view, or of every view.

        Args:
            x: the input patch ``[B, 1, Z, Y, X]``.
            view: a view name, or None for all.

        Returns:
            ``[B, 2, Z, Y, X]`` logits, or a dict of them by view name.
        """
        if view is not None:
            return self.nets[view](x)
        return {v.name: net(x) for v, net in self.items()}

    @torch.no_grad()
    def probabilities(self, x: Tensor, view: str = "mean") -> Tensor:
        """Class probabilities without gradients.

        Args:
            x: the input patch ``[B, 1, Z, Y, X]``.
            view: a view name, or ``mean`` (the mean of the three views' softmaxes).

        Returns:
            ``[B, 2, Z, Y, X]`` probabilities.
        """
        if view != "mean":
            return torch.softmax(self.nets[view](x).float(), dim=1)
        return torch.stack([torch.softmax(net(x).float(), dim=1) for _, net in self.items()]).mean(0)


__all__ = ["ModelConfig", "ViewNet", "TriViewModel"]

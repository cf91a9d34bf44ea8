"""The V-Net backbone of UA-MT (Yu et al., MICCAI 2019) as METHOD.md section 4 pins it.

Encoder stages of (1, 2, 3, 3, 3) 3x3x3 conv-BN-ReLU blocks with ``w, 2w, 4w, 8w, 16w``
channels (``w = 16`` in the paper), 2x2x2 stride-2 convolutions down; decoder stages of
(3, 3, 2, 1) blocks after 2x2x2 transposed convolutions up, with additive skips;
``Dropout3d(0.5)`` on the bottleneck and on the last feature. The backbone returns
``(x5, x9)``: the bottleneck (``16w`` channels) and the last decoder feature (``w``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class VNetConfig:
    """Backbone hyper-parameters.

    Attributes:
        in_channels: input channels (1: one image).
        width: the first stage's channels (16 in the paper); each deeper stage doubles them.
        encoder_blocks: conv-BN-ReLU blocks per encoder stage.
        decoder_blocks: blocks per decoder stage (one stage fewer than the encoder).
        dropout: 3D dropout of the bottleneck and the last decoder features.
    """

    in_channels: int = 1
    width: int = 16
    encoder_blocks: tuple[int, ...] = (1, 2, 3, 3, 3)
    decoder_blocks: tuple[int, ...] = (3, 3, 2, 1)
    dropout: float = 0.5

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of every encoder stage: ``width * 2**i``."""
        return tuple(self.width * 2**i for i in range(len(self.encoder_blocks)))

    @property
    def bottleneck_channels(self) -> int:
        """Channels of the deepest stage."""
        return self.channels[-1]


class ConvStage(nn.Sequential):
    """``n`` 3x3x3 conv-BN-ReLU blocks; the first maps ``in_ch`` to ``out_ch``."""

    def __init__(self, n: int, in_ch: int, out_ch: int) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1),
                       nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2x2 stride-2 conv-BN-ReLU: halves the size, changes the channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.Conv3d(in_ch, out_ch, 2, stride=2), nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True))


class Up(nn.Sequential):
    """2x2x2 stride-2 transposed conv-BN-ReLU: doubles the size, changes the channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2), nn.BatchNorm3d(out_ch),
                         nn.ReLU(inplace=True))


class VNet(nn.Module):
    """UA-MT's V-Net without its output convolution: ``forward(x) -> (x5, x9)``.

    Input sizes must be divisible by ``2 ** (len(encoder_blocks) - 1)`` (16 by default;
    :func:`rada.patches.check_patch_size` refuses others with a clear message).
    """

    def __init__(self, config: VNetConfig = VNetConfig()) -> None:
        super().__init__()
        if len(config.decoder_blocks) != len(config.encoder_blocks) - 1:
            raise ValueError("the decoder needs one stage fewer than the encoder")
        self.config = config
        ch = config.channels
        self.encoder = nn.ModuleList(
            ConvStage(n, config.in_channels if i == 0 else ch[i], ch[i]) for i, n in enumerate(config.encoder_blocks))
        self.down = nn.ModuleList(Down(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        rev = ch[::-1]  # 16w, 8w, 4w, 2w, w
        self.up = nn.ModuleList(Up(rev[i], rev[i + 1]) for i in range(len(rev) - 1))
        # The last decoder stage works at full resolution with ``w`` channels.
        self.decoder = nn.ModuleList(ConvStage(n, rev[i + 1], rev[i + 1])
                                     for i, n in enumerate(config.decoder_blocks))
        self.dropout = nn.Dropout3d(config.dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run the encoder-decoder.

        Args:
            x: images ``[B, in_channels, Z, Y, X]``; every side divisible by 2**(stages - 1).

        Returns:
            ``(x5, x9)``: the bottleneck features and the last decoder features
            ``[B, width, Z, Y, X]``, both after dropout.
        """
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i < len(self.down):
                skips.append(x)
                x = self.down[i](x)
        x5 = self.dropout(x)
        x = x5
        for up, stage, skip in zip(self.up, self.decoder, reversed(skips)):
            x = stage(up(x) + skip)
        return x5, self.dropout(x)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters.

    Args:
        module: any module.

    Returns:
        Sum of the element counts of the parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["VNetConfig", "VNet", "ConvStage", "Down", "Up", "count_parameters"]

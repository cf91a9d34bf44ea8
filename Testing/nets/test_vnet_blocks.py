"""rada.nets.vnet block by block: every conv-BN-ReLU block, the additive skips and the two
dropout points of UA-MT's V-Net as METHOD.md section 4 pins them (tiny widths, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rada.errors import InputError
from rada.nets.vnet import ConvStage, Down, Up, VNet, VNetConfig
from rada.patches import check_patch_size


def _blocks(stage: nn.Sequential) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
    layers = list(stage)
    assert len(layers) % 3 == 0
    return [tuple(layers[i:i + 3]) for i in range(0, len(layers), 3)]  # type: ignore[misc]


@pytest.mark.parametrize("n, cin, cout", [(1, 1, 4), (3, 6, 5), (2, 8, 8)])
def test_conv_stage_is_n_conv_bn_relu_blocks_the_first_changing_the_channels(n, cin, cout):
    stage = ConvStage(n, cin, cout)
    blocks = _blocks(stage)
    assert len(blocks) == n
    for i, (conv, bn, relu) in enumerate(blocks):
        assert isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d) and isinstance(relu, nn.ReLU)
        assert conv.in_channels == (cin if i == 0 else cout) and conv.out_channels == cout
        assert conv.kernel_size == (3, 3, 3) and conv.padding == (1, 1, 1) and conv.stride == (1, 1, 1)
        assert conv.bias is not None and bn.num_features == cout
    y = stage.eval()(torch.randn(2, cin, 5, 6, 7))
    assert y.shape == (2, cout, 5, 6, 7) and (y >= 0).all()  # size kept, ReLU last


def test_down_halves_and_up_doubles_with_bn_and_relu():
    down, up = Down(3, 5), Up(5, 3)
    for block, kind in ((down, nn.Conv3d), (up, nn.ConvTranspose3d)):
        conv, bn, relu = list(block)
        assert type(conv) is kind and isinstance(bn, nn.BatchNorm3d) and isinstance(relu, nn.ReLU)
        assert conv.kernel_size == (2, 2, 2) and conv.stride == (2, 2, 2) and conv.padding == (0, 0, 0)
    assert (down[0].in_channels, down[0].out_channels, down[1].num_features) == (3, 5, 5)
    assert (up[0].in_channels, up[0].out_channels, up[1].num_features) == (5, 3, 3)
    x = torch.randn(2, 3, 8, 6, 4)
    h = down.eval()(x)
    assert h.shape == (2, 5, 4, 3, 2) and (h >= 0).all()
    y = up.eval()(h)
    assert y.shape == (2, 3, 8, 6, 4) and (y >= 0).all()


def _reference_forward(net: VNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md 4 read literally: encoder stages with a stride-2 conv between them, the
    bottleneck through dropout is x5; each decoder stage takes up(x) + the encoder feature
    of the same size; the last feature through dropout is x9."""
    feats = []
    h = x
    for i in range(5):
        h = net.encoder[i](h)
        if i < 4:
            feats.append(h)
            h = net.down[i](h)
    x5 = net.dropout(h)
    h = x5
    for i in range(4):
        h = net.decoder[i](net.up[i](h) + feats[3 - i])
    return x5, net.dropout(h)


def test_forward_is_the_encoder_the_additive_skips_and_the_decoder():
    torch.manual_seed(0)
    net = VNet(VNetConfig(width=2)).eval()
    with torch.no_grad():
        for m in net.modules():  # non-trivial BN statistics, so every block matters
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 1, 16, 32, 16)
        x5, x9 = net(x)
        r5, r9 = _reference_forward(net, x)
    assert x5.shape == (2, 32, 1, 2, 1) and x9.shape == (2, 2, 16, 32, 16)
    torch.testing.assert_close(x5, r5)
    torch.testing.assert_close(x9, r9)
    # the skips carry the input's detail: cutting them changes the last feature
    with torch.no_grad():
        cut = x5
        for i in range(4):
            cut = net.decoder[i](net.up[i](cut))
    assert not torch.allclose(cut, x9)


def test_the_stages_see_the_channels_of_the_paper_layout():
    net = VNet(VNetConfig(in_channels=2, width=3))
    assert [s[0].in_channels for s in net.encoder] == [2, 6, 12, 24, 48]
    assert [s[0].out_channels for s in net.encoder] == [3, 6, 12, 24, 48]
    assert [(d[0].in_channels, d[0].out_channels) for d in net.down] == [(3, 6), (6, 12), (12, 24), (24, 48)]
    assert [(u[0].in_channels, u[0].out_channels) for u in net.up] == [(48, 24), (24, 12), (12, 6), (6, 3)]
    assert [(s[0].in_channels, s[0].out_channels) for s in net.decoder] == [(24, 24), (12, 12), (6, 6), (3, 3)]
    x5, x9 = net.eval()(torch.randn(1, 2, 16, 16, 16))
    assert x5.shape == (1, 48, 1, 1, 1) and x9.shape == (1, 3, 16, 16, 16)


def test_a_shallower_configuration_and_the_patch_sizes_it_takes():
    cfg = VNetConfig(width=2, encoder_blocks=(1, 2, 2), decoder_blocks=(2, 1), dropout=0.25)
    net = VNet(cfg)
    # three levels halve twice: 4 divides every side; the default four levels need 16
    assert check_patch_size((4, 8, 12), len(cfg.encoder_blocks)) == (4, 8, 12)
    with pytest.raises(InputError, match="multiples of 4"):
        check_patch_size((4, 8, 6), len(cfg.encoder_blocks))
    with pytest.raises(InputError, match="multiples of 16"):
        check_patch_size((8, 16, 16), len(VNetConfig().encoder_blocks))
    assert cfg.channels == (2, 4, 8) and cfg.bottleneck_channels == 8
    assert VNetConfig().bottleneck_channels == 256
    assert [len(_blocks(s)) for s in net.encoder] == [1, 2, 2] and [len(_blocks(s)) for s in net.decoder] == [2, 1]
    assert net.dropout.p == 0.25 and net.config is cfg
    x5, x9 = net.eval()(torch.randn(1, 1, 4, 8, 12))
    assert x5.shape == (1, 8, 1, 2, 3) and x9.shape == (1, 2, 4, 8, 12)


def test_a_decoder_that_does_not_match_the_encoder_is_refused():
    with pytest.raises(ValueError, match="^the decoder needs one stage fewer than the encoder$"):
        VNet(VNetConfig(encoder_blocks=(1, 2, 3), decoder_blocks=(1, 1, 1)))
    with pytest.raises(ValueError, match="^the decoder needs one stage fewer than the encoder$"):
        VNet(VNetConfig(encoder_blocks=(1, 2, 3), decoder_blocks=(1,)))

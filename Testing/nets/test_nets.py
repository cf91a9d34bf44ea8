"""Shapes of every block of the tri-view RADA network, guidance on and off."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rada.nets import (Adapter, GuidanceHead, HeadConfig, ModelConfig, TriViewModel, VNet, VNetConfig,
                       ViewNet, count_parameters)
from rada.views import VIEWS


def _convs(module: nn.Module, kind=nn.Conv3d) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_vnet_stages_and_outputs():
    net = VNet(VNetConfig(width=4))
    assert [len(_convs(s)) for s in net.encoder] == [1, 2, 3, 3, 3]
    assert [len(_convs(s)) for s in net.decoder] == [3, 3, 2, 1]
    assert [s[0].out_channels for s in net.encoder] == [4, 8, 16, 32, 64]
    assert all(d[0].kernel_size == (2, 2, 2) and d[0].stride == (2, 2, 2) for d in net.down)
    assert all(isinstance(u[0], nn.ConvTranspose3d) and u[0].stride == (2, 2, 2) for u in net.up)
    assert net.dropout.p == 0.5 and isinstance(net.dropout, nn.Dropout3d)
    x5, x9 = net(torch.randn(2, 1, 32, 32, 32))
    assert x5.shape == (2, 64, 2, 2, 2) and x9.shape == (2, 4, 32, 32, 32)
    assert VNetConfig().channels == (16, 32, 64, 128, 256)


def test_vnet_paper_width_matches_ua_mt_size():
    # UA-MT's VNet(n_channels=1, n_filters=16, normalization='batchnorm') has 9,448,866
    # parameters; 34 of them are its 16->2 output conv, which RADA replaces by the head.
    assert count_parameters(VNet(VNetConfig(width=16))) == 9_448_866 - 34


def test_guidance_head_blocks_paper_width():
    head = GuidanceHead(256, 16, HeadConfig())
    lin = [m for m in head.adapter if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in lin] == [(1024, 256, None), (256, 1024, None)]
    assert [type(m) for m in head.adapter] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]  # ReLU between too
    assert (head.projection[0].in_features, head.projection[0].out_features) == (1024, 256)
    assert isinstance(head.projection[1], nn.ReLU)
    gn, _, pool, conv = head.gap
    assert (gn.num_groups, gn.num_channels) == (16, 256) and isinstance(pool, nn.AdaptiveAvgPool3d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (256, 256, (1, 1, 1))
    assert [(c.in_channels, c.out_channels) for c in head.controller] == [(512, 256), (256, 128), (128, 64), (64, 8)]
    assert not any(isinstance(m, nn.ReLU) for m in head.controller)
    gn2, _, pre = head.pre_classifier
    assert (gn2.num_groups, gn2.num_channels, pre.in_channels, pre.out_channels) == (16, 16, 16, 8)
    assert (head.classifier.in_channels, head.classifier.out_channels) == (8, 2)
    out = head(torch.randn(2, 256, 5, 7, 7), torch.randn(2, 16, 80, 112, 112)[:, :, :8, :8, :8], torch.randn(1024))
    assert out.shape == (2, 2, 8, 8, 8)
    assert head.region_embedding(torch.randn(1024)).shape == (1, 256)
    assert Adapter(1024, 256)(torch.randn(3, 1024)).shape == (3, 1024)


def test_unguided_head_omits_region_embedding():
    head = GuidanceHead(64, 4, HeadConfig(embedding_dim=0))
    assert not hasattr(head, "adapter") and not hasattr(head, "projection")
    assert head.controller[0].in_channels == 64
    assert head(torch.randn(1, 64, 2, 2, 2), torch.randn(1, 4, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


@pytest.mark.parametrize("guidance", [True, False])
def test_triview_model_both_paths(guidance):
    torch.manual_seed(0)
    model = TriViewModel(ModelConfig.make(width=4, guidance=guidance))
    assert [v.name for v in model.views] == ["sagittal", "coronal", "axial"]
    assert [v.axis for v in VIEWS] == [2, 1, 0]
    if guidance:
        model.set_guidance(torch.randn(512), {v.name: torch.randn(512) for v in VIEWS})
        assert model["axial"].embedding.shape == (1024,)
        assert "embedding" in model["axial"].state_dict()
    x = torch.randn(2, 1, 32, 32, 32)
    out = model(x)
    assert set(out) == {"sagittal", "coronal", "axial"} and all(o.shape == (2, 2, 32, 32, 32) for o in out.values())
    model.eval()
    mean = model.probabilities(x)
    per_view = torch.stack([torch.softmax(model(x, v.name), 1) for v in VIEWS]).mean(0)
    assert torch.allclose(mean, per_view, atol=1e-6)
    assert torch.allclose(mean.sum(1), torch.ones(2, 32, 32, 32), atol=1e-5)
    # gradients reach every trained part (adapter and projection included when guided)
    model.train()
    model(x, "axial").sum().backward()
    names = [n for n, p in model["axial"].named_parameters() if p.grad is None]
    assert names == []


def test_guidance_embedding_changes_the_output():
    torch.manual_seed(0)
    net = ViewNet(ModelConfig.make(width=4, guidance=True)).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    net.set_embedding(torch.rand(1024))
    a = net(x)
    net.set_embedding(torch.rand(1024) * 5)
    assert not torch.allclose(a, net(x))
    with pytest.raises(ValueError, match="^this network was built without guidance$"):
        ViewNet(ModelConfig.make(width=4, guidance=False)).set_embedding(torch.zeros(1024))


def test_model_config_round_trip():
    cfg = ModelConfig.make(width=4, guidance=False)
    assert ModelConfig.from_dict(cfg.as_dict()) == cfg


def test_region_embedding_of_a_batch_of_embeddings():
    torch.manual_seed(0)
    head = GuidanceHead(64, 4, HeadConfig())
    batch = torch.rand(3, 1024)
    e = head.region_embedding(batch)
    assert e.shape == (3, 256) and (e >= 0).all()  # ReLU(Linear(1024 -> 256)) per embedding
    assert torch.allclose(e[1], head.region_embedding(batch[1])[0], atol=1e-6)

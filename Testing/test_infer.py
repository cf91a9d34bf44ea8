"""Sliding-window inference: every voxel covered, exact placement, padding, views, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rada.annotation import SparseAnnotation
from rada.checkpoint import load_checkpoint, save_checkpoint
from rada.errors import InputError
from rada.infer import (InferenceConfig, importance_map, load_model, model_predictor, predict, predict_probability,
                        sliding_window, window_starts)
from rada.nets import ModelConfig, TriViewModel
from rada.views import VIEWS
from rada.volume import Volume


def identity_probability(x: torch.Tensor) -> torch.Tensor:
    """A 'network' whose foreground probability is its input: blending must reproduce the input."""
    return torch.cat([1 - x, x], dim=1)


@pytest.mark.parametrize("shape", [(37, 41, 29), (10, 12, 9), (16, 16, 16), (33, 8, 50)])
@pytest.mark.parametrize("blending", ["gaussian", "uniform"])
def test_every_voxel_is_covered_and_placed_exactly(shape, blending):
    a = np.random.default_rng(0).random(shape).astype(np.float32)
    out, coverage = sliding_window(a, identity_probability, (16, 16, 16), (7, 9, 16), blending, batch_size=3,
                                   return_coverage=True)
    assert out.shape == (2,) + shape and coverage.shape == shape
    assert (coverage > 0).all()
    np.testing.assert_allclose(out[1], a, atol=1e-5)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


def test_window_starts_cover_the_axis():
    for size in range(1, 60):
        for patch in (8, 16):
            for stride in (1, 5, 8, 16):
                starts = window_starts(max(size, patch), patch, stride)
                covered = np.zeros(max(size, patch), bool)
                for s in starts:
                    covered[s:s + patch] = True
                assert covered.all() and starts[-1] + patch == max(size, patch)


def test_importance_maps():
    g = importance_map((16, 16, 16))
    assert g.max() == pytest.approx(1.0) and g.min() > 0 and g[8, 8, 8] > g[0, 0, 0]
    assert (importance_map((4, 4, 4), "uniform") == 1).all()
    with pytest.raises(ValueError):
        importance_map((4, 4, 4), "cosine")


def _checkpoint(tmp_path, guidance: bool):
    torch.manual_seed(0)
    model = TriViewModel(ModelConfig.make(width=4, guidance=guidance))
    if guidance:
        model.set_guidance(torch.randn(512), {v.name: torch.randn(512) for v in VIEWS})
    state = {"views": {k: n.state_dict() for k, n in model.nets.items()}, "model_config": model.config.as_dict(),
             "preprocessing": {"intensity": "zscore", "patch_size": [16, 16, 16]},
             "guidance": {"enabled": guidance}, "iteration": 0}
    return save_checkpoint(state, tmp_path / "m.pt"), model.eval()


@pytest.mark.parametrize("drop", ["views", "content_hash"])
def test_an_incomplete_checkpoint_is_one_input_error(tmp_path, drop):
    path = save_checkpoint({"views": {"axial": {"w": torch.zeros(2)}}}, tmp_path / "c.pt")
    state = torch.load(path, weights_only=False)
    del state[drop]
    torch.save(state, path)
    with pytest.raises(InputError, match=f"incomplete: it has no '{drop}'"):
        load_checkpoint(path)


@pytest.mark.parametrize("guidance", [True, False])
def test_predict_from_a_checkpoint_keeps_the_grid(tmp_path, guidance):
    path, model = _checkpoint(tmp_path, guidance)
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=(20, 18, 23)).astype(np.float32), (0.6, 0.7, 2.0), (1.0, -2.0, 3.0))
    dense = np.zeros(image.shape, np.uint8)
    dense[5:15, 4:14, 6:18] = 1
    ann = SparseAnnotation.from_dense(image.with_array(dense))
    pred = predict(image, path, InferenceConfig(device="cpu", stride=(8, 8, 8)), annotation=ann)
    assert pred.label.same_grid(image) and pred.probability.same_grid(image)
    assert set(np.unique(pred.label.array)) <= {0, 1}
    known = ann.known()
    assert np.array_equal(pred.label.array[known], ann.array[known])
    assert pred.info["guidance"] == guidance
    loaded, meta = load_model(path)
    assert meta["preprocessing"]["patch_size"] == [16, 16, 16] and not loaded.training
    x = torch.randn(1, 1, 16, 16, 16)
    single = model_predictor(loaded, "axial")(x)
    assert torch.allclose(single, torch.softmax(model(x, "axial"), 1), atol=1e-5)
    mean = model_predictor(loaded, "mean")(x)
    assert torch.allclose(mean, torch.stack([torch.softmax(model(x, v.name), 1) for v in VIEWS]).mean(0), atol=1e-5)
    with pytest.raises(InputError, match="view"):
        model_predictor(loaded, "oblique")


@pytest.mark.parametrize("patch", [(24, 16, 16), (16, 16, 8), (16, 16)])
def test_a_patch_the_vnet_cannot_take_is_a_clear_input_error(patch):
    """Sides that are not multiples of 16 (the V-Net halves them four times) are refused by name,
    not left to fail deep inside a convolution."""
    model = TriViewModel(ModelConfig.make(width=2, guidance=False)).eval()
    image = np.zeros((20, 20, 20), np.float32)
    with pytest.raises(InputError, match="three multiples of 16") as err:
        predict_probability(model, image, InferenceConfig(device="cpu", patch_size=patch))
    assert "\n" not in str(err.value)
    assert predict_probability(model, image, InferenceConfig(device="cpu", patch_size=(16, 16, 16))).shape == image.shape

"""Losses vs hand-computed values, schedules vs METHOD.md, sampling, augmentation, teachers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rada.errors import InputError
from rada.nets import ModelConfig, ViewNet
from rada.train import schedules as S
from rada.train.cotraining import (certainty_mask, frozen_bn_stats, noisy_copies, teacher_mean_probability,
                                   view_losses)
from rada.train.data import LabeledCase, TrainingData, crop_or_pad, rot_flip, sample_batch
from rada.train.losses import (entropy, masked_cross_entropy, supervised_loss, weighted_cross_entropy,
                               weighted_dice_loss)
from rada.views import VIEWS

# --- losses ------------------------------------------------------------------------------


def _two_voxels():
    # logits [B=1, C=2, 2 voxels]: p1 = sigmoid(l1 - l0)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), math.log(1 / 4)]]])  # p1 = 0.75, 0.2
    target = torch.tensor([[1, 0]])
    weight = torch.tensor([[1.0, 0.5]])
    return logits, target, weight


def test_weighted_cross_entropy_by_hand():
    logits, target, weight = _two_voxels()
    expected = -(1.0 * math.log(0.75) + 0.5 * math.log(0.8)) / 1.5
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)
    # zero weight = ignored voxel
    w0 = torch.tensor([[1.0, 0.0]])
    assert weighted_cross_entropy(logits, target, w0).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_weighted_dice_by_hand():
    logits, target, weight = _two_voxels()
    eps = 1e-5
    num = 2 * (1.0 * 0.75 * 1) + eps
    den = (1.0 * 1) + (1.0 * 0.75**2 + 0.5 * 0.2**2) + eps
    assert weighted_dice_loss(logits, target, weight).item() == pytest.approx(1 - num / den, rel=1e-6)
    sup = supervised_loss(logits, target, weight).item()
    assert sup == pytest.approx(0.5 * weighted_cross_entropy(logits, target, weight).item() + 0.5 * (1 - num / den))


def test_masked_cross_entropy_and_entropy():
    logits, target, _ = _two_voxels()
    mask = torch.tensor([[False, True]])
    assert masked_cross_entropy(logits, target, mask).item() == pytest.approx(-math.log(0.8), rel=1e-6)
    assert masked_cross_entropy(logits, target, torch.zeros_like(mask)).item() == 0.0
    p = torch.tensor([[[0.5, 1.0], [0.5, 0.0]]])
    assert entropy(p)[0].tolist() == pytest.approx([math.log(2), 0.0], abs=1e-5)
    assert certainty_mask(p, 0.75 * math.log(2)).tolist() == [[False, True]]


def test_view_loss_forms():
    torch.manual_seed(0)
    logits = {v.name: torch.randn(4, 2, 3, 3, 3, requires_grad=True) for v in VIEWS}
    labels = {v.name: torch.randint(0, 2, (2, 3, 3, 3)) for v in VIEWS}
    weights = {v.name: torch.rand(2, 3, 3, 3) for v in VIEWS}
    masks = {v.name: torch.rand(2, 3, 3, 3) > 0.5 for v in VIEWS}
    out = view_losses(logits, labels, weights, 2, masks, 0.1, "sgtc")
    s = out["axial"]
    pl = {k: logits[k][2:].detach().argmax(1) for k in logits}
    lj = masked_cross_entropy(logits["axial"][2:], pl["sagittal"], masks["sagittal"])
    lk = masked_cross_entropy(logits["axial"][2:], pl["coronal"], masks["coronal"])
    assert s["unsup"].item() == pytest.approx((lj + lk).item(), rel=1e-6)
    assert s["total"].item() == pytest.approx(0.8 * s["sup"].item() + 0.1 * lj.item() + 0.1 * lk.item(), rel=1e-6)
    paper = view_losses(logits, labels, weights, 2, masks, 0.1, "paper")["axial"]
    assert paper["total"].item() == pytest.approx(0.9 * s["sup"].item() + 0.1 * (lj + lk).item() / 2, rel=1e-6)
    # a view's loss reaches only its own logits
    s["total"].backward()
    assert logits["sagittal"].grad is None and logits["axial"].grad is not None


# --- schedules -----------------------------------------------------------------------------


def test_alpha_schedule_matches_method():
    expected = {0: 0.95, 999: 0.95, 1000: 0.946, 1999: 0.946, 2000: 0.761, 3000: 0.5, 4000: 0.273,
                5000: 0.074, 6000: 0.0}
    for t, a in expected.items():
        assert S.distance_decay(t) == pytest.approx(a, abs=5e-4), t


def test_beta_lr_entropy_schedules():
    assert S.sigmoid_ramp(0, 40) == pytest.approx(math.exp(-5))
    assert S.sigmoid_ramp(40, 40) == 1.0 and S.sigmoid_ramp(100, 40) == 1.0
    assert S.beta(0) == pytest.approx(0.1 * math.exp(-5))
    assert S.beta(3000) == pytest.approx(0.1 * math.exp(-5 * (1 - 20 / 40) ** 2))
    assert S.beta(6000) == pytest.approx(0.1)
    assert [S.learning_rate(t) for t in (0, 2499, 2500, 4999, 5000, 5999)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])
    assert S.entropy_threshold(0) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert S.entropy_threshold(6000) == pytest.approx(math.log(2))
    w = S.voxel_weights(np.array([0, 1, 2, 3]), np.array([False, False, True, False]), 0.5)
    assert w.tolist() == [1.0, 0.5, 1.0, 0.125]


# --- sampling and augmentation --------------------------------------------------------------


def _coded_case(shape=(20, 24, 24)) -> LabeledCase:
    """A case whose image encodes each voxel's labels/weights so augmentation consistency is checkable."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    labels = {v.name: (image > 0.3 * j).astype(np.uint8) for j, v in enumerate(VIEWS)}
    distance = {v.name: np.broadcast_to(np.abs(np.arange(shape[v.axis]) - shape[v.axis] // 2).reshape(
        [-1 if a == v.axis else 1 for a in range(3)]), shape).astype(np.uint16) for v in VIEWS}
    annotated = np.zeros(shape, bool)
    annotated[shape[0] // 2] = True
    return LabeledCase("c", image, labels, distance, annotated)


def test_sample_batch_shapes_determinism_and_consistency():
    data = TrainingData([_coded_case()], [np.zeros((20, 24, 24), np.float32) + 7])
    b = sample_batch(data, t=3, decay=0.9, patch=(16, 16, 16), seed=0)
    assert b.image.shape == (4, 1, 16, 16, 16) and b.n_labeled == 2
    assert all(b.labels[v.name].shape == (2, 16, 16, 16) for v in VIEWS)
    assert np.all(b.image[2:] == 7)  # unlabeled stream
    again = sample_batch(data, t=3, decay=0.9, patch=(16, 16, 16), seed=0)
    assert np.array_equal(b.image, again.image) and np.array_equal(b.weights["axial"], again.weights["axial"])
    other = sample_batch(data, t=4, decay=0.9, patch=(16, 16, 16), seed=0)
    assert not np.array_equal(b.image[:2], other.image[:2])
    for t in range(8):  # labels follow the image through crop, rot90 and flip
        bt = sample_batch(data, t=t, decay=0.9, patch=(16, 16, 16), seed=0)
        for j, v in enumerate(VIEWS):
            assert np.array_equal(bt.labels[v.name], (bt.image[:2, 0] > 0.3 * j).astype(np.int64))
        w = bt.weights["sagittal"]
        assert set(np.round(np.log(w[w < 1]) / np.log(0.9)).astype(int).tolist()) <= set(range(1, 13))


def test_crop_pads_small_volumes_and_rot_flip_keeps_shapes():
    rng = np.random.default_rng(0)
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img, lab = crop_or_pad([a, (a > 50).astype(np.uint8)], (8, 8, 8), rng, [-1, 0])
    assert img.shape == (8, 8, 8) and (img == -1).sum() == 8**3 - a.size and lab.sum() == (a > 50).sum()
    x, y = rot_flip([np.zeros((4, 6, 8)), np.ones((4, 6, 8))], np.random.default_rng(3))
    assert x.shape == y.shape == (4, 6, 8)


# --- teachers ----------------------------------------------------------------------------------


def test_batched_teacher_passes_equal_separate_passes():
    torch.manual_seed(0)
    net = ViewNet(ModelConfig.make(width=4, guidance=False)).eval()  # eval: no dropout, running BN stats
    x = torch.randn(2, 1, 16, 16, 16)
    torch.manual_seed(5)
    batched = teacher_mean_probability(net, x, passes=8, batched=True)
    torch.manual_seed(5)
    separate = teacher_mean_probability(net, x, passes=8, batched=False)
    assert batched.shape == (2, 2, 16, 16, 16)
    assert torch.allclose(batched, separate, atol=1e-5)


def test_teacher_passes_leave_bn_running_stats_alone():
    torch.manual_seed(0)
    net = ViewNet(ModelConfig.make(width=4, guidance=False)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with frozen_bn_stats(net):
        teacher_mean_probability(net, torch.randn(2, 1, 16, 16, 16), passes=4)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_noise_is_clipped():
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 8, 8, 8)
    n = noisy_copies(x, 8, std=0.1, clip=0.2)
    assert n.shape == (16, 1, 8, 8, 8) and n.abs().max() <= 0.2 and n.std() == pytest.approx(0.1, rel=0.1)


def test_sigmoid_ramp_edges():
    """ramp(x, L) = exp(-5 (1 - clip(x, 0, L) / L)^2); a zero-length ramp is already complete."""
    assert S.sigmoid_ramp(0, 0) == 1.0 and S.sigmoid_ramp(7, 0) == 1.0
    assert S.sigmoid_ramp(0, 1) == pytest.approx(math.exp(-5)) and S.sigmoid_ramp(1, 1) == 1.0
    assert S.sigmoid_ramp(-3, 10) == pytest.approx(math.exp(-5)) and S.sigmoid_ramp(30, 10) == 1.0
    assert S.sigmoid_ramp(5, 10) == pytest.approx(math.exp(-5 * 0.25))


def test_beta_is_a_staircase_and_the_entropy_ramp_length_is_configurable():
    cfg = S.ScheduleConfig()
    assert S.beta(149, cfg) == S.beta(0, cfg) == pytest.approx(0.1 * math.exp(-5))  # t // 150, not t / 150
    assert S.beta(150, cfg) == pytest.approx(0.1 * S.sigmoid_ramp(1, 40)) and S.beta(299, cfg) == S.beta(150, cfg)
    short = S.ScheduleConfig(entropy_ramp=100)
    assert S.entropy_threshold(100, short) == pytest.approx(math.log(2))  # ramp done at 100, not at 6000
    assert S.entropy_threshold(100, cfg) < S.entropy_threshold(100, short)


def test_losses_on_batches_and_the_degenerate_cases_of_view_losses():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 5)
    target = torch.randint(0, 2, (2, 5))
    weight = torch.rand(2, 5)
    logp = torch.log_softmax(logits, 1)
    nll = -torch.stack([logp[b, target[b, i], i] for b in range(2) for i in range(5)]).reshape(2, 5)
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(
        ((weight * nll).sum() / weight.sum()).item(), rel=1e-6)  # a batch of 2, not only 1
    mask = torch.tensor([[True, True, False, True, False], [False, True, False, False, True]])
    assert masked_cross_entropy(logits, target, mask).item() == pytest.approx(nll[mask].mean().item(), rel=1e-6)
    # No unlabeled part (no masks): total = supervised loss in both forms; unsup = 0.
    two = {v.name: torch.randn(2, 2, 3, 3, 3) for v in VIEWS}
    labels = {v.name: torch.randint(0, 2, (2, 3, 3, 3)) for v in VIEWS}
    weights = {v.name: torch.rand(2, 3, 3, 3) for v in VIEWS}
    for form in ("sgtc", "paper"):
        out = view_losses(two, labels, weights, 2, None, 0.1, form)
        assert all(o["total"].item() == o["sup"].item() and o["unsup"].item() == 0.0 for o in out.values())
    default = view_losses(two, labels, weights, 2, None, 0.1)
    assert default["axial"]["total"].item() == out["axial"]["total"].item()  # the default form is valid
    with pytest.raises(ValueError, match="unknown loss form 'mine'"):
        view_losses(two, labels, weights, 2, None, 0.1, "mine")
    # The paper form averages over the other views: with 2 views there is one other view.
    pair = {k: torch.randn(4, 2, 3, 3, 3) for k in ("sagittal", "axial")}
    masks = {k: torch.ones(2, 3, 3, 3, dtype=torch.bool) for k in pair}
    out = view_losses(pair, labels, weights, 2, masks, 0.1, "paper")["axial"]
    assert out["total"].item() == pytest.approx(0.9 * out["sup"].item() + 0.1 * out["unsup"].item(), rel=1e-6)


def test_voxel_weights_take_any_mask_type_and_decay_zero():
    d = np.array([[[0, 1, 2, 3]]], np.int16)
    known = np.array([[[False, False, True, False]]])
    for mask in (known, known.astype(np.uint8), known.astype(np.int64)):
        np.testing.assert_array_equal(S.voxel_weights(d, mask, 0.5), [[[1.0, 0.5, 1.0, 0.125]]])
    # decay 0: only the seed slices (distance 0) and annotated voxels keep a weight
    np.testing.assert_array_equal(S.voxel_weights(d, known, 0.0), [[[1.0, 0.0, 1.0, 0.0]]])
    with pytest.raises(InputError, match="shape"):
        S.voxel_weights(d, known[..., :2], 0.5)
    with pytest.raises(InputError, match="must be in"):
        S.voxel_weights(d, known, -0.1)


def test_noisy_copies_default_to_method_md_noise():
    # The defaults are METHOD.md's: std 0.1, clipped to +-0.2 (callers that pass nothing get them).
    torch.manual_seed(0)
    n = noisy_copies(torch.zeros(1, 1, 32, 32, 32), 2)
    assert n.abs().max() <= 0.2 + 1e-7 and n.abs().max() > 0.19  # the clip is reached, never passed
    assert 0.085 < float(n.std()) < 0.1  # N(0, 0.1) clipped at 2 std: 0.095


def test_certain_means_entropy_strictly_below_the_threshold():
    p = torch.tensor([[[0.5, 0.9]], [[0.5, 0.1]]]).permute(1, 0, 2)  # [B=1, C=2, 2 voxels]
    at = float(entropy(p)[0, 0])  # the threshold equals the first voxel's entropy exactly
    assert certainty_mask(p, at).tolist() == [[False, True]]


def test_voxel_weights_bounds_dtype_and_message():
    d = np.array([[[0, 1, 2, 3]]], np.int16)
    known = np.zeros(d.shape, bool)
    np.testing.assert_array_equal(S.voxel_weights(d, known, 1.0), np.ones(d.shape))  # alpha = 1: dense weights
    with pytest.raises(InputError, match="must be in"):
        S.voxel_weights(d, known, 1.5)
    for dist in (d, d.astype(np.float64)):  # float32 whatever the distance map's type
        assert S.voxel_weights(dist, known, 0.9).dtype == np.float32
    with pytest.raises(InputError, match=r"\(1, 1, 2\) differs from the distance map \(1, 1, 4\)"):
        S.voxel_weights(d, known[..., :2], 0.5)


def test_a_scaled_schedule_scales_its_entropy_ramp_and_keeps_every_step_at_least_1():
    base = S.ScheduleConfig(entropy_ramp=3000)
    assert base.scaled(600).entropy_ramp == 300 and S.ScheduleConfig().scaled(600).entropy_ramp is None
    tiny = S.ScheduleConfig().scaled(60)  # milestones 2500, 5000 -> 25, 50
    short = S.ScheduleConfig().scaled(40)  # 150 * 40 / 6000 = 1.0: exactly 1, not rounded up
    assert short.beta_step == 1 and short.alpha_step == 1 and tiny.lr_milestones == (25, 50)
    assert S.ScheduleConfig().scaled(10).beta_step == 1  # 0.25 rounds to 0: kept at 1

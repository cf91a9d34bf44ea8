"""METHOD.md section 4-5 numbers pinned by what the trainer *does*, not by reading its config:

- the learning rate of all three SGD optimisers at the milestones;
- momentum 0.9 and weight decay 1e-4, recovered from the parameter updates of two steps;
- T = 8 teacher passes and the 2 labeled + 2 unlabeled batch, seen by the networks' forwards;
- the teachers' input noise: clamp(N(0, 0.1^2), +-0.2), measured on what the teachers receive;
- Dropout3d(0.5) on the bottleneck x5 and on the last feature x9;
- augmentation = rot90 in the axial plane + a flip (the four axial reflections, never z);
- the teachers' noisy passes leave the BatchNorm running statistics alone in train mode.

Each test was checked to fail with the corresponding change of the code (see the report of
issue #13).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from rada.nets import ModelConfig, ViewNet
from rada.nets.vnet import VNet, VNetConfig
from rada.train import LabeledCase, TrainConfig, Trainer, TrainingData
from rada.train.cotraining import teacher_mean_probability, view_losses
from rada.train.data import rot_flip
from rada.train.trainer import _iteration_seed
from rada.views import VIEWS

PATCH = (16, 32, 32)


def _data(shape=(24, 40, 40), n_labeled=3, n_unlabeled=3) -> TrainingData:
    """Small volumes made here: a bright ball on noise, its label, distances to the middle slices."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    ball = ((z - 12) ** 2 / 64 + (y - 20) ** 2 / 144 + (x - 20) ** 2 / 144) < 1

    def image() -> np.ndarray:
        return (ball * 2.0 + rng.normal(size=shape)).astype(np.float32)

    labeled = []
    for i in range(n_labeled):
        distance = {v.name: np.broadcast_to(np.abs(np.arange(shape[v.axis]) - shape[v.axis] // 2).reshape(
            [-1 if a == v.axis else 1 for a in range(3)]), shape).astype(np.uint16) for v in VIEWS}
        annotated = np.zeros(shape, bool)
        annotated[shape[0] // 2] = annotated[:, shape[1] // 2] = annotated[:, :, shape[2] // 2] = True
        labeled.append(LabeledCase(f"l{i}", image(), {v.name: ball.astype(np.uint8) for v in VIEWS}, distance,
                                   annotated))
    return TrainingData(labeled, [image() for _ in range(n_unlabeled)])


def _method_config(**schedule) -> TrainConfig:
    """METHOD.md's defaults for everything the tests pin; only the size is made small."""
    base = TrainConfig()
    return replace(base, model=ModelConfig.make(width=4, guidance=False), patch_size=PATCH, device="cpu",
                   progress=False, schedule=replace(base.schedule, **schedule) if schedule else base.schedule)


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return _data()


def test_lr_of_all_three_optimisers_steps_down_at_the_milestones(data, tmp_path):
    cfg = _method_config(iterations=5, lr_milestones=(2, 4))
    trainer = Trainer(cfg, data, tmp_path)
    seen = []
    for t in range(5):
        trainer.step(t)
        seen.append({k: [g["lr"] for g in o.param_groups] for k, o in trainer.optimizers.items()})
    expected = [0.01, 0.01, 0.001, 0.001, 0.0001]
    assert set(seen[0]) == {v.name for v in VIEWS}
    for view in seen[0]:
        assert [lrs[view][0] for lrs in seen] == pytest.approx(expected), view


def test_momentum_and_weight_decay_recovered_from_two_sgd_updates(data, tmp_path):
    """SGD with momentum m and weight decay wd: d1 = g1 + wd p1, p2 = p1 - lr d1;
    d2 = m d1 + g2 + wd p2, p3 = p2 - lr d2. wd and m are estimated (least squares, float64)
    from the observed parameters and gradients of every view and must be 1e-4 and 0.9."""
    trainer = Trainer(_method_config(), data, tmp_path)
    lr = 0.01
    nets = trainer.model.nets

    def params(k):
        return torch.cat([p.detach().double().reshape(-1) for p in nets[k].parameters()])

    def grads(k):
        return torch.cat([p.grad.double().reshape(-1) for p in nets[k].parameters()])

    p1 = {k: params(k) for k in nets}
    trainer.step(0)
    g1, p2 = {k: grads(k) for k in nets}, {k: params(k) for k in nets}
    trainer.step(1)
    g2, p3 = {k: grads(k) for k in nets}, {k: params(k) for k in nets}
    for k in nets:
        assert int((g1[k] != 0).sum()) > 1000  # not vacuous: gradients reached the parameters
        r1 = (p1[k] - p2[k]) / lr - g1[k]            # = wd * p1
        wd = float((r1 @ p1[k]) / (p1[k] @ p1[k]))
        assert wd == pytest.approx(1e-4, rel=0.05), k
        d1 = g1[k] + 1e-4 * p1[k]
        r2 = (p2[k] - p3[k]) / lr - g2[k] - 1e-4 * p2[k]   # = m * d1
        m = float((r2 @ d1) / (d1 @ d1))
        assert m == pytest.approx(0.9, rel=0.01), k


class _Recorder:
    """Inputs of every forward of every view network, tagged student (grad) or teacher (no grad)."""

    def __init__(self, nets: nn.ModuleDict) -> None:
        self.calls: list[tuple[str, bool, torch.Tensor]] = []
        self.handles = [net.register_forward_pre_hook(self._hook(name)) for name, net in nets.items()]

    def _hook(self, name: str):
        def hook(module, args):
            self.calls.append((name, torch.is_grad_enabled(), args[0].detach().clone()))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def test_one_step_batch_composition_teacher_passes_and_noise(data, tmp_path):
    trainer = Trainer(_method_config(), data, tmp_path)
    rec = _Recorder(trainer.model.nets)
    trainer.step(0)
    rec.remove()
    students = [(n, x) for n, grad, x in rec.calls if grad]
    teachers = [(n, x) for n, grad, x in rec.calls if not grad]
    assert sorted(n for n, _ in students) == sorted(v.name for v in VIEWS)
    assert sorted(n for n, _ in teachers) == sorted(v.name for v in VIEWS)
    x = students[0][1]
    assert x.shape == (4, 1) + PATCH  # 2 labeled + 2 unlabeled patches, the same for every view
    assert all(torch.equal(x, s) for _, s in students)
    # The teachers see the unlabeled tail of the batch: 4 - 16 / 8 = 2 labeled patches first.
    nl = x.shape[0] - teachers[0][1].shape[0] // 8
    assert nl == 2
    unlabeled = x[nl:]
    for _, tx in teachers:
        assert tx.shape == (8 * 2, 1) + PATCH  # T = 8 noisy copies of the 2 unlabeled patches, one forward
        noise = tx - unlabeled.repeat(8, 1, 1, 1, 1)
        assert noise.abs().max() <= 0.2 + 1e-6
        # std of clamp(N(0, 0.1^2), +-0.2) is 0.0959; 4.55 % of the draws sit on the clip.
        assert 0.093 < float(noise.std()) < 0.099
        assert 0.04 < float((noise.abs() > 0.2 - 1e-6).float().mean()) < 0.051


def _bn_eval(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@pytest.mark.parametrize("where", ["x5", "x9"])
def test_dropout3d_half_of_the_channels_on_bottleneck_and_last_feature(where):
    torch.manual_seed(0)
    net = VNet(VNetConfig(width=16))
    x = torch.randn(8, 1, 32, 32, 32)
    net.eval()
    with torch.no_grad():
        clean = dict(zip(("x5", "x9"), net(x)))
    net.train()
    _bn_eval(net)  # BN on running statistics: only dropout differs between the two passes
    with torch.no_grad():
        dropped = dict(zip(("x5", "x9"), net(x)))
    d, c = dropped[where].flatten(2), clean[where].flatten(2)
    alive = c.abs().amax(-1) > 0                     # [B, C] channels with any signal without dropout
    zero = d.abs().amax(-1) == 0                     # whole channels zeroed (Dropout3d, not voxels)
    assert alive.sum() > 50
    assert 0.35 < float(zero[alive].float().mean()) < 0.65
    if where == "x5":  # the encoder sees no dropout: the kept channels are scaled by 1 / (1 - 0.5)
        keep = alive & ~zero
        assert torch.allclose(d[keep], 2 * c[keep], atol=1e-5)


def test_augmentation_is_rot90_then_a_flip_in_the_axial_plane():
    a = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    reflections = set()
    for k in range(4):
        r = np.rot90(a, k, axes=(1, 2))
        for axis in (1, 2):
            reflections.add(np.flip(r, axis).tobytes())
    assert len(reflections) == 4  # the 4 reflections of the square (rotations excluded)
    seen = set()
    for seed in range(200):
        (out,) = rot_flip([a], np.random.default_rng(seed))
        assert np.array_equal(out[0].sum(), a[0].sum())  # z is never flipped: slices stay in order
        assert np.array_equal(np.sort(out[1].ravel()), np.sort(a[1].ravel()))
        seen.add(out.tobytes())
    assert seen == reflections


def test_teacher_passes_leave_bn_running_stats_alone_in_train_mode():
    torch.manual_seed(0)
    net = ViewNet(ModelConfig.make(width=4, guidance=False)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    teacher_mean_probability(net, torch.randn(2, 1, 16, 16, 16) * 3 + 1, passes=8)
    for k, v in net.state_dict().items():
        assert torch.equal(before[k], v), k
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm3d))
    assert net.training


def test_a_training_step_updates_bn_statistics_from_the_student_batch_only(data, tmp_path):
    """Replaying the step's student forwards (same seed, same batch) on copies of the networks
    gives exactly the running statistics the trainer ends with: the 3 x 8 teacher passes added nothing."""
    from rada.train import schedules as S
    from rada.train.data import sample_batch

    cfg = _method_config()
    trainer = Trainer(cfg, data, tmp_path)
    replay = copy.deepcopy(trainer.model)
    trainer.step(0)
    torch.manual_seed(_iteration_seed(cfg.seed, 0, 0))
    batch = sample_batch(data, 0, S.distance_decay(0, cfg.schedule), cfg.patch_size, cfg.labeled_batch,
                         cfg.unlabeled_batch, cfg.seed, 0, cfg.augment, replay.views)
    x = torch.from_numpy(batch.image)
    replay.train()
    with torch.no_grad():
        for v, net in replay.items():
            net(x)
    for v, net in trainer.model.items():
        expected = dict(replay[v.name].named_buffers())
        for name, buf in net.named_buffers():
            if "running" in name or "num_batches" in name:
                assert torch.equal(buf, expected[name]), (v.name, name)


@pytest.mark.parametrize("batched", [True, False])
def test_a_step_runs_the_teacher_passes_the_way_the_config_says(data, tmp_path, monkeypatch, batched):
    """``batched_teachers`` reaches the teacher passes (batched = one forward of T noisy copies;
    False = T forwards: the memory-saving path), with T, the noise and its clip of the config."""
    import rada.train.trainer as trainer_module

    calls = []

    def recording_teachers(net, x, passes, std, clip, batched=True):  # the real default
        calls.append((passes, std, clip, batched))
        return teacher_mean_probability(net, x, passes, std, clip, batched)

    monkeypatch.setattr(trainer_module, "teacher_mean_probability", recording_teachers)
    cfg = replace(_method_config(), batched_teachers=batched)
    Trainer(cfg, data, tmp_path).step(0)
    assert calls == [(cfg.teacher_passes, cfg.noise_std, cfg.noise_clip, batched)] * 3


def test_a_step_feeds_the_certainty_masks_to_the_loss_and_reports_what_it_optimised(data, tmp_path, monkeypatch):
    """The cross-view loss gets the teachers' certainty masks (not None), the configured loss
    form, and the values a step returns are the losses it back-propagated: loss = sum of the
    views' totals, sup/unsup = means over views, certain = mean certain fraction."""
    import rada.train.trainer as trainer_module

    seen = {}

    def recording_view_losses(logits, labels, weights, nl, masks, beta, loss_form):
        out = view_losses(logits, labels, weights, nl, masks, beta, loss_form)
        seen.update(masks=masks, loss_form=loss_form, nl=nl, out=out)
        return out

    monkeypatch.setattr(trainer_module, "view_losses", recording_view_losses)
    cfg = _method_config()
    # two thirds into the schedule: the threshold lets a few (not all) teacher voxels count as certain
    last = 2 * cfg.schedule.iterations // 3
    values = Trainer(cfg, data, tmp_path).step(last)
    masks, out = seen["masks"], seen["out"]
    assert seen["loss_form"] == cfg.loss_form and seen["nl"] == 2
    assert isinstance(masks, dict) and sorted(masks) == sorted(v.name for v in VIEWS)
    assert all(m.dtype == torch.bool and m.shape[0] == 2 for m in masks.values())
    n = len(out)
    assert values["loss"] == pytest.approx(float(sum(v["total"].detach() for v in out.values())), rel=1e-5)
    assert values["sup"] == pytest.approx(float(sum(v["sup"].detach() for v in out.values())) / n, rel=1e-5)
    assert values["unsup"] == pytest.approx(float(sum(v["unsup"].detach() for v in out.values())) / n, rel=1e-5)
    certain = float(torch.stack([m.float().mean() for m in masks.values()]).mean())
    assert values["certain"] == pytest.approx(certain, rel=1e-5) and 0.0 < certain < 1.0
    assert values["iteration"] == last + 1 and set(values) == {"iteration", "loss", "sup", "unsup", "certain", "lr", "beta",
                                                        "alpha", "threshold"}

"""The CUDA-only paths of training: bf16 autocast, the CUDA random state in checkpoints, and a
checkpoint written on a GPU read on a machine without one.

On a CPU these branches do the same as the CPU ones, so mutation testing could not tell them
apart (``bench/results/mutation_issue13.md``, "GPU-only paths"). These tests need a CUDA
device and are skipped, with that reason, everywhere else (CI has no GPU); run them on a GPU
machine with ``python -m pytest Testing/train/test_train_cuda.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rada import checkpoint as ckpt
from rada.nets import ModelConfig
from rada.train import ScheduleConfig, TrainConfig, Trainer

from test_train_method import _data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
REPO = Path(__file__).resolve().parents[2]


def _gpu_config(**kw) -> TrainConfig:
    base = dict(model=ModelConfig.make(width=4, guidance=False), schedule=ScheduleConfig(iterations=4),
                patch_size=(16, 16, 16), progress=False, device="cuda", checkpoint_every=2, validate_every=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return _data(shape=(18, 22, 22), n_labeled=2, n_unlabeled=2)


def test_training_steps_on_cuda_run_the_networks_in_bf16(data, tmp_path):
    trainer = Trainer(_gpu_config(), data, tmp_path)
    assert trainer.use_bf16
    seen: list[torch.dtype] = []
    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv3d)]
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for m in convs]
    values = trainer.step(0)
    for h in handles:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}  # float16 is autocast's CUDA default, float32 is off
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    # the weights stay float32 (autocast casts the operands, not the parameters)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    # and bf16=False trains in float32
    seen.clear()
    plain = Trainer(_gpu_config(bf16=False), data, tmp_path / "fp32")
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
               for m in plain.model.modules() if isinstance(m, torch.nn.Conv3d)]
    plain.step(0)
    for h in handles:
        h.remove()
    assert set(seen) == {torch.float32}


def test_a_checkpoint_restores_the_cuda_random_state(data, tmp_path):
    trainer = Trainer(_gpu_config(), data, tmp_path / "a")
    trainer.step(0)
    trainer.iteration = 1
    torch.cuda.manual_seed(1234)
    path = trainer.save_checkpoint()
    saved = ckpt.load_checkpoint(path)["rng"][0]["cuda"]
    expected = torch.rand(5, device="cuda")       # what the saved CUDA state draws next
    assert not torch.equal(saved, torch.cuda.get_rng_state().cpu())  # drawing moved the state on

    other = Trainer(_gpu_config(seed=9), data, tmp_path / "b")
    torch.cuda.manual_seed(0)
    other.load_checkpoint(path)
    assert torch.equal(torch.cuda.get_rng_state().cpu(), saved)
    assert torch.equal(torch.rand(5, device="cuda"), expected)


def test_a_checkpoint_trained_on_a_gpu_loads_where_there_is_none(data, tmp_path):
    trainer = Trainer(_gpu_config(), data, tmp_path / "gpu")
    trainer.step(0)
    trainer.step(1)
    trainer.iteration = 2
    path = trainer.save_checkpoint()
    state = torch.load(path, weights_only=False)
    # the file really holds CUDA tensors (the optimisers' momentum buffers), so this test bites
    buffers = [s["momentum_buffer"] for o in state["optimizers"].values() for s in o["state"].values()]
    assert buffers and all(b.is_cuda for b in buffers)

    script = textwrap.dedent(f"""
        import torch
        assert not torch.cuda.is_available()
        from rada import checkpoint as ckpt
        from rada.nets import ModelConfig
        from rada.train import ScheduleConfig, TrainConfig, Trainer
        sys_path = {str(REPO / "Testing" / "train")!r}
        import sys; sys.path.insert(0, sys_path)
        from test_train_method import _data
        state = ckpt.load_checkpoint({str(path)!r})
        assert all(not t.is_cuda for v in state["views"].values() for t in v.values())
        config = TrainConfig(model=ModelConfig.make(width=4, guidance=False), schedule=ScheduleConfig(iterations=4),
                             patch_size=(16, 16, 16), progress=False, device="cpu", validate_every=0)
        trainer = Trainer(config, _data(shape=(18, 22, 22), n_labeled=2, n_unlabeled=2), {str(tmp_path / "cpu")!r})
        trainer.load_checkpoint({str(path)!r})
        assert trainer.iteration == 2
        values = trainer.step(2)
        print("resumed on the CPU", sorted(values))
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed on the CPU" in out.stdout

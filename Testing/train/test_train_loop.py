"""Training end to end on real LA cases (downscaled, tiny width): loss goes down, logs and
checkpoints are written, kill-and-resume equals an uninterrupted run, guidance on/off,
and the torch.distributed path (gloo, two CPU processes)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from rada.annotation import SparseAnnotation
from rada.errors import InputError
from rada.intensity import zscore
from rada.io import read_volume
from rada.nets import ModelConfig
from rada.volume import Volume
from rada.train import LabeledCase, ScheduleConfig, TrainConfig, Trainer, TrainingData, load_checkpoint, train
from rada.train.run_log import read_log
from rada.train.validation import ValidationCase
from rada.views import VIEWS

DOWN = (slice(None, None, 2), slice(None, None, 3), slice(None, None, 3))  # 88x140x180 -> 44x47x60


def la_case(la_dir: Path, cid: str, labeled: bool):
    """A downscaled LA case; pseudo-labels built directly: the dense label (the best any
    propagation could do) and each view's distance to its seed slice."""
    image = zscore(read_volume(la_dir / cid / "image.nii.gz").array[DOWN])
    if not labeled:
        return image
    dense = (read_volume(la_dir / cid / "label.nii.gz").array[DOWN] > 0).astype(np.uint8)
    sparse = SparseAnnotation.from_dense(Volume(dense))
    distance = {}
    for v in VIEWS:
        seed = sparse.annotated_slices(v.axis)[0]
        idx = np.abs(np.arange(dense.shape[v.axis]) - seed).reshape([-1 if a == v.axis else 1 for a in range(3)])
        distance[v.name] = np.broadcast_to(idx, dense.shape).astype(np.uint16)
    return LabeledCase(cid, image, {v.name: dense for v in VIEWS}, distance, sparse.known())


@pytest.fixture(scope="module")
def la_data(la_dir, la_case_ids) -> TrainingData:
    ids = la_case_ids
    return TrainingData([la_case(la_dir, c, True) for c in ids[:2]], [la_case(la_dir, c, False) for c in ids[2:4]])


def tiny_config(iterations: int, guidance: bool = False, **kw) -> TrainConfig:
    base = dict(model=ModelConfig.make(width=4, guidance=guidance),
                schedule=ScheduleConfig(iterations=iterations, base_lr=0.05, lr_milestones=(10_000,)),
                patch_size=(32, 32, 32), progress=False, checkpoint_every=1000, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


class FakeEmbeddings:
    """Stands in for rada.guidance.GuidanceEmbeddings (text [512], visual per view, enabled)."""

    def __init__(self, seed: int = 0, enabled: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.text = torch.randn(512, generator=g)
        self.visual = {v.name: torch.randn(512, generator=g) for v in VIEWS}
        self.enabled = enabled


def test_twenty_iterations_on_real_la_decrease_the_loss(la_data, tmp_path):
    result = train(la_data, tmp_path / "run", tiny_config(20))
    rows = read_log(result.log)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 21))
    first, last = np.mean([r["sup"] for r in rows[:5]]), np.mean([r["sup"] for r in rows[-5:]])
    assert last < first, (first, last)
    assert result.curve is not None and result.curve.stat().st_size > 1000
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["iteration"] == 20 and set(ckpt["views"]) == {"sagittal", "coronal", "axial"}
    assert set(ckpt["optimizers"]) == set(ckpt["views"]) and ckpt["guidance"]["enabled"] is False
    assert ckpt["guidance"]["reason"] == "guidance off: no guidance embeddings given"
    assert ckpt["preprocessing"]["intensity"] == "zscore" and ckpt["preprocessing"]["patch_size"] == [32, 32, 32]
    assert ckpt["versions"]["torch"] == torch.__version__ and len(ckpt["content_hash"]) == 64
    assert TrainConfig.from_dict(ckpt["config"]) == tiny_config(20)
    assert 0.0 <= rows[-1]["certain"] <= 1.0 and rows[0]["alpha"] == pytest.approx(0.95)


def test_kill_and_resume_gives_the_uninterrupted_weights(la_data, tmp_path):
    cfg = tiny_config(6, checkpoint_every=3)
    full = train(la_data, tmp_path / "full", cfg)

    def kill(iteration: int, values: dict) -> None:
        if iteration == 5:  # iterations 4 and 5 are lost: the last checkpoint is at 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(la_data, tmp_path / "resumed", cfg, callback=kill)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["iteration"] == 3
    with pytest.raises(InputError, match="--resume"):
        train(la_data, tmp_path / "resumed", cfg)
    resumed = train(la_data, tmp_path / "resumed", cfg, resume=True)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["content_hash"] == b["content_hash"]
    for view in a["views"]:
        for k, t in a["views"][view].items():
            assert torch.equal(t, b["views"][view][k]), (view, k)
    for view in a["optimizers"]:
        for i, s in a["optimizers"][view]["state"].items():
            assert torch.equal(s["momentum_buffer"], b["optimizers"][view]["state"][i]["momentum_buffer"])
    assert [r["loss"] for r in read_log(full.log)] == [r["loss"] for r in read_log(resumed.log)]


def test_guided_training_keeps_its_embeddings(la_data, tmp_path):
    emb = FakeEmbeddings()
    result = train(la_data, tmp_path / "g", tiny_config(2, guidance=True), guidance=emb)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["guidance"]["enabled"] and torch.equal(ckpt["guidance"]["text"], emb.text)
    expected = torch.cat([emb.text, emb.visual["coronal"]])
    assert torch.equal(ckpt["views"]["coronal"]["embedding"], expected)
    with pytest.raises(InputError, match="guidance"):
        Trainer(tiny_config(2, guidance=True), la_data, tmp_path / "x", guidance=FakeEmbeddings(enabled=False))
    with pytest.raises(InputError, match="guidance"):
        Trainer(tiny_config(2, guidance=False), la_data, tmp_path / "y", guidance=emb)


class _HookRecorder(Trainer):
    """A Trainer that records its hooks: the run loop must be this sequence, so a subclass can
    change one step (e.g. another validation) by overriding one hook."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def on_train_start(self, resume):
        self.calls.append("on_train_start")
        super().on_train_start(resume)

    def on_iteration_start(self, t):
        self.calls.append(f"on_iteration_start {t}")
        return super().on_iteration_start(t)

    def train_step(self, batch):
        self.calls.append(f"train_step {batch.iteration}")
        return super().train_step(batch)

    def on_iteration_end(self, values):
        self.calls.append(f"on_iteration_end {self.iteration}")
        super().on_iteration_end(values)

    def validation_step(self):
        self.calls.append(f"validation_step {self.iteration}")
        return super().validation_step()

    def on_validation_end(self, scores, values):
        self.calls.append(f"on_validation_end {self.iteration}")
        super().on_validation_end(scores, values)

    def save_checkpoint(self):
        self.calls.append(f"save_checkpoint {self.iteration}")
        return super().save_checkpoint()

    def on_train_end(self):
        self.calls.append("on_train_end")
        return super().on_train_end()


def test_fit_is_the_sequence_of_hooks(la_data, tmp_path):
    first = la_data.labeled[0]
    val = [ValidationCase(first.id, first.image, next(iter(first.labels.values())))]
    data = TrainingData(la_data.labeled, la_data.unlabeled, val)
    trainer = _HookRecorder(tiny_config(3, checkpoint_every=2, validate_every=2), data, tmp_path / "h")
    result = trainer.fit()
    assert trainer.calls == [
        "on_train_start",
        "on_iteration_start 0", "train_step 0", "on_iteration_end 1",
        "on_iteration_start 1", "train_step 1", "on_iteration_end 2", "validation_step 2", "on_validation_end 2",
        "save_checkpoint 2",
        "on_iteration_start 2", "train_step 2", "on_iteration_end 3", "validation_step 3", "on_validation_end 3",
        "save_checkpoint 3",
        "on_train_end"]
    assert [h["iteration"] for h in result.validation["history"]] == [2, 3] and result.best is not None
    rows = read_log(result.log)  # the validation lands in the row of its iteration
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3] and np.isnan(rows[0]["val_dice"])
    assert [r["val_dice"] for r in rows[1:]] == pytest.approx([h["dice"] for h in result.validation["history"]])


def test_tampered_checkpoint_is_rejected(la_data, tmp_path):
    result = train(la_data, tmp_path / "t", tiny_config(1))
    state = torch.load(result.checkpoint, weights_only=False)
    state["views"]["axial"]["head.classifier.bias"] += 1
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="content hash"):
        load_checkpoint(tmp_path / "bad.pt")


# --- torch.distributed on CPU (gloo) ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    rng = np.random.default_rng(0)
    img = rng.normal(size=(24, 32, 32)).astype(np.float32)
    lab = (img > 0.5).astype(np.uint8)
    dist_map = {v.name: np.zeros(img.shape, np.uint16) for v in VIEWS}
    data = TrainingData([LabeledCase("a", img, {v.name: lab for v in VIEWS}, dist_map, np.ones(img.shape, bool))],
                        [img[::-1].copy()])
    cfg = tiny_config(2, patch_size=(16, 16, 16))
    trainer = Trainer(cfg, data, run_dir)
    assert trainer.dist.world_size == world and trainer.dist.rank == rank
    trainer.fit()
    params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    gathered = [torch.zeros_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    assert all(torch.equal(gathered[0], g) for g in gathered), "ranks diverged"
    # The values a step logs are the mean over ranks of each rank's own losses (ranks draw
    # different patches, so their own losses differ).
    import rada.train.trainer as trainer_module

    own = {}
    real_view_losses = trainer_module.view_losses

    def recording_view_losses(*args):
        out = real_view_losses(*args)
        own["loss"] = float(sum(v["total"] for v in out.values()))
        return out

    trainer_module.view_losses = recording_view_losses
    values = trainer.step(2)
    trainer_module.view_losses = real_view_losses
    logged = torch.tensor([values["loss"], own["loss"]], dtype=torch.float64)
    every = [torch.zeros_like(logged) for _ in range(world)]
    dist.all_gather(every, logged)
    assert len({round(float(e[1]), 6) for e in every}) == world, "the ranks' own losses should differ"
    mean_own = sum(float(e[1]) for e in every) / world
    assert all(float(e[0]) == pytest.approx(mean_own, rel=1e-5) for e in every), every
    # Both ranks past every collective before either tears the group down: without it, a rank
    # that finished all_gather first could close the connection while the other still reads
    # (gloo then aborts the slower rank: "terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_data_parallel_two_cpu_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ckpt["iteration"] == 2 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2

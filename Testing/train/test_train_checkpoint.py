"""Checkpoints, resuming and the run log on small volumes made here (seconds, no real data):
what ``save_checkpoint`` writes and ``load_checkpoint`` restores, the checkpoint file's
format and content hash, ``TrainConfig.with_overrides`` and the ``log.csv`` helpers.

The slow real-data counterpart (kill and resume on LA cases) is in ``test_train_loop.py``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import platform
import re
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from rada import __version__
from rada import checkpoint as ckpt
from rada.errors import InputError
from rada.nets import ModelConfig
from rada.train import ScheduleConfig, TrainConfig, Trainer
from rada.train.run_log import LOG_FIELDS, RunLog, read_log

from test_train_method import _data


def _tiny(iterations: int, **kw) -> TrainConfig:
    base = dict(model=ModelConfig.make(width=4, guidance=False),
                schedule=ScheduleConfig(iterations=iterations, base_lr=0.05, lr_milestones=(2,)),
                patch_size=(16, 16, 16), progress=False, device="cpu", checkpoint_every=2, validate_every=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return _data(shape=(18, 22, 22), n_labeled=2, n_unlabeled=2)


def _weights(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])


# --- resuming ------------------------------------------------------------------------------------

def test_a_resumed_run_equals_the_uninterrupted_one(data, tmp_path):
    # 3 iterations straight vs 2, a checkpoint, and a new trainer that resumes for the third:
    # the lr milestone at 2 and the momentum buffers must come back from the checkpoint.
    full = Trainer(_tiny(3), data, tmp_path / "full")
    full_result = full.fit()

    def kill(iteration, values):
        if iteration == 2:  # after the checkpoint of iteration 2 was written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(_tiny(3), data, tmp_path / "cut").fit(callback=kill)
    resumed = Trainer(_tiny(3), data, tmp_path / "cut")
    result = resumed.fit(resume=True)
    assert result.iterations == resumed.iteration == 3
    assert torch.equal(_weights(resumed), _weights(full))
    for k, o in resumed.optimizers.items():
        a, b = o.state_dict(), full.optimizers[k].state_dict()
        assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]] == [pytest.approx(0.005)]
        for i, s in b["state"].items():
            assert torch.equal(a["state"][i]["momentum_buffer"], s["momentum_buffer"])
    rows, full_rows = read_log(result.log), read_log(full_result.log)
    assert [r["iteration"] for r in rows] == [1.0, 2.0, 3.0]
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]
    assert ckpt.load_checkpoint(result.checkpoint)["content_hash"] == \
        ckpt.load_checkpoint(full_result.checkpoint)["content_hash"]


def test_load_checkpoint_restores_iteration_optimisers_validation_and_rng(data, tmp_path):
    trainer = Trainer(_tiny(5), data, tmp_path / "a")
    trainer.step(0)
    trainer.step(1)
    trainer.iteration = 2
    trainer.validation = {"best_dice": 0.5, "best_iteration": 2, "history": [{"iteration": 2, "dice": 0.5}]}
    torch.manual_seed(123)
    np.random.seed(321)
    path = trainer.save_checkpoint()
    assert path == tmp_path / "a" / "checkpoint.pt" and path.exists()
    torch_next, numpy_next = torch.rand(3), np.random.random(3)  # what the saved states draw next
    state = ckpt.load_checkpoint(path)
    assert state["iteration"] == 2 and set(state["optimizers"]) == {"axial", "coronal", "sagittal"}
    assert state["config"] == trainer.config.as_dict() and state["world_size"] == 1
    assert state["preprocessing"] == {"intensity": "zscore", "patch_size": [16, 16, 16]}

    other = Trainer(_tiny(5, seed=9), data, tmp_path / "b")
    assert not torch.equal(_weights(other), _weights(trainer))
    torch.manual_seed(0)
    np.random.seed(0)
    other.load_checkpoint(path)
    assert torch.equal(torch.rand(3), torch_next) and np.array_equal(np.random.random(3), numpy_next)
    assert other.iteration == 2 and torch.equal(_weights(other), _weights(trainer))
    assert other.validation == trainer.validation
    for k, o in other.optimizers.items():
        assert str(o.state_dict()) == str(trainer.optimizers[k].state_dict())
    # a checkpoint without RNG states (or of another world size) leaves this process's alone
    del state["rng"]
    ckpt.save_checkpoint(state, tmp_path / "norng.pt")
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    other.load_checkpoint(tmp_path / "norng.pt")
    assert torch.equal(torch.rand(3), expected)
    assert other.validation == trainer.validation
    # a checkpoint without a validation record, or with only part of one, restores what it has
    state["validation"] = {"best_dice": 0.3}
    ckpt.save_checkpoint(state, tmp_path / "partial.pt")
    other.load_checkpoint(tmp_path / "partial.pt")
    assert other.validation == {"best_dice": 0.3, "best_iteration": None, "history": []}
    del state["validation"]
    ckpt.save_checkpoint(state, tmp_path / "noval.pt")
    other.load_checkpoint(tmp_path / "noval.pt")
    assert other.validation == {"best_dice": None, "best_iteration": None, "history": []}


def test_a_checkpoint_of_another_network_or_an_existing_one_without_resume_is_refused(data, tmp_path):
    Trainer(_tiny(2), data, tmp_path / "run").fit()
    wider = Trainer(_tiny(2, model=ModelConfig.make(width=6, guidance=False)), data, tmp_path / "run")
    with pytest.raises(InputError, match="another network configuration"):
        wider.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(InputError, match="exists: pass --resume"):
        Trainer(_tiny(3), data, tmp_path / "run").fit()
    # a resume with nothing to resume starts from scratch
    fresh = Trainer(_tiny(1), data, tmp_path / "new")
    assert fresh.fit(resume=True).iterations == 1


def test_the_progress_bar_counts_iterations_and_shows_loss_lr_beta_and_alpha(data, tmp_path, capsys):
    Trainer(_tiny(2, progress=True, checkpoint_every=1000), data, tmp_path / "p").fit()
    err = capsys.readouterr().err.replace("\r", "\n")
    final = [line for line in err.splitlines() if line.startswith("train:")][-1]
    assert " 2/2 " in final
    for shown in (r"loss=\d+\.\d{4}\b", r"lr=5e-02\b", r"beta=0\.\d{3}\b", r"alpha=0\.950\b"):
        assert re.search(shown, final), (shown, final)


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="needs a POSIX pseudo-terminal")
def test_the_progress_bar_follows_a_resized_terminal(data, tmp_path, monkeypatch):
    """After the terminal is resized the bar is redrawn at its new width (``dynamic_ncols``).
    The bar writes to a pseudo-terminal here, widened from 60 to 120 columns after iteration 1."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    terminal = open(slave, "w", encoding="utf-8", closefd=False)
    shown: list[bytes] = []

    def resize(columns: int) -> None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def drain() -> None:  # the pty's buffer is small: read what the bar wrote so far
        terminal.flush()
        while select.select([master], [], [], 0)[0]:
            shown.append(os.read(master, 65536))

    def widen(iteration, values):
        drain()
        if iteration == 1:
            resize(120)

    resize(60)
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        Trainer(_tiny(3, progress=True, checkpoint_every=1000), data, tmp_path / "p").fit(callback=widen)
        drain()
    finally:
        terminal.close()
        os.close(slave)
        os.close(master)
    lines = [line for line in b"".join(shown).decode().replace("\n", "\r").split("\r") if line.startswith("train:")]
    assert {len(line) for line in lines if " 1/3 " in line} == {59}  # tqdm leaves the last column free
    assert {len(line) for line in lines if " 3/3 " in line} == {119}


# --- TrainConfig.with_overrides -----------------------------------------------------------------

def test_with_overrides_changes_only_what_is_given_and_validates():
    base = TrainConfig()
    assert base.with_overrides() == base
    assert base.with_overrides(None, None, seed=None, device=None) == base
    cfg = base.with_overrides(iterations=300, width=8, seed=3, device="cpu", patch_size=(32, 64, 64))
    assert cfg.schedule == replace(base.schedule, iterations=300)
    assert cfg.model.backbone == replace(base.model.backbone, width=8)
    assert cfg.model.head == base.model.head
    assert (cfg.seed, cfg.device, cfg.patch_size) == (3, "cpu", (32, 64, 64))
    assert replace(cfg, seed=0, device="auto", patch_size=base.patch_size, schedule=base.schedule,
                   model=base.model) == base
    with pytest.raises(InputError, match="iterations must be at least 1"):
        base.with_overrides(iterations=0)
    with pytest.raises(InputError, match="width must be at least 1"):
        base.with_overrides(width=0)
    with pytest.raises(InputError, match="momentum"):
        base.with_overrides(momentum=1.0)


# --- the checkpoint file ----------------------------------------------------------------------

def _views(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"axial": {"w": torch.randn(2, 3, generator=g), "b": torch.zeros(0)},
            "coronal": {"w": torch.randn(4, generator=g).double(), "n": torch.tensor(7)}}


def test_the_content_hash_is_of_names_dtypes_sizes_and_bytes_in_any_order():
    views = _views()
    h = ckpt.content_hash(views)
    assert len(h) == 64 and int(h, 16) >= 0
    reordered = {"coronal": dict(reversed(list(views["coronal"].items()))), "axial": views["axial"]}
    assert ckpt.content_hash(reordered) == h
    changes = [
        {**views, "axial": {**views["axial"], "w": views["axial"]["w"][:, :2]}},            # size
        {**views, "axial": {**views["axial"], "w": views["axial"]["w"].double()}},          # dtype
        {**views, "axial": {"w2": views["axial"]["w"], "b": views["axial"]["b"]}},          # name
        {"sagittal": views["axial"], "coronal": views["coronal"]},                          # view
        {**views, "coronal": {**views["coronal"], "n": torch.tensor(8)}},                   # bytes
    ]
    for i, changed in enumerate(changes):
        assert ckpt.content_hash(changed) != h, i
    # the same values in another shape hash alike (format 1 hashes the flattened tensors;
    # loading such weights fails on the shape anyway)
    assert ckpt.content_hash({**views, "axial": {**views["axial"], "w": views["axial"]["w"].reshape(3, 2)}}) == h
    # a transposed (non-contiguous) tensor hashes as its values, like its contiguous copy
    t = torch.randn(3, 4).t()
    assert ckpt.content_hash({"a": {"t": t}}) == ckpt.content_hash({"a": {"t": t.contiguous()}})


def test_save_adds_format_versions_and_hash_and_load_checks_them(tmp_path):
    path = ckpt.save_checkpoint({"views": _views(), "iteration": 4}, tmp_path / "c.pt")
    assert path == tmp_path / "c.pt" and [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    state = ckpt.load_checkpoint(path)
    assert state["format"] == "rada-checkpoint" and state["format_version"] == ckpt.FORMAT_VERSION == 1
    assert state["versions"] == ckpt.versions()
    assert state["versions"]["rada"] == __version__ and state["versions"]["torch"] == torch.__version__
    assert state["content_hash"] == ckpt.content_hash(_views()) and state["iteration"] == 4
    assert torch.equal(state["views"]["axial"]["w"], _views()["axial"]["w"])

    raw = torch.load(path, weights_only=False)
    raw["views"]["axial"]["w"] += 1
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(InputError, match="corrupted"):
        ckpt.load_checkpoint(tmp_path / "tampered.pt")
    assert ckpt.load_checkpoint(tmp_path / "tampered.pt", verify=False)["iteration"] == 4
    with pytest.raises(InputError, match="no checkpoint at"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")
    for foreign in ({"views": {}}, [1, 2], {**raw, "format": "other"}):
        torch.save(foreign, tmp_path / "foreign.pt")
        with pytest.raises(InputError, match="is not a RADA checkpoint"):
            ckpt.load_checkpoint(tmp_path / "foreign.pt")


def test_the_content_hash_follows_format_1_byte_for_byte():
    """Format 1 written out: views and names sorted; per tensor ``view/name/dtype/(numel,)``
    then its raw bytes (none for an empty tensor). Stored checkpoints are checked against
    this, so it must not change."""
    views = _views()
    h = hashlib.sha256()
    for view in sorted(views):
        for name in sorted(views[view]):
            t = views[view][name]
            h.update(f"{view}/{name}/{t.dtype}/({t.numel()},)".encode())
            h.update(t.contiguous().numpy().tobytes())
    assert ckpt.content_hash(views) == h.hexdigest()


def test_a_checkpoint_holds_detached_weights_and_its_state_plus_format_versions_and_hash(tmp_path):
    views = _views()
    views["axial"]["w"].requires_grad_(True)  # e.g. a state dict taken with keep_vars=True
    ckpt.save_checkpoint({"views": views, "iteration": 4, "note": "kept"}, tmp_path / "c.pt")
    state = ckpt.load_checkpoint(tmp_path / "c.pt")
    assert set(state) == {"views", "iteration", "note", "format", "format_version", "versions", "content_hash"}
    assert not any(t.requires_grad for sd in state["views"].values() for t in sd.values())
    assert torch.equal(state["views"]["axial"]["w"], views["axial"]["w"].detach())
    assert state["versions"] == {"rada": __version__, "torch": torch.__version__, "python": platform.python_version()}


# --- the run log ---------------------------------------------------------------------------------

def test_the_log_appends_rows_truncates_for_a_resume_and_reads_empty_cells_as_nan(tmp_path):
    log = RunLog(tmp_path)
    assert log.path == tmp_path / "log.csv" and log.curve_path == tmp_path / "loss.png"
    log.truncate(3)  # nothing to truncate yet: no file made
    assert not log.path.exists()
    assert log.curve() is None and log.plot() is None and not log.curve_path.exists()  # no rows: no curve
    for i in (1, 2, 3, 4):
        log.append({"iteration": i, "loss": 1.0 / i, "lr": 0.01, "not_a_column": 5})
    with open(log.path, newline="") as f:
        assert next(csv.reader(f)) == list(LOG_FIELDS)  # the header once, in this order
    rows = read_log(log.path)
    assert [r["iteration"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    assert rows[1]["loss"] == 0.5 and rows[1]["lr"] == 0.01 and math.isnan(rows[1]["val_dice"])
    assert set(rows[0]) == set(LOG_FIELDS)
    log.truncate(2)  # a checkpoint at 2: the rows of 3 and 4 are gone, the header stays
    assert [r["iteration"] for r in read_log(log.path)] == [1.0, 2.0]
    log.append({"iteration": 3, "loss": 9.0, "val_dice": 0.25})
    rows = read_log(log.path)
    assert [(r["iteration"], r["loss"], r["val_dice"]) for r in rows][2] == (3.0, 9.0, 0.25)
    with open(log.path) as f:
        assert f.read().count("iteration") == 1
    assert log.curve() == log.curve_path and log.curve_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_step_without_unlabeled_patches_runs_no_teacher(data, tmp_path):
    trainer = Trainer(_tiny(1, unlabeled_batch=0), data, tmp_path / "sup")
    teacher_calls = []
    for net in trainer.model.nets.values():
        net.register_forward_pre_hook(lambda m, args: teacher_calls.append(1) if not torch.is_grad_enabled() else None)
    values = trainer.step(0)
    assert teacher_calls == [] and values["certain"] == 0.0
    assert math.isfinite(values["loss"]) and values["unsup"] == 0.0

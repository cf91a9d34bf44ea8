"""What a new :class:`Trainer` holds and what each iteration starts with, on small volumes made
here (seconds, no real data):

- the guidance it trains with and the reason it records, the preprocessing facts, the empty
  validation record, and the guidance/model mismatches it refuses (with their messages);
- the device: the config's choice and the process's ``LOCAL_RANK`` (the GPU of a torchrun rank);
- a CPU trainer computes in float32 and leaves the global CUDA settings alone, bf16 and
  deterministic kernels asked for or not;
- ``on_iteration_start``: METHOD.md's schedule values at its milestones, the batch the config
  asks for, and randomness that depends on (seed, rank, t) only.

Written for the mutation testing of issue #13 (``bench/results/mutation_issue13.md``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

import rada.train.trainer as trainer_module
from rada.errors import InputError
from rada.nets import ModelConfig
from rada.train import TrainConfig, Trainer
from rada.train.distributed import DistInfo
from rada.views import VIEWS

from test_train_method import _data

PATCH = (16, 16, 16)


def _config(guidance: bool = False, **kw) -> TrainConfig:
    base = dict(model=ModelConfig.make(width=4, guidance=guidance), patch_size=PATCH, progress=False,
                device="cpu", validate_every=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return _data(shape=(18, 22, 22), n_labeled=3, n_unlabeled=2)


class _Embeddings:
    """Stands in for ``rada.guidance.GuidanceEmbeddings``; ``reason`` is optional there too."""

    def __init__(self, reason: str | None = None, enabled: bool = True) -> None:
        g = torch.Generator().manual_seed(1)
        self.text = torch.randn(512, generator=g)
        self.visual = {v.name: torch.randn(512, generator=g) for v in VIEWS}
        self.enabled = enabled
        if reason is not None:
            self.reason = reason


# --- what a new trainer records ------------------------------------------------------------------


def test_a_plain_trainer_records_why_it_has_no_guidance_its_preprocessing_and_no_validation(data, tmp_path):
    state = Trainer(_config(), data, tmp_path / "a").model_state()
    assert state["guidance"] == {"enabled": False, "reason": "guidance off: no guidance embeddings given"}
    assert state["preprocessing"] == {"intensity": "zscore", "patch_size": [16, 16, 16]}
    assert state["validation"] == {"best_dice": None, "best_iteration": None, "history": []}
    assert state["iteration"] == 0
    # a reason given by the caller (train() passes guidance_choice's) and extra preprocessing facts
    given = Trainer(_config(), data, tmp_path / "b", preprocessing={"protocol": "ct-abdomen"},
                    guidance_reason="guidance off: switched off for this run").model_state()
    assert given["guidance"] == {"enabled": False, "reason": "guidance off: switched off for this run"}
    assert given["preprocessing"] == {"intensity": "zscore", "patch_size": [16, 16, 16], "protocol": "ct-abdomen"}


@pytest.mark.parametrize("reason, given, recorded", [
    ("made from the dataset's cases", "", "made from the dataset's cases"),   # the embeddings' own reason
    (None, "", "embeddings given"),                                            # none anywhere: a default
    ("", "chosen by auto", "chosen by auto"),                                  # the caller's
])
def test_a_guided_trainer_sets_its_embeddings_and_records_why(data, tmp_path, reason, given, recorded):
    emb = _Embeddings(reason)
    trainer = Trainer(_config(guidance=True), data, tmp_path, guidance=emb, guidance_reason=given)
    state = trainer.model_state()
    assert state["guidance"]["enabled"] and state["guidance"]["reason"] == recorded
    assert torch.equal(state["guidance"]["text"], emb.text)
    for v in VIEWS:  # every view's head is conditioned on [text, its own visual embedding]
        assert torch.equal(state["guidance"]["visual"][v.name], emb.visual[v.name])
        assert torch.equal(state["views"][v.name]["embedding"], torch.cat([emb.text, emb.visual[v.name]]))
    assert trainer.on_train_end().guidance == {"enabled": True, "reason": given or recorded}


def test_guidance_that_does_not_match_the_model_config_is_refused(data, tmp_path):
    guided_without = ("the model config has guidance on but no (enabled) guidance embeddings were given; "
                      "give embeddings or train the plain tri-view model (guidance off)")
    for emb in (None, _Embeddings(enabled=False)):
        with pytest.raises(InputError, match=f"^{re.escape(guided_without)}$"):
            Trainer(_config(guidance=True), data, tmp_path, guidance=emb)
    with pytest.raises(InputError, match="^guidance embeddings given but the model config has guidance off$"):
        Trainer(_config(), data, tmp_path, guidance=_Embeddings("x"))
    # disabled embeddings on a plain config are no guidance at all: accepted
    Trainer(_config(), data, tmp_path, guidance=_Embeddings(enabled=False))


def test_the_device_is_the_configs_choice_on_the_gpu_of_the_local_rank(data, tmp_path, monkeypatch):
    """Under torchrun every process picks the GPU of its ``LOCAL_RANK`` (``select_device`` maps
    it); here the choice is recorded instead of made, so no GPU is needed."""
    asked = []

    def recording_select_device(preference="auto", local_rank=0):
        asked.append((preference, local_rank))
        return torch.device("cpu")

    monkeypatch.setattr(trainer_module, "select_device", recording_select_device)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    Trainer(_config(device="auto"), data, tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "3")
    Trainer(_config(device="cuda"), data, tmp_path)
    assert asked == [("auto", 0), ("cuda", 3)]


def test_a_cpu_trainer_computes_in_float32_and_leaves_global_cuda_settings_alone(data, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    try:
        trainer = Trainer(_config(bf16=True, deterministic=True), data, tmp_path)
        assert torch.backends.cudnn.benchmark == benchmark
        assert torch.are_deterministic_algorithms_enabled() == deterministic
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        seen: list[torch.dtype] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
                   for m in trainer.model.modules() if isinstance(m, torch.nn.Conv3d)]
        trainer.step(0)
        for h in handles:
            h.remove()
        assert seen and set(seen) == {torch.float32}  # bf16 autocast is for CUDA only
    finally:  # a failure must not leak global settings into the other tests
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(deterministic)


def test_the_initial_weights_follow_the_seed(data, tmp_path):
    def weights(seed: int) -> torch.Tensor:
        trainer = Trainer(_config(seed=seed), data, tmp_path)
        return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])

    torch.manual_seed(1234)  # whatever the global state was before
    first = weights(3)
    torch.manual_seed(4321)
    assert torch.equal(weights(3), first) and not torch.equal(weights(4), first)


# --- on_iteration_start ----------------------------------------------------------------------------


def _ramp(x: float, length: float) -> float:
    return math.exp(-5 * (1 - min(max(x, 0), length) / length) ** 2)


@pytest.mark.parametrize("scale", [1, 10])
@pytest.mark.parametrize("t, alpha, lr", [
    (0, 0.95, 0.01), (990, 0.95, 0.01), (1000, 0.946, 0.01), (2000, 0.761, 0.01), (2500, 0.761, 0.001),
    (5000, 0.5 * (math.cos(math.pi * (5000 // 150) / 40) + 1), 0.0001),   # refreshed at 5000: 0.074
])
def test_an_iteration_starts_with_method_md_schedule_values(data, tmp_path, t, alpha, lr, scale):
    """METHOD.md sections 2 and 5 on its own numbers (6000 iterations): alpha refreshed every 1000
    (0.95, 0.946, 0.761), beta = 0.1 ramp(t // 150, 40), threshold = (0.75 + 0.25 ramp(t, 6000)) ln 2,
    lr 0.01 x 0.1 at 2500 and 5000. A run of 600 iterations (``scaled``) has the same values a tenth
    of the way: the iteration reads the run's schedule, not the default one."""
    cfg = _config()
    trainer = Trainer(replace(cfg, schedule=cfg.schedule.scaled(6000 // scale)), data, tmp_path)
    batch = trainer.on_iteration_start(t // scale)
    assert batch.iteration == t // scale
    assert batch.alpha == pytest.approx(alpha, abs=5e-4)
    assert batch.beta == pytest.approx(0.1 * _ramp(t // 150, 40), rel=1e-9)
    assert batch.threshold == pytest.approx((0.75 + 0.25 * _ramp(t, 6000)) * math.log(2), rel=1e-9)
    assert batch.lr == pytest.approx(lr, rel=1e-9)
    # the pseudo-labels of the labeled patches are weighted alpha^d off the annotated planes
    w = batch.batch.weights["axial"][: batch.batch.n_labeled]
    off_plane = w[(w > 0) & (w < 1)]
    exponent = np.log(off_plane) / np.log(batch.alpha)
    assert off_plane.size and np.allclose(exponent, np.round(exponent), atol=1e-3)


def test_an_iteration_draws_the_batch_the_config_asks_for(data, tmp_path):
    trainer = Trainer(_config(labeled_batch=3, unlabeled_batch=1, augment=False), data, tmp_path)
    batch = trainer.on_iteration_start(4).batch
    assert batch.n_labeled == 3 and batch.image.shape == (4, 1) + PATCH
    assert set(batch.labels) == {v.name for v in VIEWS}
    assert all(lab.shape[0] == 3 for lab in batch.labels.values())
    # augment off: every patch is a plain crop of its volume (found there unrotated, unflipped)
    volumes = [c.image for c in data.labeled]
    for patch in batch.image[:3, 0]:
        assert any(_found_in(patch, v) for v in volumes)
    augmented = Trainer(_config(labeled_batch=3, unlabeled_batch=1), data, tmp_path).on_iteration_start(4).batch
    assert not any(any(_found_in(p, v) for v in volumes) for p in augmented.image[:3, 0])  # reflections


def _found_in(patch: np.ndarray, volume: np.ndarray) -> bool:
    """``patch`` is a crop of ``volume`` (the data's patches fit inside these volumes)."""
    pz, py, px = patch.shape
    for z in range(volume.shape[0] - pz + 1):
        for y in range(volume.shape[1] - py + 1):
            for x in range(volume.shape[2] - px + 1):
                if np.array_equal(volume[z:z + pz, y:y + py, x:x + px], patch):
                    return True
    return False


def test_an_iterations_randomness_depends_on_seed_rank_and_t_only(data, tmp_path):
    """Patches and the torch stream (teacher noise, dropout) of iteration t are a function of
    (seed, rank, t): the same after any history (exact resume), different on another rank, at
    another t or with another seed. Only the rank matters here, so rank 1 needs no process group."""

    def start(trainer: Trainer, t: int) -> tuple[np.ndarray, torch.Tensor]:
        batch = trainer.on_iteration_start(t)
        return batch.batch.image, torch.rand(4)

    cfg = _config()
    rank0 = Trainer(cfg, data, tmp_path)
    rank1 = Trainer(cfg, data, tmp_path, dist_info=DistInfo(rank=1, world_size=1))
    image, draws = start(rank0, 5)
    start(rank0, 2)
    torch.rand(10)                                       # any history in between
    again, again_draws = start(rank0, 5)
    assert np.array_equal(again, image) and torch.equal(again_draws, draws)
    for other in (start(rank1, 5), start(rank0, 6), start(Trainer(replace(cfg, seed=1), data, tmp_path), 5)):
        assert not np.array_equal(other[0], image) and not torch.equal(other[1], draws)


# --- validation hooks ------------------------------------------------------------------------------


def test_a_validation_records_its_scores_and_only_a_better_dice_writes_best_pt(data, tmp_path):
    from rada import checkpoint as ckpt
    from rada.train.validation import ValidationScores

    trainer = Trainer(_config(), data, tmp_path)
    best = tmp_path / "best.pt"
    assert trainer.on_train_end().best is None            # nothing validated yet
    scores = [(2, ValidationScores(0.5, 3.25, 0, {"v": 0.5})),
              (4, ValidationScores(0.5, None, 1, {"v": 0.5})),    # equal Dice, every prediction empty
              (6, ValidationScores(0.75, 2.0, 0, {"v": 0.75}))]
    logged = []
    for iteration, s in scores:
        trainer.iteration = iteration
        values: dict = {}
        trainer.on_validation_end(s, values)
        logged.append(values)
        assert ckpt.load_checkpoint(best)["iteration"] == (6 if iteration == 6 else 2)
    assert logged[0] == {"val_dice": 0.5, "val_hd95": 3.25, "best": 1.0}
    assert logged[1]["val_dice"] == 0.5 and math.isnan(logged[1]["val_hd95"])
    assert set(logged[1]) == {"val_dice", "val_hd95"}                       # not a new best
    assert logged[2] == {"val_dice": 0.75, "val_hd95": 2.0, "best": 1.0}
    assert trainer.validation == {"best_dice": 0.75, "best_iteration": 6,
                                  "history": [{"iteration": i, **s.as_dict()} for i, s in scores]}
    result = trainer.on_train_end()
    assert result.best == best and result.validation == trainer.validation
    assert result.validation["history"] is not trainer.validation["history"]  # a copy: the run goes on


@pytest.mark.parametrize("every, with_cases, rank, due", [
    (2, True, 0, [2, 4, 5]),      # every 2 iterations and at the last (5)
    (3, True, 0, [3, 5]),
    (0, True, 0, []),             # never
    (2, False, 0, []),            # no validation cases
    (2, True, 1, []),             # only the main rank validates
])
def test_validation_is_due_every_n_iterations_and_at_the_last(data, tmp_path, every, with_cases, rank, due):
    from rada.train.data import TrainingData
    from rada.train.validation import ValidationCase

    cases = [ValidationCase("v", data.labeled[0].image, data.labeled[0].labels["axial"].astype(bool))]
    d = TrainingData(data.labeled, data.unlabeled, validation=cases if with_cases else [])
    cfg = _config(validate_every=every)
    trainer = Trainer(replace(cfg, schedule=replace(cfg.schedule, iterations=5)), d, tmp_path,
                      dist_info=DistInfo(rank=rank, world_size=1))
    seen = []
    for i in range(1, 6):  # the hook runs after the iteration counter moved on
        trainer.iteration = i
        if trainer._validation_due():
            seen.append(i)
    assert seen == due


def test_fit_makes_its_run_folder_logs_each_iterations_seconds_and_hands_its_values_to_the_callback(data, tmp_path):
    from rada.train.run_log import read_log

    cfg = _config()
    run = tmp_path / "runs" / "first"  # neither folder exists yet: fit makes both
    trainer = Trainer(replace(cfg, schedule=replace(cfg.schedule, iterations=2)), data, run)
    seen = []
    result = trainer.fit(callback=lambda i, values: seen.append((i, dict(values))))
    rows = read_log(result.log)
    assert [i for i, _ in seen] == [1, 2] and len(rows) == 2
    for (i, values), row in zip(seen, rows):
        assert values["iteration"] == i and 0 < values["seconds"] < 600  # wall seconds of that iteration
        assert row["seconds"] == pytest.approx(values["seconds"], rel=1e-4)
        assert row["loss"] == pytest.approx(values["loss"], rel=1e-5)
    assert result.checkpoint == run / "checkpoint.pt" and result.checkpoint.is_file()


def test_a_resumed_runs_progress_bar_starts_at_its_checkpoint(data, tmp_path, capsys):
    cfg = _config(progress=True, checkpoint_every=1)
    Trainer(replace(cfg, schedule=replace(cfg.schedule, iterations=2)), data, tmp_path).fit()
    capsys.readouterr()
    Trainer(replace(cfg, schedule=replace(cfg.schedule, iterations=3)), data, tmp_path).fit(resume=True)
    err = capsys.readouterr().err
    assert "2/3" in err and "3/3" in err and "0/3" not in err and "1/3" not in err


def test_without_progress_fit_draws_no_bar(data, tmp_path, capsys):
    # A job runner or a script that asks for no bar gets a quiet stderr (only the main rank ever draws one).
    cfg = _config(checkpoint_every=1)
    assert cfg.progress is False
    Trainer(replace(cfg, schedule=replace(cfg.schedule, iterations=2)), data, tmp_path).fit()
    assert capsys.readouterr().err == ""

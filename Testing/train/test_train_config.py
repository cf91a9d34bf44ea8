"""The recursive config loader, settings validated before any work, the guidance choice of
every entry point, and validation during training (Dice, log, plot, best checkpoint, resume)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from rada.errors import InputError
from rada.nets import ModelConfig
from rada.train import ScheduleConfig, TrainConfig, TrainingData, load_checkpoint, train
from rada.config import config_to_dict, load_config
from rada.train.guidance_choice import choose_guidance, with_guidance
from rada.train.run_log import read_log
from rada.train.validation import ValidationCase, validate
from rada.views import VIEWS

from test_train_method import _data


# --- the loader ----------------------------------------------------------------------------------


def test_partial_nested_config_merges_over_the_defaults():
    cfg = TrainConfig.from_dict({"schedule": {"iterations": 300}, "model": {"backbone": {"width": 8}},
                                 "patch_size": [32, 64, 64], "noise_std": 0})
    assert cfg.schedule == replace(ScheduleConfig(), iterations=300)  # lr_milestones etc. kept
    assert cfg.model.backbone.width == 8 and cfg.model.backbone.encoder_blocks == (1, 2, 3, 3, 3)
    assert cfg.model.head == TrainConfig().model.head
    assert cfg.patch_size == (32, 64, 64) and isinstance(cfg.noise_std, float)
    assert TrainConfig.from_dict(config_to_dict(cfg)) == cfg  # a checkpoint's config round-trips
    assert TrainConfig.from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    base = replace(TrainConfig(), seed=7)
    assert TrainConfig.from_dict({"schedule": {"entropy_ramp": None}}, base).seed == 7
    # Nested keys merge over the base's nested values, not over the class defaults.
    tuned = replace(TrainConfig(), schedule=ScheduleConfig(base_lr=0.5))
    assert TrainConfig.from_dict({"schedule": {"iterations": 5}}, tuned).schedule == ScheduleConfig(5, 0.5)


@pytest.mark.parametrize("raw, message", [
    ({"schedule": {"iteration": 3}}, "unknown key 'schedule.iteration'"),
    ({"model": {"backbone": {"widht": 3}}}, "unknown key 'model.backbone.widht'"),
    ({"patch_size": [16, 16]}, "patch_size: expected 3 values"),
    ({"schedule": {"lr_milestones": [10, "x"]}}, r"schedule.lr_milestones\[1\]: expected an integer"),
    ({"momentum": True}, "momentum: expected a number"),
    ({"augment": 1}, "augment: expected true or false"),
    ({"schedule": 3}, "schedule: expected an object"),
    ({"labeled_batch": 2.5}, "labeled_batch: expected an integer"),
])
def test_bad_configs_are_one_line_errors(raw, message):
    with pytest.raises(InputError, match=message) as info:
        TrainConfig.from_dict(raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"patch_size": (30, 32, 32)}, "three multiples of 16"),
    ({"labeled_batch": 0}, "labeled_batch must be at least 1"),
    ({"teacher_passes": 0}, "teacher_passes must be at least 1"),
    ({"momentum": 1.0}, "momentum must be in"),
    ({"loss_form": "mine"}, "loss_form must be sgtc or paper"),
    ({"device": "tpu"}, "device must be auto"),
    ({"schedule": ScheduleConfig(iterations=0)}, "iterations must be at least 1"),
    ({"validate_every": -1}, "validate_every must be at least 0"),
])
def test_validate_refuses_unusable_settings(change, message):
    with pytest.raises(InputError, match=message):
        replace(TrainConfig(), **change).validate()
    TrainConfig().validate()  # the defaults are valid


def test_load_config_is_generic_for_nested_dataclasses():
    cfg = load_config(ModelConfig, {"head": {"embedding_dim": 0}})
    assert cfg == ModelConfig.make(guidance=False)


def test_cli_rejects_a_bad_config_before_reading_the_dataset(tmp_path, capsys):
    from rada.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schedule": {"iterations": 3, "lr_milestone": [1]}}), encoding="utf-8")
    # The dataset folder does not even exist: the config error comes first, in one line, exit 2.
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'schedule.lr_milestone'" in err and len(err.splitlines()) == 1
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--patch", "20,32,32"]) == 2
    assert "three multiples of 16" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- guidance ------------------------------------------------------------------------------------


class _Emb:
    def __init__(self, enabled=True, reason="test embeddings"):
        g = torch.Generator().manual_seed(0)
        self.enabled, self.reason = enabled, reason
        self.text = torch.randn(512, generator=g) if enabled else None
        self.visual = {v.name: torch.randn(512, generator=g) for v in VIEWS} if enabled else {}


def _dataset(tmp_path, la_dir=None):
    from rada.annotation import SparseAnnotation
    from rada.dataset import CaseEntry, DatasetSpec, write_dataset
    from rada.io import write_volume
    from rada.volume import Volume

    folder = tmp_path / "ds"
    label = np.zeros((16, 16, 16), np.uint8)
    label[4:12, 4:12, 4:12] = 1
    write_volume(Volume(label.astype(np.float32)), folder / "image.nii.gz")
    write_volume(SparseAnnotation.from_dense(Volume(label)).labels, folder / "sparse.nii.gz")
    write_dataset(DatasetSpec("toy", "cube", cases=[CaseEntry("a", "image.nii.gz", "sparse.nii.gz")],
                              root=folder), folder)
    return folder


def test_guidance_choice(tmp_path, monkeypatch):
    from rada.guidance import GuidanceEmbeddings, save_embeddings

    monkeypatch.setenv("RADA_HOME", str(tmp_path / "home"))  # no encoder weights installed
    ds = _dataset(tmp_path)
    run = tmp_path / "run"
    off = choose_guidance("auto", True, ds, run)
    assert not off.enabled and "rada weights download" in off.reason
    assert (run / "guidance_embeddings.npz").is_file()  # the "off" record, with its reason
    assert choose_guidance(None, True, ds).reason == "guidance off: no guidance embeddings given"
    assert choose_guidance("off", True, ds).reason == "guidance off: switched off for this run"
    assert choose_guidance("auto", False, ds).reason == "guidance off: switched off in the model config"
    with pytest.raises(InputError, match="model config has guidance off"):
        choose_guidance(_Emb(), False, ds)
    on = choose_guidance(_Emb(), True, ds)
    assert on.enabled and on.reason == "test embeddings"
    # The dataset's own embeddings file wins in auto.
    e = _Emb()
    save_embeddings(GuidanceEmbeddings(True, e.text, e.visual, "cube", "p", "made in a test"), ds / "guidance_embeddings.npz")
    auto = choose_guidance("auto", True, ds, run)
    assert auto.enabled and torch.equal(auto.embeddings.text, e.text) and "made in a test" in auto.reason
    # A resumed run keeps what it was trained with.
    resumed = choose_guidance("auto", True, ds, run, {"guidance": {"enabled": False, "reason": "earlier"}})
    assert not resumed.enabled and resumed.reason == "earlier"
    cfg = with_guidance(TrainConfig(), off)
    assert not cfg.model.head.guided and with_guidance(cfg, on).model.head.embedding_dim == 1024


def _tiny(iterations, **kw) -> TrainConfig:
    base = dict(model=ModelConfig.make(width=4), schedule=ScheduleConfig(iterations=iterations, base_lr=0.05),
                patch_size=(16, 32, 32), progress=False, device="cpu", checkpoint_every=2)
    base.update(kw)
    return TrainConfig(**base)


def test_train_with_a_guided_config_and_no_embeddings_trains_plain_and_says_why(tmp_path):
    data = _data(n_labeled=1, n_unlabeled=1)
    result = train(data, tmp_path / "run", _tiny(1))  # the default model config asks for guidance
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["guidance"] == {"enabled": False, "reason": "guidance off: no guidance embeddings given"}
    assert result.guidance == ckpt["guidance"] and ckpt["model_config"]["head"]["embedding_dim"] == 0
    guided = train(data, tmp_path / "guided", _tiny(1), guidance=_Emb())
    g = load_checkpoint(guided.checkpoint)["guidance"]
    assert g["enabled"] and g["reason"] == "test embeddings"


# --- validation during training ---------------------------------------------------------------


def test_validation_every_n_iterations_logs_plots_and_keeps_the_best(tmp_path):
    from rada.infer import load_model, predict_probability
    from rada.metrics import dice

    data = _data(n_labeled=2, n_unlabeled=1)
    ball = data.labeled[0].labels["axial"].astype(bool)
    val_image = (ball * 2.0 + np.random.default_rng(5).normal(size=ball.shape)).astype(np.float32)
    data = TrainingData(data.labeled, data.unlabeled, validation=[ValidationCase("v", val_image, ball)])
    run = tmp_path / "run"
    cfg = _tiny(6, validate_every=2)

    def stop(iteration, values):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, run, cfg, callback=stop)
    result = train(data, run, cfg, resume=True)  # resumed at 4: the history of 2 and 4 comes back
    rows = read_log(result.log)
    val = [(int(r["iteration"]), r["val_dice"]) for r in rows if not np.isnan(r["val_dice"])]
    assert [i for i, _ in val] == [2, 4, 6]
    history = result.validation["history"]
    assert [h["iteration"] for h in history] == [2, 4, 6]
    assert [h["dice"] for h in history] == pytest.approx([d for _, d in val])
    best_i = int(np.argmax([d for _, d in val]))
    assert result.validation["best_dice"] == pytest.approx(val[best_i][1])
    assert result.validation["best_iteration"] == val[best_i][0]
    # best.pt holds the weights of the best iteration: re-scoring it gives the logged Dice.
    best = load_checkpoint(result.best)
    assert best["iteration"] == val[best_i][0] and "optimizers" not in best
    model, _ = load_model(best)
    prob = predict_probability(model, val_image, patch_size=cfg.patch_size)
    assert dice(prob >= 0.5, ball) == pytest.approx(val[best_i][1], abs=1e-6)
    assert validate(model, data.validation, cfg.patch_size).dice == pytest.approx(val[best_i][1], abs=1e-6)
    assert result.curve is not None and result.curve.stat().st_size > 1000


def test_validation_leaves_the_run_exact(tmp_path):
    """Validating (eval mode, no RNG) does not change the trained weights."""
    data = _data(n_labeled=2, n_unlabeled=1)
    ball = data.labeled[0].labels["axial"].astype(bool)
    with_val = TrainingData(data.labeled, data.unlabeled, validation=[ValidationCase("v", data.labeled[1].image, ball)])
    a = train(with_val, tmp_path / "a", _tiny(3, validate_every=1))
    b = train(data, tmp_path / "b", _tiny(3, validate_every=1))
    assert load_checkpoint(a.checkpoint)["content_hash"] == load_checkpoint(b.checkpoint)["content_hash"]
    assert len(a.validation["history"]) == 3 and b.validation["history"] == []


def test_scaled_schedule_keeps_the_shape_of_the_paper_schedule():
    from rada.train import schedules as S

    full, short = ScheduleConfig(), ScheduleConfig().scaled(600)
    assert short.iterations == 600 and short.lr_milestones == (250, 500)
    assert (short.alpha_refresh, short.alpha_step, short.beta_step) == (100, 15, 15)
    for t in (0, 100, 250, 300, 500, 599):  # the same values at the same fraction of the run
        assert S.learning_rate(t, short) == pytest.approx(S.learning_rate(10 * t, full))
        assert S.distance_decay(t, short) == pytest.approx(S.distance_decay(10 * t, full))
        assert S.beta(t, short) == pytest.approx(S.beta(10 * t, full))
        assert S.entropy_threshold(t, short) == pytest.approx(S.entropy_threshold(10 * t, full))

"""What a run reports and records, on small volumes made here (seconds, no real data):

- ``train()``: the guidance choice's reason, the caller's preprocessing facts, and no silent
  overwrite of an existing run;
- ``on_train_end``: only the main rank draws the loss curve, and a ``best.pt`` that no
  validation of this run wrote is not reported;
- ``Guidance.from_embeddings``: any object with ``text``/``visual`` (``enabled`` and ``reason``
  optional) becomes float32 vectors with its reason.

Written for the mutation testing of issue #13 (``bench/results/mutation_issue13.md``, fourth pass).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rada.errors import InputError
from rada.nets import ModelConfig
from rada.train import Guidance, TrainConfig, Trainer, load_checkpoint, train
from rada.train.distributed import DistInfo
from rada.train.run_log import RunLog
from rada.views import VIEWS

from test_train_method import _data


def _config(iterations: int = 1) -> TrainConfig:
    cfg = TrainConfig(model=ModelConfig.make(width=4, guidance=False), patch_size=(16, 16, 16), progress=False,
                      device="cpu", validate_every=0)
    return replace(cfg, schedule=replace(cfg.schedule, iterations=iterations))


@pytest.fixture(scope="module")
def data():
    return _data(shape=(18, 22, 22), n_labeled=1, n_unlabeled=1)


def test_train_records_the_guidance_choice_and_preprocessing_and_refuses_to_overwrite_a_run(data, tmp_path):
    run = tmp_path / "run"
    result = train(data, run, _config(), guidance="off", preprocessing={"protocol": "ct-abdomen"})
    saved = load_checkpoint(result.checkpoint)
    off = {"enabled": False, "reason": "guidance off: switched off for this run"}  # the choice's own reason
    assert result.guidance == off and saved["guidance"] == off
    assert saved["preprocessing"] == {"intensity": "zscore", "patch_size": [16, 16, 16], "protocol": "ct-abdomen"}
    with pytest.raises(InputError, match="exists: pass --resume"):
        train(data, run, _config())  # resume is off unless asked for
    assert train(data, run, _config(), resume=True).iterations == 1


def test_only_the_main_rank_draws_the_loss_curve(data, tmp_path):
    """Every rank of a torchrun job shares the run folder; the main rank writes the log and
    the curve, another rank must not redraw ``loss.png`` from it."""
    run = tmp_path / "shared"
    run.mkdir()
    RunLog(run).append({"iteration": 1, "loss": 1.0, "sup": 0.5, "unsup": 0.5, "beta": 0.0, "alpha": 0.95})
    other = Trainer(_config(), data, run, dist_info=DistInfo(rank=1, world_size=1))
    assert other.on_train_end().curve is None and not (run / "loss.png").exists()
    main = Trainer(_config(), data, run)
    assert main.on_train_end().curve == run / "loss.png" and (run / "loss.png").is_file()


def test_a_best_pt_no_validation_of_this_run_wrote_is_not_reported(data, tmp_path):
    """E.g. left by an earlier run killed before its first checkpoint: the folder has a
    ``best.pt`` but this run has validated nothing."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"an earlier run's weights")
    result = Trainer(_config(), data, run).on_train_end()
    assert result.best is None and result.validation["best_iteration"] is None


def test_guidance_from_any_embeddings_object_is_float32_vectors_with_its_reason():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(1, 512))                                   # float64, one row
    visual = {v.name: rng.normal(size=(512, 1)) for v in VIEWS}        # float64, one column
    bare = Guidance.from_embeddings(SimpleNamespace(text=text, visual=visual))  # no enabled, no reason: on
    assert bare is not None and bare.reason == ""
    assert bare.text.dtype == torch.float32 and bare.text.shape == (512,)
    assert torch.equal(bare.text, torch.from_numpy(text.reshape(-1)).float())
    assert set(bare.visual) == {v.name for v in VIEWS}
    for v in VIEWS:
        assert bare.visual[v.name].dtype == torch.float32 and bare.visual[v.name].shape == (512,)
        assert torch.equal(bare.visual[v.name], torch.from_numpy(visual[v.name].reshape(-1)).float())
    given = Guidance.from_embeddings(SimpleNamespace(text=text, visual=visual, enabled=True, reason="made in a test"))
    assert given.reason == "made in a test"
    assert Guidance.from_embeddings(SimpleNamespace(text=text, visual=visual, reason=None)).reason == ""
    assert Guidance.from_embeddings(SimpleNamespace(text=text, visual=visual, enabled=False)) is None
    assert Guidance.from_embeddings(None) is None
    entry = given.as_dict()  # what the checkpoint's "guidance" holds
    assert set(entry) == {"enabled", "text", "visual", "reason"}
    assert entry["enabled"] is True and entry["reason"] == "made in a test" and entry["text"] is given.text
    assert entry["visual"] is not given.visual and entry["visual"].keys() == given.visual.keys()
    assert all(entry["visual"][k] is t for k, t in given.visual.items())

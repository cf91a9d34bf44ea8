"""TrainConfig.validate at the edge of every range: the last valid value passes, the first
invalid one is a one-line InputError that names the setting.

Each range is METHOD.md's (or the obvious physical one: a batch of at least one patch, a
momentum below 1); the boundaries matter because ``validate`` runs before any expensive
step of every entry point (CLI, Python, service, RADATrainer).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from rada.errors import InputError
from rada.nets.head import HeadConfig
from rada.nets.triview import ModelConfig
from rada.nets.vnet import VNetConfig
from rada.train.schedules import ScheduleConfig
from rada.train.trainer import TrainConfig

BASE = TrainConfig()


def _schedule(**change) -> TrainConfig:
    return replace(BASE, schedule=replace(BASE.schedule, **change))


def _model(width: int = 16, embedding_dim: int = 1024, encoder_blocks=(1, 2, 3, 3, 3),
           decoder_blocks=(3, 3, 2, 1)) -> TrainConfig:
    backbone = VNetConfig(width=width, encoder_blocks=encoder_blocks, decoder_blocks=decoder_blocks)
    return replace(BASE, model=ModelConfig(backbone, HeadConfig(embedding_dim=embedding_dim)))


VALID = {
    "one iteration": _schedule(iterations=1),
    "tiny lr": _schedule(base_lr=1e-9),
    "gamma 1 (no decay)": _schedule(lr_gamma=1.0),
    "milestone at 1": _schedule(lr_milestones=(1,)),
    "no milestones": _schedule(lr_milestones=()),
    "alpha_start 1": _schedule(alpha_start=1.0),
    "steps of 1": _schedule(alpha_refresh=1, alpha_step=1, alpha_steps=1, beta_step=1, beta_steps=1),
    "beta_max 0": _schedule(beta_max=0.0),
    "beta_max 0.5": _schedule(beta_max=0.5),
    "labeled_batch 1": replace(BASE, labeled_batch=1),
    "no unlabeled stream": replace(BASE, unlabeled_batch=0),
    "one teacher pass": replace(BASE, teacher_passes=1),
    "no noise": replace(BASE, noise_std=0.0, noise_clip=0.0),
    "paper loss": replace(BASE, loss_form="paper"),
    "momentum 0": replace(BASE, momentum=0.0),
    "momentum 0.999": replace(BASE, momentum=0.999),
    "no weight decay": replace(BASE, weight_decay=0.0),
    "checkpoint every iteration": replace(BASE, checkpoint_every=1),
    "never validate": replace(BASE, validate_every=0),
    "width 1": _model(width=1),
    "guidance off": _model(embedding_dim=0),
    "cpu": replace(BASE, device="cpu"),
    "cuda": replace(BASE, device="cuda"),
    "cuda:1": replace(BASE, device="cuda:1"),
    "smallest patch": replace(BASE, patch_size=(16, 16, 16)),
    "mixed patch": replace(BASE, patch_size=(16, 48, 32)),
    "three-stage net, patch of 4s": replace(_model(encoder_blocks=(1, 2, 3), decoder_blocks=(2, 1)),
                                           patch_size=(4, 8, 12)),
}

INVALID = {
    "zero iterations": (_schedule(iterations=0), "^iterations must be at least 1"),
    "lr 0": (_schedule(base_lr=0.0), "^base_lr must be positive"),
    "gamma 0": (_schedule(lr_gamma=0.0), "^lr_gamma must be in"),
    "gamma above 1": (_schedule(lr_gamma=1.01), "^lr_gamma must be in"),
    "milestone 0": (_schedule(lr_milestones=(5, 0)), "^lr_milestones must be positive"),
    "alpha_start 0": (_schedule(alpha_start=0.0), "^alpha_start must be in"),
    "alpha_start above 1": (_schedule(alpha_start=1.01), "^alpha_start must be in"),
    "alpha_refresh 0": (_schedule(alpha_refresh=0), "^alpha/beta steps must be at least 1"),
    "alpha_step 0": (_schedule(alpha_step=0), "^alpha/beta steps must be at least 1"),
    "alpha_steps 0": (_schedule(alpha_steps=0), "^alpha/beta steps must be at least 1"),
    "beta_step 0": (_schedule(beta_step=0), "^alpha/beta steps must be at least 1"),
    "beta_steps 0": (_schedule(beta_steps=0), "^alpha/beta steps must be at least 1"),
    "beta_max negative": (_schedule(beta_max=-0.01), "^beta_max must be in"),
    "beta_max above 0.5": (_schedule(beta_max=0.51), "^beta_max must be in"),
    "labeled_batch 0": (replace(BASE, labeled_batch=0), "^labeled_batch must be at least 1"),
    "unlabeled_batch -1": (replace(BASE, unlabeled_batch=-1), "^unlabeled_batch must be at least 0"),
    "teacher_passes 0": (replace(BASE, teacher_passes=0), "^teacher_passes must be at least 1"),
    "negative noise_std": (replace(BASE, noise_std=-0.1), "^noise_std and noise_clip must be at least 0"),
    "negative noise_clip": (replace(BASE, noise_clip=-0.1), "^noise_std and noise_clip must be at least 0"),
    "unknown loss": (replace(BASE, loss_form="SGTC"), "^loss_form must be sgtc or paper"),
    "negative momentum": (replace(BASE, momentum=-0.1), r"^momentum must be in \[0, 1\)"),
    "momentum 1": (replace(BASE, momentum=1.0), r"^momentum must be in \[0, 1\)"),
    "negative weight decay": (replace(BASE, weight_decay=-1e-6), "^weight_decay must be at least 0"),
    "checkpoint_every 0": (replace(BASE, checkpoint_every=0), "^checkpoint_every must be at least 1"),
    "validate_every -1": (replace(BASE, validate_every=-1), "^validate_every must be at least 0"),
    "width 0": (_model(width=0), "^width must be at least 1"),
    "embedding 512": (_model(embedding_dim=512), "^embedding_dim must be 1024"),
    "gpu": (replace(BASE, device="gpu"), "^device must be auto, cpu, cuda or cuda:N"),
    "two sizes": (replace(BASE, patch_size=(16, 16)), "three multiples of 16"),
    "four sizes": (replace(BASE, patch_size=(16, 16, 16, 16)), "three multiples of 16"),
    "zero size": (replace(BASE, patch_size=(0, 16, 16)), "three multiples of 16"),
    "size 8": (replace(BASE, patch_size=(16, 8, 16)), "three multiples of 16"),
    "size 24": (replace(BASE, patch_size=(16, 16, 24)), "three multiples of 16"),
    "three-stage net, size 6": (replace(_model(encoder_blocks=(1, 2, 3), decoder_blocks=(2, 1)),
                                        patch_size=(4, 8, 6)), "three multiples of 4"),
}


@pytest.mark.parametrize("name", list(VALID))
def test_the_edge_of_every_range_is_valid(name):
    assert VALID[name].validate() is VALID[name]


@pytest.mark.parametrize("name", list(INVALID))
def test_one_step_past_the_edge_is_a_one_line_error_naming_the_setting(name):
    # the message starts with the setting's name (anchored: nothing in front of it)
    config, message = INVALID[name]
    with pytest.raises(InputError, match=message) as info:
        config.validate()
    assert "\n" not in str(info.value)


def test_the_patch_error_says_how_often_the_net_halves():
    with pytest.raises(InputError, match=r"patch_size \[16, 16, 24\] .* halves the size 4 times"):
        replace(BASE, patch_size=(16, 16, 24)).validate()
    three = replace(_model(encoder_blocks=(1, 2, 3), decoder_blocks=(2, 1)), patch_size=(4, 8, 6))
    with pytest.raises(InputError, match="halves the size 2 times"):
        three.validate()


def test_the_errors_quote_the_bad_value():
    for config, shown in ((_schedule(iterations=-3), "got -3"), (replace(BASE, momentum=1.5), "got 1.5"),
                          (replace(BASE, device="tpu"), "got 'tpu'"), (_model(width=0), "got 0"),
                          (_model(embedding_dim=7), "got 7"), (_schedule(beta_max=0.75), "got 0.75")):
        with pytest.raises(InputError, match=shown):
            config.validate()


def test_a_schedule_from_scaled_is_valid_for_any_length():
    for n in (1, 7, 100, 6000, 20000):
        replace(BASE, schedule=ScheduleConfig().scaled(n)).validate()

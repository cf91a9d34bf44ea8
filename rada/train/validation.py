"""Validation during training: Dice and HD95 of the model on held-out cases.

The model (mean of the three views' softmaxes, sliding window with the training patch)
segments every validation case; the scores are averaged. HD95 is in voxels, as the papers
report it; an empty prediction has no HD95 and is counted in ``empty`` instead of being
scored. Validation runs in eval mode without gradients and draws no random numbers, so a
resumed run stays exactly the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from rada.infer import InferenceConfig, predict_probability
from rada.metrics import evaluate
from rada.nets.triview import TriViewModel


@dataclass
class ValidationCase:
    """A held-out case: z-scored image and dense reference, both ``[z, y, x]``.

    Attributes:
        id: the case id in the dataset.
        image: float32 z-scored image ``[z, y, x]``.
        label: binary reference ``[z, y, x]``.
    """

    id: str
    image: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class ValidationScores:
    """Mean Dice over the cases, mean HD95 (voxels) over the non-empty predictions.

    Attributes:
        dice: mean Dice over all cases (an empty prediction scores 0).
        hd95: mean 95th-percentile Hausdorff distance in voxels over the non-empty
            predictions; None when every prediction is empty.
        empty: number of cases whose prediction is empty.
        per_case: case id -> Dice.
    """

    dice: float
    hd95: float | None
    empty: int
    per_case: dict[str, float]

    def as_dict(self) -> dict:
        """The scores as a JSON-serialisable dict.

        Returns:
            ``{"dice", "hd95", "empty", "per_case"}``.
        """
        return {"dice": self.dice, "hd95": self.hd95, "empty": self.empty, "per_case": dict(self.per_case)}


@torch.no_grad()
def validate(model: TriViewModel, cases: Sequence[ValidationCase], patch: Sequence[int],
             batch_size: int = 4, bf16: bool = False) -> ValidationScores:
    """Scores of ``model`` on ``cases``; the model's train/eval mode is restored afterwards.

    Args:
        model: the tri-view model (on its device).
        cases: validation cases (at least one).
        patch: sliding-window patch ``[z, y, x]`` (the training patch).
        batch_size: windows per forward.
        bf16: bf16 autocast (CUDA only).

    Returns:
        :class:`ValidationScores`.
    """

    if not cases:
        raise ValueError("validation needs at least one case")
    was_training = model.training
    model.eval()
    config = InferenceConfig(patch_size=tuple(int(p) for p in patch), batch_size=batch_size, bf16=bf16)
    dices, hds, per_case, empty = [], [], {}, 0
    try:
        for case in cases:
            prob = predict_probability(model, case.image, config)
            scores = evaluate(prob >= 0.5, np.asarray(case.label) > 0)
            dices.append(scores.dice)
            per_case[case.id] = scores.dice
            if scores.hd95 is None:
                empty += 1
            else:
                hds.append(scores.hd95)
    finally:
        model.train(was_training)
    return ValidationScores(float(np.mean(dices)), float(np.mean(hds)) if hds else None, empty, per_case)


__all__ = ["ValidationCase", "ValidationScores", "validate"]

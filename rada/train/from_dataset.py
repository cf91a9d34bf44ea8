"""Training from a dataset folder: everything between ``dataset.json`` and :class:`Trainer`.

The order matters for the user: every setting, the dataset's files, the run folder and
the guidance are checked first (cheap, one-line errors), then the expensive steps run:
pseudo-labels propagated once per labeled case (cached in ``run_dir/pseudo_labels``), the
images loaded, and the facts inference needs (dataset, organ, prompt, spacing, protocol)
recorded in the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from rada.dataset import DatasetSpec, read_dataset
from rada.errors import InputError
from rada.checkpoint import load_checkpoint
from rada.train.data import load_training_data
from rada.device import select_device
from rada.train.distributed import barrier, init_distributed
from rada.train.guidance_choice import choose_guidance, with_guidance
from rada.train.trainer import CHECKPOINT_NAME, TrainConfig, Trainer, TrainResult

SPACING_SAMPLE = 20  # headers read for the median spacing: enough for a robust median, fast on big datasets


def train_dataset(dataset: str | os.PathLike, run_dir: str | os.PathLike, config: TrainConfig = TrainConfig(),
                  guidance: Any = "auto", resume: bool = False, propagation_config: Any = None,
                  callback: Callable[[int, dict], None] | None = None,
                  progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train on a ``dataset.json`` folder (the train split; its ``val`` cases with a dense label
    are the validation cases).

    Every setting, the dataset's files, the run folder and the guidance are checked before
    the expensive steps: pseudo-labels are then propagated once per labeled case and cached
    in ``run_dir/pseudo_labels`` (under torchrun, rank 0 fills the cache first).

    Args:
        dataset: the dataset folder or its ``dataset.json``.
        run_dir: the run folder.
        config: the run's settings (validated first); its guidance input follows the guidance chosen.
        guidance: ``"auto"`` (the resumed run's, the dataset's ``guidance_embeddings.npz``, or
            computed if the encoder weights are installed, else off with the reason), None
            (off), a file, or embeddings.
        resume: continue ``run_dir/checkpoint.pt``.
        propagation_config: :class:`rada.propagation.PropagationConfig` for the pseudo-labels.
        callback: ``callback(iteration, values)`` after every iteration (may raise to stop).
        progress: one-line messages about the preparation steps.

    Returns:
        :class:`TrainResult` (its ``guidance`` says whether guidance was used and why).

    Raises:
        InputError: a bad setting, dataset, guidance, or a run folder that cannot be used
            (an existing run without ``resume``, or a resumed run with another network).
    """
    config.validate()
    spec = read_dataset(dataset)
    run_dir = Path(run_dir)
    device = select_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    state = resume_state(run_dir, resume)
    choice = choose_guidance(guidance, config.model.head.guided, spec.root, run_dir, state, str(device), progress)
    config = with_guidance(config, choice)
    if state is not None and state["model_config"] != config.model.as_dict():
        raise InputError(f"{run_dir / CHECKPOINT_NAME} was trained with another network configuration")
    info = init_distributed(device)
    cache = run_dir / "pseudo_labels"
    if info.enabled and not info.main:
        barrier(info)  # wait for rank 0 to fill the cache
    if progress:
        progress("propagating pseudo-labels (cached) and loading the dataset")
    data = load_training_data(spec, cache, propagation_config,
                              progress=(lambda case: progress(f"loading {case}")) if progress else None)
    if info.enabled and info.main:
        barrier(info)
    return Trainer(config, data, run_dir, choice.embeddings, preprocessing_facts(spec), info,
                   guidance_reason=choice.reason).fit(resume, callback)


def resume_state(run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint a run resumes from; refuses to overwrite a run.

    Args:
        run_dir: the run folder.
        resume: whether the caller asked to continue an existing run.

    Returns:
        The checkpoint's state, or None for a new run (no checkpoint yet).

    Raises:
        InputError: a checkpoint exists and ``resume`` is False, or it cannot be read.
    """
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        return None
    if not resume:
        raise InputError(f"{path} exists: pass --resume to continue it or use another run folder")
    return load_checkpoint(path)


def preprocessing_facts(spec: DatasetSpec) -> dict[str, Any]:
    """What inference must know about the data a model was trained on (stored in the checkpoint).

    Args:
        spec: the dataset.

    Returns:
        ``dataset``, ``organ``, ``prompt``, ``spacing`` (the protocol's, else the median of the
        train cases' headers, None when none can be read) and the ``protocol`` as JSON.
    """
    protocol = spec.protocol
    spacing = list(protocol.spacing) if protocol.spacing else median_spacing(spec)
    return {"dataset": spec.name, "organ": spec.organ, "prompt": spec.prompt, "spacing": spacing,
            "protocol": protocol.as_json()}


def median_spacing(spec: DatasetSpec) -> list[float] | None:
    """Median voxel spacing of the first :data:`SPACING_SAMPLE` train images (headers only).

    Args:
        spec: the dataset.

    Returns:
        ``[x, y, z]`` spacing in mm (SimpleITK order), or None when no header can be read.
    """
    spacings = []
    for c in spec.split("train")[:SPACING_SAMPLE]:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(spec.path(c.image)))
            reader.ReadImageInformation()
            spacings.append(reader.GetSpacing())
        except RuntimeError:  # an unreadable header only leaves this case out of the median
            continue
    return np.median(np.asarray(spacings), axis=0).tolist() if spacings else None


__all__ = ["train_dataset", "resume_state", "preprocessing_facts", "median_spacing"]

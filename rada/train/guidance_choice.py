"""Which guidance a training run uses, decided once, before any expensive step.

``guidance="auto"`` (the default of every entry point): the embeddings a resumed run was
trained with; else the dataset's ``guidance_embeddings.npz`` (``rada embed``); else they
are computed now if the encoder weights are installed; else the plain tri-view model is
trained and the reason is recorded in the checkpoint and shown. A model config with
guidance switched off always trains without it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from rada.errors import InputError
from rada.guidance import DEFAULT_FILENAME, embed_dataset, load_embeddings

AUTO = "auto"
OFF = "off"


@dataclasses.dataclass(frozen=True)
class GuidanceChoice:
    """The embeddings to train with (None: guidance off) and why.

    Attributes:
        embeddings: ``rada.guidance.GuidanceEmbeddings`` (or alike), None for guidance off.
        reason: one line for the user and the checkpoint.
    """

    embeddings: Any | None
    reason: str

    @property
    def enabled(self) -> bool:
        """Whether the run trains with guidance."""
        return self.embeddings is not None

    def summary(self) -> dict[str, Any]:
        """The choice for reports and the service.

        Returns:
            ``{"enabled": bool, "reason": str}``.
        """
        return {"enabled": self.enabled, "reason": self.reason}


def _enabled(emb: Any) -> bool:
    return emb is not None and bool(getattr(emb, "enabled", True))


def from_checkpoint(state: dict) -> GuidanceChoice:
    """The guidance a checkpoint was trained with.

    Args:
        state: a loaded checkpoint.

    Returns:
        :class:`GuidanceChoice` with the checkpoint's embeddings, or off with its reason.
    """
    g = state.get("guidance") or {"enabled": False}
    if g.get("enabled"):
        return GuidanceChoice(SimpleNamespace(enabled=True, text=g["text"], visual=g["visual"]),
                              g.get("reason") or "the resumed run's embeddings")
    return GuidanceChoice(None, g.get("reason") or "the resumed run was trained without guidance")


def choose_guidance(guidance: Any, guided_config: bool, dataset_root: Path | None = None,
                    run_dir: Path | None = None, resume_state: dict | None = None, device: str = "cpu",
                    progress: Callable[[str], None] | None = None) -> GuidanceChoice:
    """Decide the guidance of a run.

    Args:
        guidance: ``"auto"``, ``"off"`` or None (off), a path to an embeddings file, or embeddings
            (``rada.guidance.GuidanceEmbeddings`` or anything with ``enabled``/``text``/``visual``).
        guided_config: whether the model config asks for guidance.
        dataset_root: the dataset folder (``auto`` looks for its embeddings and computes them there).
        run_dir: where computed embeddings are written (``run_dir/guidance_embeddings.npz``).
        resume_state: the checkpoint being resumed, whose guidance wins in ``auto``.
        device: device for computing embeddings.
        progress: one-line progress messages.

    Returns:
        :class:`GuidanceChoice`.

    Raises:
        InputError: explicit embeddings with a guidance-off model config, or an unreadable file.
    """
    if guidance is None:
        return GuidanceChoice(None, "guidance off: no guidance embeddings given")
    if isinstance(guidance, str) and guidance == OFF:
        return GuidanceChoice(None, "guidance off: switched off for this run")
    if not guided_config:
        if guidance != AUTO and _enabled(guidance if not isinstance(guidance, (str, os.PathLike)) else None):
            raise InputError("guidance embeddings given but the model config has guidance off")
        return GuidanceChoice(None, "guidance off: switched off in the model config")
    if isinstance(guidance, (str, os.PathLike)) and guidance != AUTO:
        guidance = load_embeddings(guidance)
    if guidance != AUTO:
        if _enabled(guidance):
            return GuidanceChoice(guidance, getattr(guidance, "reason", "") or "embeddings given")
        return GuidanceChoice(None, getattr(guidance, "reason", "") or "guidance off: the embeddings are off")
    if resume_state is not None:
        return from_checkpoint(resume_state)
    if dataset_root is not None and (dataset_root / DEFAULT_FILENAME).is_file():
        emb = load_embeddings(dataset_root / DEFAULT_FILENAME)
        if emb.enabled:
            return GuidanceChoice(emb, f"the dataset's {DEFAULT_FILENAME} ({emb.reason})")
        return GuidanceChoice(None, emb.reason or f"guidance off: the dataset's {DEFAULT_FILENAME} says so")
    if dataset_root is None:
        return GuidanceChoice(None, "guidance off: no guidance embeddings given")
    if progress:
        progress("computing the guidance embeddings (frozen encoder, once)")
    out = (run_dir or dataset_root) / DEFAULT_FILENAME
    emb, _ = embed_dataset(dataset_root, out, device=device if device != "auto" else "cpu", allow_off=True)
    if emb.enabled:
        return GuidanceChoice(emb, f"computed for this run ({emb.reason})")
    return GuidanceChoice(None, emb.reason)


def with_guidance(config: Any, choice: GuidanceChoice) -> Any:
    """``config`` with the model's guidance input matching ``choice``.

    Args:
        config: a :class:`rada.train.TrainConfig`.
        choice: the run's guidance.

    Returns:
        ``config`` itself when it already matches, else a copy whose head's
        ``embedding_dim`` is 1024 (guidance on) or 0 (off).
    """
    head = config.model.head
    dim = head.embedding_dim if choice.enabled and head.embedding_dim else (1024 if choice.enabled else 0)
    if dim == head.embedding_dim:
        return config
    model = dataclasses.replace(config.model, head=dataclasses.replace(head, embedding_dim=dim))
    return dataclasses.replace(config, model=model)


__all__ = ["AUTO", "OFF", "GuidanceChoice", "choose_guidance", "with_guidance", "from_checkpoint"]

"""Guidance embeddings: the frozen dual encoder's outputs, computed once and cached.

The encoders are frozen, so their outputs are constants (METHOD.md section 3): one text
embedding for the prompt and, per view, one visual embedding = the mean over the labeled
volumes' annotated slices of that view (image + mask). ``rada embed`` computes them once and
writes a small ``.npz`` next to the dataset; training and the pipeline read it with
:func:`load_embeddings` and never run CLIP per iteration.

Without weights the guidance is OFF, explicitly: :class:`GuidanceEmbeddings` with
``enabled=False`` and a ``reason``. Random features are never produced in their place.

Per-slice embeddings are L2-normalised, averaged per view and re-normalised; the text
embedding is L2-normalised (all four vectors are unit length).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from rada import __version__
from rada.annotation import SparseAnnotation, take_slice
from rada.dataset import default_prompt, load_annotation, read_dataset
from rada.device import select_device
from rada.errors import InputError
from rada.guidance.alpha_clip import AlphaCLIP, build_alpha_clip
from rada.guidance.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    MASK_MEAN,
    MASK_STD,
    PERCENTILES,
    preprocess_pair,
)
from rada.guidance.weights import DEFAULT_VARIANT, ResolvedWeights, resolve
from rada.io import read_volume
from rada.safe_write import atomic_path
from rada.views import AXIS_OF, VIEW_NAMES
from rada.volume import Volume

DEFAULT_FILENAME = "guidance_embeddings.npz"
FORMAT = 1

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class GuidanceEmbeddings:
    """Text ``[512]`` and per-view visual ``[512]`` embeddings, or an explicit "guidance off".

    Attributes:
        enabled: False for "guidance off", which carries no vectors (``text is None``,
            ``visual == {}``).
        text: the prompt's unit-length text embedding.
        visual: view name -> unit-length mean visual embedding of that view's annotated slices.
        organ: the structure's name.
        prompt: the text prompt.
        reason: why the guidance is on or off (repeated in every output).
        source: how the vectors were made: encoder variant, weights' sha256, versions, slices
            used, preprocessing.

    Raises:
        ValueError: enabled without a text and one visual embedding per view, sizes that differ,
            or disabled with vectors.
    """

    enabled: bool
    text: Tensor | None = None
    visual: dict[str, Tensor] = field(default_factory=dict)
    organ: str = ""
    prompt: str = ""
    reason: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.enabled:
            if self.text is None or set(self.visual) != set(VIEW_NAMES):
                raise ValueError(f"enabled guidance needs a text and one visual embedding per view {VIEW_NAMES}")
            dims = {int(self.text.numel())} | {int(v.numel()) for v in self.visual.values()}
            if len(dims) != 1:
                raise ValueError(f"embedding sizes differ: {sorted(dims)}")
        elif self.text is not None or self.visual:
            raise ValueError("disabled guidance carries no vectors")

    @classmethod
    def off(cls, reason: str, organ: str = "", prompt: str = "", **source: Any) -> GuidanceEmbeddings:
        """Guidance off, with the reason every output will repeat.

        Args:
            reason: why the guidance is off.
            organ: the structure's name.
            prompt: the text prompt.
            **source: recorded in ``source`` (e.g. ``variant``).

        Returns:
            The disabled :class:`GuidanceEmbeddings`.
        """
        return cls(False, None, {}, organ, prompt, reason, dict(source))

    @property
    def dim(self) -> int:
        """Length of the embeddings (0 when the guidance is off)."""
        return int(self.text.numel()) if self.text is not None else 0

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (no vectors) for reports.

        Returns:
            ``enabled``, ``reason``, ``organ``, ``prompt``, ``dim`` and, when recorded, ``source``.
        """
        return {"enabled": self.enabled, "reason": self.reason, "organ": self.organ, "prompt": self.prompt,
                "dim": self.dim, **({"source": self.source} if self.source else {})}


# --- computing ----------------------------------------------------------------------------

def _slices(pairs: Iterable[tuple[Volume, SparseAnnotation]], percentiles: Sequence[float]
            ) -> tuple[dict[str, list[tuple[Tensor, Tensor]]], list[dict[str, list[int]]]]:
    """Preprocessed (image, region_mask) of every annotated slice, per view; the slice indices per case."""
    out: dict[str, list[tuple[Tensor, Tensor]]] = {v: [] for v in VIEW_NAMES}
    used: list[dict[str, list[int]]] = []
    for n, (image, annotation) in enumerate(pairs):
        if annotation is None:
            raise InputError(f"volume {n} has no annotation: only labeled volumes give visual embeddings")
        mismatch = image.grid_mismatch(annotation.labels)
        if mismatch:
            raise InputError(f"volume {n}: annotation geometry differs from the image: {mismatch}")
        case: dict[str, list[int]] = {}
        for view in VIEW_NAMES:
            axis = AXIS_OF[view]
            case[view] = annotation.annotated_slices(axis)
            for idx in case[view]:
                out[view].append(preprocess_pair(take_slice(image.array, axis, idx),
                                                 annotation.slice_mask(axis, idx), IMAGE_SIZE, percentiles))
        used.append(case)
    if not used:
        raise InputError("no labeled volume given: visual embeddings need annotated slices")
    for view in VIEW_NAMES:
        if not out[view]:
            raise InputError(f"no annotated {view} slice in any labeled volume")
    return out, used


def _versions() -> dict[str, str]:
    import open_clip


    return {"rada": __version__, "open_clip": open_clip.__version__, "torch": torch.__version__}


def compute_embeddings(images: Iterable[Volume], annotations: Iterable[SparseAnnotation], organ: str,
                       weights: ResolvedWeights | Any | None = None, *, prompt: str | None = None,
                       variant: str = DEFAULT_VARIANT, device: str = "cpu", batch_size: int = 8,
                       percentiles: Sequence[float] = PERCENTILES, case_ids: Sequence[str] | None = None,
                       progress: Progress | None = None) -> GuidanceEmbeddings:
    """Text and per-view visual embeddings of labeled volumes.

    Each annotated slice is encoded with its mask; a view's embedding is the l2-normalised mean
    of its slices' l2-normalised embeddings.

    Args:
        images: the volumes; may be a lazy iterable (one volume in memory at a time).
        annotations: their sparse annotations, one per image, on the image grid.
        organ: the structure's name (for the default prompt).
        weights: None (the cached files of ``variant``), a :class:`ResolvedWeights`, or an
            already built :class:`~rada.guidance.alpha_clip.AlphaCLIP` (tests; no file hashes
            recorded).
        prompt: the text prompt (default: :func:`default_prompt` of ``organ``).
        variant: encoder variant in the weights cache.
        device: ``cpu``, ``auto``, ``cuda`` or ``cuda:N``.
        batch_size: slices per forward pass.
        percentiles: intensity clip percentiles of each slice.
        case_ids: recorded in ``source``.
        progress: called as ``progress(fraction, message)``.

    Returns:
        The enabled embeddings, or guidance OFF with the reason when open_clip_torch is not
        installed or (``weights=None``) a weights file is missing or corrupt.

    Raises:
        InputError: no organ name, a volume without annotation or with another geometry, or no
            annotated slice of some view.
        TypeError: ``weights`` of another type.
    """
    if not organ:
        raise InputError("the organ (structure) name is needed for the text prompt")
    prompt = prompt or default_prompt(organ)
    progress = progress or (lambda fraction, message: None)
    source: dict[str, Any] = {"variant": variant}
    try:
        import open_clip  # noqa: F401  (only checking that it is installed)
    except ImportError:
        return GuidanceEmbeddings.off("guidance off: open_clip_torch is not installed (pip install "
                                      "'rada[guidance]')", organ, prompt, variant=variant)
    if weights is None:
        try:
            weights = resolve(variant)
        except InputError as exc:
            return GuidanceEmbeddings.off(f"guidance off: {exc}", organ, prompt, variant=variant)
    progress(0.0, "preprocessing the annotated slices")
    per_view, used = _slices(zip(images, annotations, strict=True), percentiles)
    dev = select_device(device)
    if isinstance(weights, AlphaCLIP):
        model = weights
        source.update(variant="in-memory model", sha256={})
    elif isinstance(weights, ResolvedWeights):
        progress(0.05, f"loading {weights.variant}")
        model = build_alpha_clip(weights.openai, weights.visual)
        source.update(variant=weights.variant, sha256=dict(weights.sha256))
    else:
        raise TypeError(f"weights must be None, ResolvedWeights or AlphaCLIP, not {type(weights).__name__}")
    model = model.to(dev).eval()
    total = sum(len(v) for v in per_view.values())
    done = 0
    visual: dict[str, Tensor] = {}
    with torch.inference_mode():
        text = model.encode_text(model.tokenize(prompt).to(dev), normalize=True)[0].float().cpu()
        for view in VIEW_NAMES:
            feats = []
            items = per_view[view]
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                image = torch.stack([c[0] for c in chunk]).to(dev)
                region_mask = torch.stack([c[1] for c in chunk]).to(dev)
                feats.append(model.encode_image(image, region_mask, normalize=True).float().cpu())
                done += len(chunk)
                progress(0.1 + 0.9 * done / total, f"{view}: {done}/{total} slices")
            mean = torch.cat(feats).mean(0)
            visual[view] = mean / mean.norm().clamp_min(1e-12)
    source.update(versions=_versions(), device=str(dev),
                  slices={v: len(per_view[v]) for v in VIEW_NAMES}, cases=len(used),
                  case_ids=list(case_ids) if case_ids is not None else None, annotated_slices=used,
                  preprocessing={"size": IMAGE_SIZE, "percentiles": list(percentiles), "clip_mean": list(CLIP_MEAN),
                                 "clip_std": list(CLIP_STD), "alpha_mean": MASK_MEAN, "alpha_std": MASK_STD},
                  pooling="l2-normalise each slice, mean per view, l2-normalise",
                  created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    progress(1.0, "done")
    return GuidanceEmbeddings(True, text, visual, organ, prompt,
                              f"{source['variant']} on {len(used)} labeled volumes", source)


# --- the cache file -------------------------------------------------------------------------

def save_embeddings(emb: GuidanceEmbeddings, path: str | os.PathLike) -> Path:
    """Write the embeddings (or the "off" record) to an ``.npz`` atomically (no pickle).

    Args:
        emb: the embeddings.
        path: the target file.

    Returns:
        ``path`` as a Path.
    """
    target = Path(path)
    meta = {"format": FORMAT, "enabled": emb.enabled, "organ": emb.organ, "prompt": emb.prompt,
            "reason": emb.reason, "source": emb.source}
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, default=str))}
    if emb.enabled:
        arrays["text"] = emb.text.detach().float().cpu().numpy()
        for view in VIEW_NAMES:
            arrays[f"visual_{view}"] = emb.visual[view].detach().float().cpu().numpy()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return target


def load_embeddings(path: str | os.PathLike) -> GuidanceEmbeddings:
    """Read a file written by :func:`save_embeddings` (``rada embed``).

    Args:
        path: the file, or a dataset folder (its ``guidance_embeddings.npz``).

    Returns:
        The embeddings, or the "off" record with its reason.

    Raises:
        InputError: missing, unreadable, or not an embeddings file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / DEFAULT_FILENAME
    if not p.is_file():
        raise InputError(f"no guidance embeddings at {p}: run `rada embed` first")
    try:
        with np.load(p, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: np.array(data[k]) for k in data.files if k != "meta"}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{p} is not a guidance embeddings file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{p} has format {meta.get('format')}; this rada reads format {FORMAT}: run `rada embed` again")
    if not meta["enabled"]:
        return GuidanceEmbeddings.off(meta.get("reason", ""), meta.get("organ", ""), meta.get("prompt", ""),
                                      **meta.get("source", {}))
    try:
        text = torch.from_numpy(arrays["text"])
        visual = {v: torch.from_numpy(arrays[f"visual_{v}"]) for v in VIEW_NAMES}
        return GuidanceEmbeddings(True, text, visual, meta.get("organ", ""), meta.get("prompt", ""),
                                  meta.get("reason", ""), meta.get("source", {}))
    except (KeyError, ValueError) as exc:
        raise InputError(f"{p} is incomplete or inconsistent ({exc})") from None


# --- a dataset ------------------------------------------------------------------------------

def embed_dataset(dataset: str | os.PathLike, out: str | os.PathLike | None = None,
                  weights: ResolvedWeights | Any | None = None, *, variant: str = DEFAULT_VARIANT,
                  prompt: str | None = None, device: str = "cpu", batch_size: int = 8,
                  split: str = "train", allow_off: bool = True,
                  progress: Progress | None = None) -> tuple[GuidanceEmbeddings, Path]:
    """Embeddings of a ``dataset.json`` folder's labeled cases, written to ``out``.

    Organ and prompt come from the dataset (``prompt`` overrides the dataset's).

    Args:
        dataset: the dataset folder or its ``dataset.json``.
        out: the ``.npz`` to write (default: ``<dataset>/guidance_embeddings.npz``).
        weights: see :func:`compute_embeddings`.
        variant: encoder variant in the weights cache.
        prompt: text prompt overriding the dataset's.
        device: ``cpu``, ``auto``, ``cuda`` or ``cuda:N``.
        batch_size: slices per forward pass.
        split: the split whose labeled cases are embedded.
        allow_off: without weights, write the guidance-off record (True) or raise (False).
        progress: called as ``progress(fraction, message)``.

    Returns:
        ``(embeddings, path written)``.

    Raises:
        InputError: the dataset is invalid or has no labeled case in ``split``, bad annotations
            (see :func:`compute_embeddings`), or the guidance is off and ``allow_off`` is False
            (nothing is written then).
    """
    spec = read_dataset(dataset)
    cases = spec.labeled(split)
    if not cases:
        raise InputError(f"the dataset has no labeled {split} case")
    prompt = prompt or spec.prompt or None

    def volumes() -> Iterator[Volume]:
        for case in cases:
            yield read_volume(spec.path(case.image))  # percentile scaling makes z-scoring moot

    def annotations() -> Iterator[SparseAnnotation]:
        for case in cases:
            yield load_annotation(spec, case)

    emb = compute_embeddings(volumes(), annotations(), spec.organ, weights, prompt=prompt, variant=variant,
                             device=device, batch_size=batch_size, case_ids=[c.id for c in cases],
                             progress=progress)
    if not emb.enabled and not allow_off:
        raise InputError(emb.reason)
    target = Path(out) if out else spec.root / DEFAULT_FILENAME
    return emb, save_embeddings(emb, target)


__all__ = ["DEFAULT_FILENAME", "GuidanceEmbeddings",
           "compute_embeddings", "save_embeddings", "load_embeddings", "embed_dataset"]

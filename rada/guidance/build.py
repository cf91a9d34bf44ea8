"""One request for guidance embeddings, from a dataset folder or from images (``rada embed``).

:func:`build_embeddings` checks the whole request before any encoder work (encoder variant,
weight files, inputs), computes the embeddings and writes them. Its one-line errors name
the ``rada embed`` options, the way the command reports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rada.errors import InputError
from rada.guidance.embed import GuidanceEmbeddings, compute_embeddings, embed_dataset, save_embeddings
from rada.guidance.weights import DEFAULT_VARIANT, VARIANTS, ResolvedWeights, sha256_file
from rada.io import read_annotation, read_volume

ALLOW_OFF_HINT = "--allow-off writes a guidance-off file instead"


@dataclass(frozen=True)
class EmbedRequest:
    """What to embed and how (the options of ``rada embed``).

    Attributes:
        inputs: one dataset folder (or its ``dataset.json``), or image volumes.
        annotations: sparse annotations, one per image (images mode only).
        organ: the structure's name (images mode; a dataset names its own).
        prompt: the text prompt (default: built from the organ).
        out: the embeddings file (default for a dataset: ``<dataset>/guidance_embeddings.npz``).
        encoder: weights variant in the cache; None: ``DEFAULT_VARIANT``.
        openai: an OpenAI ``ViT-B-16.pt`` instead of the cache.
        visual: an Alpha-CLIP visual checkpoint (needs ``openai``).
        device: ``cpu``, ``auto``, ``cuda`` or ``cuda:N``.
        batch_size: slices per forward pass.
        allow_off: without weights, write a guidance-off file instead of failing.
    """

    inputs: Sequence[str]
    annotations: Sequence[str] | None = None
    organ: str | None = None
    prompt: str | None = None
    out: str | None = None
    encoder: str | None = None          # weights variant in the cache; None: DEFAULT_VARIANT
    openai: str | None = None           # an OpenAI ViT-B-16.pt instead of the cache
    visual: str | None = None           # an Alpha-CLIP visual checkpoint (needs ``openai``)
    device: str = "cpu"
    batch_size: int = 8
    allow_off: bool = False             # without weights, write a guidance-off file


def _weight_files(request: EmbedRequest) -> ResolvedWeights | None:
    """The weight files named by the request, or None (the cache of its encoder)."""
    if not (request.openai or request.visual):
        return None
    if not request.openai:
        raise InputError("--visual needs --openai (the Alpha-CLIP file holds only the visual tower)")
    files = [Path(f) for f in (request.openai, request.visual) if f]
    for f in files:
        if not f.is_file():
            raise InputError(f"no such file: {f}")
    return ResolvedWeights("files", files[0], files[1] if len(files) > 1 else None,
                           {f.name: sha256_file(f) for f in files})


def build_embeddings(request: EmbedRequest, progress: Callable[[float, str], None] | None = None
                     ) -> tuple[GuidanceEmbeddings, Path]:
    """Compute and write the guidance embeddings of a dataset or of annotated images.

    Args:
        request: the inputs and options.
        progress: ``progress(fraction, message)`` while slices are embedded.

    Returns:
        The embeddings and the file they were written to (a dataset's default:
        ``DATASET/guidance_embeddings.npz``).

    Raises:
        InputError: an unknown encoder, a missing file, inputs that do not fit the mode,
            or no weights without ``allow_off``; nothing is written then.
    """
    encoder = request.encoder or DEFAULT_VARIANT
    if encoder not in VARIANTS:
        raise InputError(f"unknown --encoder {encoder!r}; use one of {', '.join(sorted(VARIANTS))}")
    weights = _weight_files(request)
    for given in [*request.inputs, *(request.annotations or [])]:
        if not Path(given).exists():
            raise InputError(f"no such file or folder: {given}")
    first = Path(request.inputs[0])
    out: Path | None = None
    if len(request.inputs) == 1 and (first.is_dir() or first.name == "dataset.json"):
        if request.annotations:
            raise InputError("--annotation is for images; a dataset lists its own annotations")
        try:
            emb, out = embed_dataset(first, request.out, weights, variant=encoder, prompt=request.prompt,
                                     device=request.device, batch_size=request.batch_size,
                                     allow_off=request.allow_off, progress=progress)
        except InputError as exc:
            if str(exc).startswith("guidance off"):
                raise InputError(f"{exc}; {ALLOW_OFF_HINT}") from None
            raise
    else:
        annotations = request.annotations or []
        if len(annotations) != len(request.inputs):
            raise InputError(f"give one --annotation per image ({len(request.inputs)} images, "
                             f"{len(annotations)} annotations)")
        if not request.organ:
            raise InputError("--organ is needed for images (e.g. --organ 'left atrium')")
        if not request.out:
            raise InputError("--out is needed for images")
        emb = compute_embeddings((read_volume(p) for p in request.inputs),
                                 (read_annotation(a) for a in annotations), request.organ, weights,
                                 prompt=request.prompt, variant=encoder, device=request.device,
                                 batch_size=request.batch_size, case_ids=[Path(p).name for p in request.inputs],
                                 progress=progress)
    if not emb.enabled and not request.allow_off:
        raise InputError(f"{emb.reason}; {ALLOW_OFF_HINT}")
    if out is None:
        out = save_embeddings(emb, request.out)
    return emb, out

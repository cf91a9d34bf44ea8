"""Alpha-CLIP ViT-B/16 on open_clip_torch (METHOD.md section 3).

Alpha-CLIP is OpenAI CLIP whose patch embedding gets a second convolution for a 1-channel
region-mask input (the paper's "alpha" channel): ``conv1_alpha = Conv2d(1, width, patch, patch, bias=False)``, zero at
initialisation, its output added to ``visual.conv1(image)`` before the class token and the
positional embedding. With ``conv1_alpha == 0`` the model *is* plain CLIP.

Weights: the official Alpha-CLIP files (``clip_b16_grit1m_fultune_8xe.pth`` and siblings) are
state dicts of the *visual* tower only, applied on top of OpenAI's ``ViT-B-16.pt``; the text
tower stays OpenAI CLIP. They are converted to open_clip's names (``module.`` stripped,
``attn.in_proj.weight/bias`` -> ``attn.in_proj_weight/bias``, LoRA factors merged) and loaded
strictly, on the CPU, in float32.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from rada.errors import InputError
from rada.guidance.preprocess import MASK_FOREGROUND

#: open_clip model name of OpenAI's architecture (QuickGELU!) for building without weights.
OPENAI_B16_CONFIG = "ViT-B-16-quickgelu"
EMBED_DIM = 512


def _require_open_clip():
    try:
        import open_clip
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise InputError("guidance needs open_clip_torch: pip install 'rada[guidance]'") from None
    return open_clip


class AlphaCLIP(nn.Module):
    """An open_clip ``CLIP`` with Alpha-CLIP's ``visual.conv1_alpha``.

    ``encode_image(image, region_mask)`` runs the region-aware visual tower; ``encode_text(tokens)``
    is plain CLIP. Both return unnormalised 512-d embeddings (``normalize=True`` for unit ones).

    Why a forward hook on ``visual.conv1`` and not a subclass of open_clip's
    ``VisionTransformer``: open_clip builds its towers itself (``load_openai_model``,
    ``create_model``) and the place where ``conv1`` is applied is a private method whose
    name and body change between releases (inline in ``forward`` in 2.x, ``_embeds`` in 3.x).
    The hook only relies on ``visual.conv1`` being called once on the image, which every
    release does, adds the region-mask branch's output right there, and keeps the module tree and
    therefore the state-dict names (``visual.conv1_alpha.weight`` sits where Alpha-CLIP's
    own ``conv1_alpha.weight`` does). The region mask is handed to the hook through an attribute
    set for the duration of one ``encode_image`` call: do not share one instance between
    threads (the embeddings are computed once, offline).
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        visual = getattr(clip, "visual", None)
        conv1 = getattr(visual, "conv1", None)
        if not isinstance(conv1, nn.Conv2d):
            raise InputError("Alpha-CLIP needs a ViT CLIP (visual.conv1 patch embedding); got another tower")
        _check_quick_gelu(clip)
        self.clip = clip
        if not hasattr(visual, "conv1_alpha"):
            visual.conv1_alpha = nn.Conv2d(1, conv1.out_channels, kernel_size=conv1.kernel_size,
                                           stride=conv1.stride, bias=False)
            nn.init.zeros_(visual.conv1_alpha.weight)
        self._region_mask: Tensor | None = None
        conv1.register_forward_hook(self._add_region_mask)

    # -- the region-mask branch ------------------------------------------------------------
    def _add_region_mask(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        if self._region_mask is None:
            return output  # called as plain CLIP (clip.encode_image): no region-mask branch at all
        return output + self.clip.visual.conv1_alpha(self._region_mask.to(output.dtype))

    @property
    def conv1_alpha(self) -> nn.Conv2d:
        """The region-mask patch embedding ``Conv2d(1, width, patch, patch)`` (zero: plain CLIP)."""
        return self.clip.visual.conv1_alpha

    @property
    def image_size(self) -> int:
        """Side ``S`` of the square input images, in pixels (224 for ViT-B/16)."""
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def embed_dim(self) -> int:
        """Length of the image and text embeddings (512 for ViT-B/16)."""
        proj = self.clip.visual.proj
        return int(proj.shape[1]) if proj is not None else int(self.clip.visual.output_dim)

    def encode_image(self, image: Tensor, region_mask: Tensor | None = None, normalize: bool = False) -> Tensor:
        """Region-aware image embeddings.

        Args:
            image: CLIP-normalised images ``[B, 3, S, S]``.
            region_mask: normalised region masks ``[B, 1, S, S]`` (``(m - 0.5) / 0.26``); None is
                Alpha-CLIP's "whole image" (+1.923 everywhere).
            normalize: return unit-length embeddings.

        Returns:
            ``[B, embed_dim]`` embeddings.

        Raises:
            InputError: ``image`` is not ``[B, 3, S, S]`` or ``region_mask`` does not match it.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise InputError(f"expected images [B, 3, S, S], got {tuple(image.shape)}")
        if region_mask is None:
            region_mask = torch.full((image.shape[0], 1, *image.shape[2:]), MASK_FOREGROUND,
                               dtype=image.dtype, device=image.device)
        if region_mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise InputError(f"region mask {tuple(region_mask.shape)} does not match images {tuple(image.shape)}")
        self._region_mask = region_mask
        try:
            return self.clip.encode_image(image, normalize=normalize)
        finally:
            self._region_mask = None

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        """Text embeddings (plain CLIP).

        Args:
            tokens: token ids ``[B, context_length]`` from :meth:`tokenize`.
            normalize: return unit-length embeddings.

        Returns:
            ``[B, embed_dim]`` embeddings.
        """
        return self.clip.encode_text(tokens, normalize=normalize)

    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Tokenise prompts with open_clip's tokenizer at the model's context length.

        Args:
            texts: one prompt or several.

        Returns:
            Token ids ``[B, context_length]``.

        Raises:
            InputError: open_clip_torch is not installed.
        """
        open_clip = _require_open_clip()
        return open_clip.tokenize([texts] if isinstance(texts, str) else list(texts),
                                  context_length=int(self.clip.context_length))

    def forward(self, image: Tensor, region_mask: Tensor | None = None) -> Tensor:
        """Same as :meth:`encode_image` (unnormalised).

        Args:
            image: CLIP-normalised images ``[B, 3, S, S]``.
            region_mask: normalised region masks ``[B, 1, S, S]``, or None for the whole image.

        Returns:
            ``[B, embed_dim]`` embeddings.
        """
        return self.encode_image(image, region_mask)


def _check_quick_gelu(clip: nn.Module) -> None:
    """OpenAI CLIP was trained with QuickGELU; open_clip only *warns* on a mismatch, which
    silently gives wrong features. Refuse a tower built with any other activation."""
    from open_clip.transformer import QuickGELU

    acts = [m for m in clip.visual.modules() if isinstance(m, (nn.GELU, QuickGELU))]
    if not acts or not all(isinstance(m, QuickGELU) for m in acts):
        raise InputError("the CLIP model is not built with QuickGELU (OpenAI weights need it): use "
                         f"open_clip.load_openai_model or the '{OPENAI_B16_CONFIG}' config")


# --- building -----------------------------------------------------------------------------

def build_clip(openai: str | os.PathLike | None = None,
               config: str | Mapping[str, Any] = OPENAI_B16_CONFIG) -> nn.Module:
    """OpenAI CLIP on open_clip, float32, eval mode, CPU.

    Built from ``ViT-B-16.pt`` (JIT archive or state dict), or, with ``openai=None``, the same
    architecture randomly initialised (tests, measurements).

    Args:
        openai: path of OpenAI's ``ViT-B-16.pt``, or None for random weights.
        config: without weights only: an open_clip model name, or a dict of ``CLIP(**cfg)``
            arguments for small test models (``quick_gelu`` is forced on).

    Returns:
        The open_clip ``CLIP`` model.

    Raises:
        InputError: open_clip_torch is missing, or ``openai`` does not exist or is not an OpenAI
            CLIP checkpoint.
    """
    open_clip = _require_open_clip()
    if openai is not None:
        path = Path(openai)
        if not path.is_file():
            raise InputError(f"no OpenAI CLIP weights at {path}")
        try:
            with warnings.catch_warnings():  # OpenAI's file is a TorchScript archive; torch now deprecates jit.load
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
                model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
        except (RuntimeError, KeyError, ValueError, EOFError) as exc:
            raise InputError(f"{path} is not an OpenAI CLIP checkpoint ({type(exc).__name__}: {exc})") from None
    elif isinstance(config, str):
        model = open_clip.create_model(config, pretrained=None, device="cpu", precision="fp32")
    else:
        from open_clip.model import CLIP

        model = CLIP(**{**dict(config), "quick_gelu": True})
    return model.float().eval()


def build_alpha_clip(openai: str | os.PathLike | None = None, visual: str | os.PathLike | Mapping | None = None,
                     config: str | Mapping[str, Any] = OPENAI_B16_CONFIG, lora_alpha: float = 1.0) -> AlphaCLIP:
    """Alpha-CLIP: OpenAI CLIP (``openai``) + an Alpha-CLIP visual checkpoint (``visual``).

    The model is frozen (``requires_grad=False``), in eval mode, float32, CPU.

    Args:
        openai: path of OpenAI's ``ViT-B-16.pt``, or None for random weights.
        visual: Alpha-CLIP visual checkpoint (path or state dict); None leaves ``conv1_alpha``
            at zero, i.e. plain CLIP (the paper's "CLIP visual" ablation).
        config: architecture when ``openai`` is None (see :func:`build_clip`).
        lora_alpha: LoRA scale used when merging the checkpoint's LoRA factors.

    Returns:
        The :class:`AlphaCLIP` model.

    Raises:
        InputError: a weights file is missing, unreadable or does not fit the model.
    """
    model = AlphaCLIP(build_clip(openai, config))
    if visual is not None:
        load_alpha_visual(model, visual, lora_alpha=lora_alpha)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# --- Alpha-CLIP visual checkpoints -----------------------------------------------------------

_LORA = re.compile(r"^(?P<base>.+)\.lora_(?P<which>[AB])$")


def read_state_dict(source: str | os.PathLike | Mapping) -> dict[str, Tensor]:
    """A checkpoint file (or mapping) as a flat ``{name: tensor}``; unwraps ``state_dict``/``model``.

    Args:
        source: checkpoint path (loaded with ``weights_only=True`` on the CPU) or a mapping.

    Returns:
        The state dict.

    Raises:
        InputError: the file is missing or unreadable, or it does not hold a state dict of tensors.
    """
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"no checkpoint at {path}")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"cannot read {path} as a torch checkpoint: {exc}".splitlines()[0]) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = dict(sd[key])
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise InputError("the checkpoint is not a state dict of tensors")
    return dict(sd)


def _lora_delta(weight: Tensor, a: Tensor, b: Tensor, scale: float, name: str) -> Tensor:
    """``B @ A * scale`` shaped like ``weight``; handles loralib's ``Linear`` and ``MergedLinear``.

    ``MergedLinear`` (Alpha-CLIP's ``in_proj``) stores the enabled chunks' factors stacked:
    ``A [r*k, in]``, ``B [out/n*k, r]`` (k enabled of n chunks); chunk g's update is
    ``B_g @ A_g`` placed at the g-th enabled chunk. With k == n all chunks are enabled; for
    q/k/v (n = 3) and k = 2 Alpha-CLIP (and loralib's usual recipe) enable q and v.
    """
    out_f, in_f = weight.shape
    a, b = a.float(), b.float()
    if a.shape[1] != in_f:
        raise InputError(f"LoRA factor {name}.lora_A has shape {tuple(a.shape)}, expected [r, {in_f}]")
    r = b.shape[1]
    if b.shape[0] == out_f and a.shape[0] == r:
        return (b @ a) * scale
    k = a.shape[0] // r
    if k * r != a.shape[0] or b.shape[0] % k:
        raise InputError(f"LoRA factors of {name} have inconsistent shapes {tuple(a.shape)}, {tuple(b.shape)}")
    chunk = b.shape[0] // k
    n = out_f // chunk
    if n * chunk != out_f:
        raise InputError(f"LoRA factor {name}.lora_B rows do not divide the weight's {out_f} rows")
    if k == n:
        enabled = [True] * n
    elif (n, k) == (3, 2):
        enabled = [True, False, True]
    else:
        raise InputError(f"cannot tell which {k} of {n} chunks of {name} carry LoRA factors")
    delta = torch.zeros(out_f, in_f)
    g = 0
    for i, on in enumerate(enabled):
        if on:
            delta[i * chunk:(i + 1) * chunk] = b[g * chunk:(g + 1) * chunk] @ a[g * r:(g + 1) * r]
            g += 1
    return delta * scale


def merge_lora(sd: Mapping[str, Tensor], lora_alpha: float = 1.0) -> dict[str, Tensor]:
    """Fold LoRA factors into their weights: ``W += B @ A * lora_alpha / r``; factors removed.

    Args:
        sd: a state dict, possibly with ``<base>.lora_A``/``<base>.lora_B`` keys.
        lora_alpha: LoRA scale. It is not stored in checkpoints; loralib's default (1), which
            Alpha-CLIP's LoRA layers use, is the default here.

    Returns:
        A new state dict; one without LoRA keys is returned as is (copied).

    Raises:
        InputError: a LoRA layer lacks ``lora_A``, ``lora_B`` or its weight, or their shapes do
            not fit.
    """
    out = dict(sd)
    bases = {m.group("base") for k in sd if (m := _LORA.match(k))}
    for base in sorted(bases):
        a, b = out.pop(f"{base}.lora_A", None), out.pop(f"{base}.lora_B", None)
        w_key = f"{base}.weight"
        if a is None or b is None or w_key not in out:
            raise InputError(f"incomplete LoRA layer {base!r}: needs lora_A, lora_B and weight")
        w = out[w_key]
        out[w_key] = (w.float() + _lora_delta(w, a, b, lora_alpha / b.shape[1], base)).to(w.dtype)
    return out


def convert_alpha_visual(sd: Mapping[str, Tensor], lora_alpha: float = 1.0) -> dict[str, Tensor]:
    """Official Alpha-CLIP visual names -> open_clip ``visual`` names (float32).

    Strips ``module.`` (DataParallel/DDP) and a leading ``visual.``, merges LoRA factors, and
    renames Alpha-CLIP's ``attn.in_proj.{weight,bias}`` (an ``nn.Linear``) to
    ``nn.MultiheadAttention``'s ``attn.in_proj_{weight,bias}``.

    Args:
        sd: the official checkpoint's state dict.
        lora_alpha: LoRA scale (see :func:`merge_lora`).

    Returns:
        The converted float32 state dict.

    Raises:
        InputError: an incomplete LoRA layer.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in sd.items():
        while key.startswith("module."):
            key = key[len("module."):]
        renamed[key] = value
    if renamed and all(k.startswith("visual.") for k in renamed):
        renamed = {k[len("visual."):]: v for k, v in renamed.items()}
    merged = merge_lora(renamed, lora_alpha)
    out: dict[str, Tensor] = {}
    for key, value in merged.items():
        key = key.replace(".attn.in_proj.weight", ".attn.in_proj_weight").replace(".attn.in_proj.bias",
                                                                                  ".attn.in_proj_bias")
        out[key] = value.float()
    return out


def load_alpha_visual(model: AlphaCLIP, source: str | os.PathLike | Mapping, lora_alpha: float = 1.0) -> None:
    """Load an Alpha-CLIP visual checkpoint into ``model.clip.visual``, strictly.

    Args:
        model: the model to load into.
        source: checkpoint path or state dict (official Alpha-CLIP names).
        lora_alpha: LoRA scale (see :func:`merge_lora`).

    Raises:
        InputError: the checkpoint is unreadable, has missing or unexpected keys, or a shape
            differs (e.g. a ViT-L/14 file on a ViT-B/16 model).
    """
    sd = convert_alpha_visual(read_state_dict(source), lora_alpha)
    visual = model.clip.visual
    expected = visual.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise InputError("not an Alpha-CLIP visual checkpoint for this model: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    bad = [k for k in sd if sd[k].shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise InputError(f"Alpha-CLIP checkpoint shape mismatch at {k}: {tuple(sd[k].shape)} vs "
                         f"{tuple(expected[k].shape)} (a ViT-L/14 file on a ViT-B/16 model?)")
    visual.load_state_dict(sd, strict=True)


__all__ = ["AlphaCLIP", "OPENAI_B16_CONFIG", "EMBED_DIM", "build_clip", "build_alpha_clip",
           "read_state_dict", "merge_lora", "convert_alpha_visual", "load_alpha_visual"]

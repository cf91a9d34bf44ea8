"""Synthetic encoder weights in the *official* file layouts, and a reference forward pass.

No weights can be downloaded in tests. These helpers write what the real files look like:
- OpenAI's ``ViT-B-16.pt``: a TorchScript archive whose state dict uses OpenAI CLIP's names
  (``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.in_proj_weight``,
  ``token_embedding.weight``, ``text_projection``, ``input_resolution``...) with OpenAI's dtype
  mix (fp16 convolution/linear/attention/projection weights, fp32 norms and embeddings);
- Alpha-CLIP's ``clip_b16_grit1m_fultune_8xe.pth``: a visual-only state dict saved from a
  DataParallel model (``module.`` prefix), its attention as ``attn.in_proj.weight`` (an
  ``nn.Linear``), plus ``conv1_alpha.weight``.
The reference forward is written from the ViT/CLIP equations directly on those dicts, so it
shares no code with open_clip or rada.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: A small OpenAI-style CLIP (head width 64, as OpenAI's and as open_clip infers from a
#: state dict): fast on a CPU, same code paths as ViT-B/16 (patch 16, 224 px).
TINY = {"embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}

_FP16 = (".conv1.weight", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
         "attn.out_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def openai_state_dict(cfg: dict = TINY, seed: int = 0) -> dict[str, Tensor]:
    """Random CLIP weights with OpenAI's names and dtypes (as in the JIT archive)."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**cfg, quick_gelu=True)
    sd = {}
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in model.state_dict().items():
        v = v.detach().float()
        v = v + 0.02 * torch.randn(v.shape, generator=g)  # every tensor differs from any default init
        if k.endswith(_FP16) or k in ("text_projection", "visual.proj"):
            v = v.half()
        sd[k] = v
    sd["input_resolution"] = torch.tensor(cfg["vision_cfg"]["image_size"])
    sd["context_length"] = torch.tensor(cfg["text_cfg"]["context_length"])
    sd["vocab_size"] = torch.tensor(cfg["text_cfg"]["vocab_size"])
    return sd


class _Holder(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def write_openai_jit(sd: dict[str, Tensor], path: Path) -> Path:
    """Save ``sd`` as a TorchScript archive (what ``torch.jit.load`` reads in open_clip)."""
    root = _Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        m = root
        for name in parents:
            if not hasattr(m, name):
                m.add_module(name, _Holder())
            m = getattr(m, name)
        if value.dtype.is_floating_point:
            m.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            m.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(str(path))
    return path


def alpha_visual_state_dict(cfg: dict = TINY, seed: int = 10, alpha_scale: float = 0.05,
                            prefix: str = "module.") -> dict[str, Tensor]:
    """An Alpha-CLIP visual checkpoint in the official layout (new random values everywhere)."""
    base = openai_state_dict(cfg, seed)
    out = {}
    for k, v in base.items():
        if not k.startswith("visual."):
            continue
        k = k[len("visual."):].replace("attn.in_proj_weight", "attn.in_proj.weight") \
                              .replace("attn.in_proj_bias", "attn.in_proj.bias")
        out[prefix + k] = v.float()
    w = cfg["vision_cfg"]["width"]
    p = cfg["vision_cfg"]["patch_size"]
    g = torch.Generator().manual_seed(seed + 2)
    out[prefix + "conv1_alpha.weight"] = alpha_scale * torch.randn(w, 1, p, p, generator=g)
    return out


# --- reference forward, from the equations ----------------------------------------------------

def _ln(x: Tensor, sd: dict, name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"].float(), sd[f"{name}.bias"].float(), 1e-5)


def _block(x: Tensor, sd: dict, name: str, heads: int, in_proj: str, causal: bool) -> Tensor:
    f = {k: v.float() for k, v in sd.items() if k.startswith(name + ".")}
    h = _ln(x, f, f"{name}.ln_1")
    wq, wk, wv = f[f"{name}.attn.{in_proj}weight"].chunk(3)
    bq, bk, bv = f[f"{name}.attn.{in_proj}bias"].chunk(3)
    b, n, d = h.shape

    def split(t: Tensor) -> Tensor:
        return t.reshape(b, n, heads, d // heads).transpose(1, 2)

    q, k, v = split(h @ wq.T + bq), split(h @ wk.T + bk), split(h @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + a @ f[f"{name}.attn.out_proj.weight"].T + f[f"{name}.attn.out_proj.bias"]
    h = _ln(x, f, f"{name}.ln_2") @ f[f"{name}.mlp.c_fc.weight"].T + f[f"{name}.mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ f[f"{name}.mlp.c_proj.weight"].T + f[f"{name}.mlp.c_proj.bias"]


def reference_encode_image(vsd: dict[str, Tensor], image: Tensor, alpha: Tensor) -> Tensor:
    """Alpha-CLIP's visual tower on an official visual state dict (``module.`` stripped)."""
    f = {k: v.float() for k, v in vsd.items()}
    p = f["conv1.weight"].shape[-1]
    x = F.conv2d(image, f["conv1.weight"], stride=p) + F.conv2d(alpha, f["conv1_alpha.weight"], stride=p)
    x = x.flatten(2).transpose(1, 2)                                   # [B, grid*grid, width]
    cls = f["class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + f["positional_embedding"]
    x = _ln(x, f, "ln_pre")
    width = x.shape[-1]
    layers = len({k.split(".")[2] for k in f if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        x = _block(x, f, f"transformer.resblocks.{i}", width // 64, "in_proj.", causal=False)
    return _ln(x[:, 0], f, "ln_post") @ f["proj"]


def reference_encode_text(sd: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """CLIP's text tower on an OpenAI state dict."""
    f = {k: v.float() for k, v in sd.items() if v.dtype.is_floating_point}
    x = f["token_embedding.weight"][tokens] + f["positional_embedding"]
    width = x.shape[-1]
    layers = len({k.split(".")[2] for k in f if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        x = _block(x, f, f"transformer.resblocks.{i}", width // 64, "in_proj_", causal=True)
    x = _ln(x, f, "ln_final")
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ f["text_projection"]


def write_weights(folder: Path, cfg: dict = TINY) -> tuple[Path, Path]:
    """Synthetic ``ViT-B-16.pt`` (JIT) and ``clip_b16_grit1m_fultune_8xe.pth`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    openai = write_openai_jit(openai_state_dict(cfg), folder / "ViT-B-16.pt")
    visual = folder / "clip_b16_grit1m_fultune_8xe.pth"
    torch.save(alpha_visual_state_dict(cfg), visual)
    return openai, visual

"""Alpha-CLIP on open_clip: the zero-alpha identity, official checkpoint layouts, LoRA merging."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("open_clip")

from guidance_helpers import (
    TINY,
    alpha_visual_state_dict,
    openai_state_dict,
    reference_encode_image,
    reference_encode_text,
    write_openai_jit,
)

from rada.errors import InputError
from rada.guidance.alpha_clip import (
    AlphaCLIP,
    build_alpha_clip,
    build_clip,
    convert_alpha_visual,
    load_alpha_visual,
    merge_lora,
)
from rada.guidance.preprocess import preprocess_mask


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _masks() -> list[torch.Tensor]:
    """Alpha inputs: no mask, a square, its complement, a random blob (each [1, 224, 224])."""
    square = torch.zeros(60, 80, dtype=torch.uint8)
    square[10:40, 20:50] = 255
    rand = torch.rand(60, 80, generator=torch.Generator().manual_seed(1)) > 0.5
    return [preprocess_mask(None), preprocess_mask(square), preprocess_mask(255 - square), preprocess_mask(rand)]


@pytest.fixture(scope="module")
def tiny() -> AlphaCLIP:
    torch.manual_seed(0)
    return build_alpha_clip(config=TINY)


@pytest.fixture(scope="module")
def b16() -> AlphaCLIP:
    """ViT-B/16 with OpenAI's architecture (QuickGELU), random weights: built once (~150M params)."""
    torch.manual_seed(0)
    return build_alpha_clip()


def test_b16_architecture_and_zero_alpha_identity(b16: AlphaCLIP) -> None:
    from open_clip.transformer import QuickGELU

    v = b16.clip.visual
    assert tuple(b16.conv1_alpha.weight.shape) == (768, 1, 16, 16) and b16.conv1_alpha.bias is None
    assert torch.count_nonzero(b16.conv1_alpha.weight) == 0
    assert v.conv1.out_channels == 768 and b16.image_size == 224 and b16.embed_dim == 512
    assert isinstance(v.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not any(p.requires_grad for p in b16.parameters())
    image = _images(1)
    masks = _masks()
    with torch.inference_mode():
        plain = b16.clip.encode_image(image)
        for alpha in masks:
            assert torch.equal(b16.encode_image(image, alpha[None]), plain)
        text = b16.encode_text(b16.tokenize("An image containing the left atrium, with the rest being background"))
    assert plain.shape == (1, 512) and text.shape == (1, 512)


def test_zero_alpha_equals_a_separate_plain_open_clip_model(tiny: AlphaCLIP) -> None:
    from open_clip.model import CLIP

    plain = CLIP(**TINY, quick_gelu=True).eval()
    sd = {k: v for k, v in tiny.clip.state_dict().items() if "conv1_alpha" not in k}
    plain.load_state_dict(sd, strict=True)
    image = _images(3)
    with torch.inference_mode():
        expected = plain.encode_image(image)
        for alpha in _masks():
            got = tiny.encode_image(image, alpha.expand(3, -1, -1, -1))
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert torch.equal(tiny.encode_image(image), expected)  # alpha=None: whole image


def test_nonzero_alpha_changes_outputs_with_the_mask() -> None:
    torch.manual_seed(0)
    model = build_alpha_clip(config=TINY)
    with torch.no_grad():
        model.conv1_alpha.weight.normal_(0, 0.05)
    image = _images(1)
    no_mask, square, complement, rand = _masks()
    with torch.inference_mode():
        outs = [model.encode_image(image, a[None]) for a in (no_mask, square, complement, rand)]
        plain = model.clip.encode_image(image)   # the hook is inert without an alpha
        again = model.encode_image(image, square[None])
    assert torch.equal(outs[1], again)          # deterministic for one mask
    for i in range(4):
        assert not torch.allclose(outs[i], plain, atol=1e-4)
        for j in range(i + 1, 4):
            assert not torch.allclose(outs[i], outs[j], atol=1e-4), (i, j)


def test_a_gelu_tower_is_refused() -> None:
    from open_clip.model import CLIP

    with pytest.raises(InputError, match="QuickGELU"):
        AlphaCLIP(CLIP(**TINY, quick_gelu=False))


def test_official_layouts_load_strictly_and_match_a_reference_computation(tmp_path) -> None:
    openai_sd = openai_state_dict(TINY)
    path = write_openai_jit(openai_sd, tmp_path / "ViT-B-16.pt")
    visual_sd = alpha_visual_state_dict(TINY)
    torch.save(visual_sd, tmp_path / "clip_b16_grit1m_fultune_8xe.pth")
    assert any(k.startswith("module.") and k.endswith("attn.in_proj.weight") for k in visual_sd)

    model = build_alpha_clip(path, tmp_path / "clip_b16_grit1m_fultune_8xe.pth")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    official = {k[len("module."):]: v for k, v in visual_sd.items()}
    got_sd = model.clip.visual.state_dict()
    torch.testing.assert_close(got_sd["conv1_alpha.weight"], official["conv1_alpha.weight"], rtol=0, atol=0)
    torch.testing.assert_close(got_sd["transformer.resblocks.1.attn.in_proj_weight"],
                               official["transformer.resblocks.1.attn.in_proj.weight"], rtol=0, atol=0)

    image = _images(2)
    alpha = torch.stack([_masks()[1], _masks()[3]])
    tokens = model.tokenize(["An image containing the left atrium, with the rest being background", "a liver"])
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(image, alpha), reference_encode_image(official, image, alpha),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), reference_encode_text(openai_sd, tokens),
                                   rtol=1e-4, atol=1e-5)
        # the text tower is OpenAI's: the Alpha-CLIP file did not touch it
        base = build_alpha_clip(path)
        torch.testing.assert_close(base.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=0)


def test_a_plain_state_dict_file_of_openai_clip_also_loads(tmp_path) -> None:
    sd = openai_state_dict(TINY, seed=3)
    torch.save(sd, tmp_path / "clip.pt")
    model = build_clip(tmp_path / "clip.pt")
    torch.testing.assert_close(model.state_dict()["visual.conv1.weight"], sd["visual.conv1.weight"].float(),
                               rtol=0, atol=0)


def test_bad_visual_checkpoints_are_refused(tiny: AlphaCLIP, tmp_path) -> None:
    sd = alpha_visual_state_dict(TINY)
    missing = {k: v for k, v in sd.items() if not k.endswith("conv1_alpha.weight")}
    with pytest.raises(InputError, match="1 missing keys"):
        load_alpha_visual(tiny, missing)
    with pytest.raises(InputError, match="unexpected"):
        load_alpha_visual(tiny, {**sd, "module.extra.weight": torch.zeros(1)})
    big = dict(sd)
    big["module.conv1_alpha.weight"] = torch.zeros(1024, 1, 14, 14)
    with pytest.raises(InputError, match="shape mismatch"):
        load_alpha_visual(tiny, big)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_alpha_visual(tiny, tmp_path / "junk.pth")
    with pytest.raises(InputError, match="no OpenAI CLIP weights"):
        build_clip(tmp_path / "absent.pt")
    # wrapped in {"state_dict": ...} and without the module. prefix: same result
    load_alpha_visual(tiny, {"state_dict": alpha_visual_state_dict(TINY, prefix="")})


def _lora_checkpoint(r: int = 4, seed: int = 5) -> tuple[dict, dict]:
    """(LoRA checkpoint with loralib's key layout, the expected merged weights)."""
    sd = alpha_visual_state_dict(TINY, prefix="module.")
    g = torch.Generator().manual_seed(seed)
    d = TINY["vision_cfg"]["width"]
    lora = dict(sd)
    merged = dict(sd)
    for i in range(TINY["vision_cfg"]["layers"]):
        base = f"module.transformer.resblocks.{i}.attn"
        # MergedLinear(d, 3d, r, enable_lora=[True, False, True]): q and v adapted
        a, b = torch.randn(2 * r, d, generator=g), torch.randn(2 * d, r, generator=g)
        lora[f"{base}.in_proj.lora_A"], lora[f"{base}.in_proj.lora_B"] = a, b
        delta = torch.cat([b[:d] @ a[:r], torch.zeros(d, d), b[d:] @ a[r:]]) / r
        merged[f"{base}.in_proj.weight"] = sd[f"{base}.in_proj.weight"] + delta
        # Linear(d, d, r): out_proj
        a, b = torch.randn(r, d, generator=g), torch.randn(d, r, generator=g)
        lora[f"{base}.out_proj.lora_A"], lora[f"{base}.out_proj.lora_B"] = a, b
        merged[f"{base}.out_proj.weight"] = sd[f"{base}.out_proj.weight"] + b @ a / r
    return lora, merged


def test_lora_checkpoints_are_merged_like_loralib(tiny: AlphaCLIP) -> None:
    lora, expected = _lora_checkpoint()
    merged = merge_lora(lora)
    assert not any("lora_" in k for k in merged)
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k], rtol=1e-6, atol=1e-6)
    # loading the LoRA file = loading the pre-merged full fine-tune
    load_alpha_visual(tiny, lora)
    a = {k: v.clone() for k, v in tiny.clip.visual.state_dict().items()}
    load_alpha_visual(tiny, expected)
    b = tiny.clip.visual.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="incomplete LoRA"):
        merge_lora({"x.weight": torch.zeros(2, 2), "x.lora_A": torch.zeros(1, 2)})


def test_merge_agrees_with_loralib_itself() -> None:
    loralib = pytest.importorskip("loralib")
    torch.manual_seed(0)
    d, r = 32, 4
    layer = loralib.MergedLinear(d, 3 * d, r=r, lora_alpha=2, enable_lora=[True, False, True])
    plain = loralib.Linear(d, d, r=r, lora_alpha=2)
    with torch.no_grad():
        for m in (layer, plain):
            m.lora_B.normal_()
    sd = {f"in_proj.{k}": v.clone() for k, v in layer.state_dict().items()}
    sd.update({f"out_proj.{k}": v.clone() for k, v in plain.state_dict().items()})
    merged = merge_lora(sd, lora_alpha=2)
    layer.eval()
    plain.eval()  # loralib merges on eval()
    torch.testing.assert_close(merged["in_proj.weight"], layer.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged["out_proj.weight"], plain.weight.detach(), rtol=1e-5, atol=1e-6)


def test_convert_renames_only_what_it_must() -> None:
    sd = {"module.transformer.resblocks.0.attn.in_proj.weight": torch.zeros(3, 1),
          "module.transformer.resblocks.0.attn.in_proj.bias": torch.zeros(3),
          "module.transformer.resblocks.0.attn.out_proj.weight": torch.zeros(1, 1).half(),
          "module.conv1_alpha.weight": torch.zeros(1, 1, 1, 1)}
    out = convert_alpha_visual(sd)
    assert set(out) == {"transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.attn.in_proj_bias",
                        "transformer.resblocks.0.attn.out_proj.weight", "conv1_alpha.weight"}
    assert all(v.dtype == torch.float32 for v in out.values())

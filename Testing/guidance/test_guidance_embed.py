"""Guidance embeddings: per-view means, the cache file, the explicit 'off' path, ``rada embed``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from guidance_helpers import TINY, write_weights

from rada.annotation import SparseAnnotation, take_slice
from rada.dataset import default_prompt
from rada.errors import InputError
from rada.guidance import (
    GuidanceEmbeddings,
    compute_embeddings,
    load_embeddings,
    save_embeddings,
)
from rada.guidance import weights as W
from rada.guidance.alpha_clip import AlphaCLIP, build_alpha_clip
from rada.guidance.preprocess import preprocess_pair
from rada.views import AXIS_OF, VIEW_NAMES
from rada.volume import Volume


@pytest.fixture(scope="module")
def model() -> AlphaCLIP:
    torch.manual_seed(0)
    m = build_alpha_clip(config=TINY)
    with torch.no_grad():
        m.conv1_alpha.weight.normal_(0, 0.05)   # the mask matters
    return m


def _case(seed: int, shape=(24, 32, 40)) -> tuple[Volume, SparseAnnotation]:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2 + rng.integers(-3, 4, 3)
    blob = ((z - c[0]) / 7) ** 2 + ((y - c[1]) / 9) ** 2 + ((x - c[2]) / 11) ** 2 < 1
    image = Volume((rng.normal(0, 1, shape) + 4 * blob).astype(np.float32), spacing=(1.0, 1.0, 2.0))
    return image, SparseAnnotation.from_dense(image.with_array(blob.astype(np.uint8)))


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RADA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_embeddings_are_unit_vectors_per_view(model) -> None:
    cases = [_case(0), _case(1)]
    emb = compute_embeddings([c[0] for c in cases], [c[1] for c in cases], "left atrium", model, case_ids=["a", "b"])
    assert emb.enabled and emb.prompt == "An image containing the left atrium, with the rest being background"
    assert emb.text.shape == (64,) and set(emb.visual) == set(VIEW_NAMES)
    for v in (emb.text, *emb.visual.values()):
        assert v.dtype == torch.float32 and float(v.norm()) == pytest.approx(1.0, abs=1e-5)
    assert emb.source["slices"] == {"sagittal": 2, "coronal": 2, "axial": 2}
    assert emb.source["case_ids"] == ["a", "b"]
    with torch.inference_mode():
        text = model.encode_text(model.tokenize(default_prompt("left atrium")), normalize=True)[0]
    torch.testing.assert_close(emb.text, text)
    assert not torch.allclose(emb.visual["axial"], emb.visual["sagittal"], atol=1e-3)


def test_visual_embedding_is_the_mean_over_annotated_slices(model) -> None:
    cases = [_case(2), _case(3)]
    emb = compute_embeddings([c[0] for c in cases], [c[1] for c in cases], "liver", model, batch_size=1)
    for view in VIEW_NAMES:
        a = AXIS_OF[view]
        feats = []
        for image, ann in cases:
            (idx,) = ann.annotated_slices(view)
            img, alpha = preprocess_pair(take_slice(image.array, a, idx), ann.slice_mask(view, idx))
            with torch.inference_mode():
                feats.append(model.encode_image(img[None], alpha[None], normalize=True)[0])
        mean = torch.stack(feats).mean(0)
        torch.testing.assert_close(emb.visual[view], mean / mean.norm(), rtol=1e-5, atol=1e-6)


def test_the_cache_file_round_trips_exactly(model, tmp_path) -> None:
    image, ann = _case(4)
    emb = compute_embeddings([image], [ann], "spleen", model, prompt="a CT of the {organ}".format(organ="spleen"))
    path = save_embeddings(emb, tmp_path / "sub" / "g.npz")
    back = load_embeddings(path)
    assert back.enabled and back.organ == "spleen" and back.prompt == "a CT of the spleen"
    assert torch.equal(back.text, emb.text)
    assert all(torch.equal(back.visual[v], emb.visual[v]) for v in VIEW_NAMES)
    assert back.source["versions"]["open_clip"] and back.source["slices"] == emb.source["slices"]
    assert path.stat().st_size < 20_000
    with np.load(path, allow_pickle=False) as data:      # plain arrays + JSON: no pickle needed
        assert set(data.files) == {"meta", "text", *(f"visual_{v}" for v in VIEW_NAMES)}
    # what the trainer takes
    trainer = pytest.importorskip("rada.train.trainer")
    g = trainer.Guidance.from_embeddings(back)
    assert g is not None and torch.equal(g.text, emb.text)


def test_no_weights_means_guidance_off_explicitly(empty_home, tmp_path) -> None:
    image, ann = _case(5)
    emb = compute_embeddings([image], [ann], "left atrium")
    assert not emb.enabled and emb.text is None and emb.visual == {}
    assert "guidance off" in emb.reason and "rada weights download" in emb.reason
    assert "ViT-B-16.pt" in emb.reason
    back = load_embeddings(save_embeddings(emb, tmp_path / "off.npz"))
    assert not back.enabled and back.reason == emb.reason and back.text is None
    assert back.summary()["enabled"] is False
    trainer = pytest.importorskip("rada.train.trainer")
    assert trainer.Guidance.from_embeddings(back) is None
    with pytest.raises(ValueError):
        GuidanceEmbeddings(True, None, {})                 # 'on' without vectors cannot be built
    with pytest.raises(ValueError):
        GuidanceEmbeddings(False, torch.zeros(4), {})      # 'off' with vectors cannot either


def test_bad_inputs(model, tmp_path) -> None:
    image, ann = _case(6)
    other = Volume(image.array, spacing=(2.0, 1.0, 2.0))
    with pytest.raises(InputError, match="geometry"):
        compute_embeddings([other], [ann], "x", model)
    with pytest.raises(InputError, match="no labeled volume"):
        compute_embeddings([], [], "x", model)
    with pytest.raises(InputError, match="organ"):
        compute_embeddings([image], [ann], "", model)
    only_axial = np.full(ann.shape, 255, np.uint8)
    z = ann.annotated_slices("axial")[0]
    only_axial[z] = ann.array[z]
    one_axis = SparseAnnotation(image.with_array(only_axial))
    with pytest.raises(InputError, match="no annotated sagittal slice"):
        compute_embeddings([image], [one_axis], "x", model)
    with pytest.raises(InputError, match="rada embed"):
        load_embeddings(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a guidance embeddings file"):
        load_embeddings(tmp_path / "junk.npz")


# --- rada embed on real LA cases, with synthetic weights in the official layouts -------------------

@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_weights(tmp_path_factory.mktemp("official"), TINY)


@pytest.fixture
def la_dataset(la_dir, la_case_ids, tmp_path) -> Path:
    from rada.io import read_volume, write_volume

    root = tmp_path / "la"
    root.mkdir()
    cases = []
    for i, cid in enumerate(la_case_ids[:3]):
        entry = {"id": cid, "image": str(la_dir / cid / "image.nii.gz"), "split": "train"}
        if i < 2:
            sparse = SparseAnnotation.from_dense(read_volume(la_dir / cid / "label.nii.gz"))
            write_volume(sparse.labels, root / f"{cid}_sparse.nii.gz")
            entry["annotation"] = f"{cid}_sparse.nii.gz"
        cases.append(entry)
    (root / "dataset.json").write_text(json.dumps({"name": "la", "organ": "left atrium", "cases": cases}), encoding="utf-8")
    return root


def _cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    from rada.cli import main

    rc = main(args)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else None), err


def test_rada_embed_a_dataset(la_dataset, weight_files, empty_home, monkeypatch, capsys) -> None:
    # no weights: exit 2 with the reason, nothing written; --allow-off writes the 'off' record
    rc, out, err = _cli(["embed", str(la_dataset), "--quiet"], capsys)
    assert rc == 2 and "guidance off" in err and "--allow-off" in err and len(err.strip().splitlines()) == 1
    assert not (la_dataset / "guidance_embeddings.npz").exists()
    rc, out, _ = _cli(["embed", str(la_dataset), "--quiet", "--allow-off"], capsys)
    assert rc == 0 and out["enabled"] is False
    assert not load_embeddings(la_dataset).enabled

    # import the (synthetic) official files the offline way, then embed
    openai, visual = weight_files
    monkeypatch.setitem(W.REGISTRY, "openai-vit-b-16",
                        dataclasses.replace(W.REGISTRY["openai-vit-b-16"], sha256=None))  # synthetic file
    for f in (openai, visual):
        assert _cli(["weights", "import", str(f), "--quiet"], capsys)[0] == 0
    rc, out, err = _cli(["embed", str(la_dataset), "--quiet"], capsys)
    assert rc == 0, err
    assert out["enabled"] and out["slices"] == {"sagittal": 2, "coronal": 2, "axial": 2} and out["cases"] == 2
    assert out["encoder"] == "alpha-clip-b16-grit1m"
    assert out["sha256"] == {f.name: W.sha256_file(f) for f in (openai, visual)}
    emb = load_embeddings(la_dataset / "guidance_embeddings.npz")
    assert emb.enabled and emb.organ == "left atrium" and emb.text.shape == (64,)
    assert emb.source["annotated_slices"][0].keys() == set(VIEW_NAMES)

    # the same through the Python API with an explicitly built model gives the same vectors
    model = build_alpha_clip(openai, visual)
    from rada.dataset import read_dataset
    from rada.guidance import embed_dataset

    spec = read_dataset(la_dataset)
    direct, _ = embed_dataset(la_dataset, la_dataset / "direct.npz", model)
    assert spec.labeled("train") and torch.allclose(direct.text, emb.text, atol=1e-6)
    for v in VIEW_NAMES:
        assert torch.allclose(direct.visual[v], emb.visual[v], atol=1e-6)


def test_rada_embed_images_with_explicit_files(la_dataset, weight_files, empty_home, capsys, tmp_path) -> None:
    spec = json.loads((la_dataset / "dataset.json").read_text(encoding="utf-8"))
    labeled = [c for c in spec["cases"] if c.get("annotation")]
    openai, visual = weight_files
    out_file = tmp_path / "emb.npz"
    args = ["embed", *[c["image"] for c in labeled], "--annotation",
            *[str(la_dataset / c["annotation"]) for c in labeled], "--organ", "left atrium",
            "--out", str(out_file), "--openai", str(openai), "--visual", str(visual), "--quiet", "--batch-size", "3"]
    rc, out, err = _cli(args, capsys)
    assert rc == 0, err
    assert out["encoder"] == "files" and out["slices"]["axial"] == 2
    assert load_embeddings(out_file).enabled
    rc, _, err = _cli(["embed", labeled[0]["image"], "--organ", "x", "--out", str(out_file), "--quiet"], capsys)
    assert rc == 2 and "one --annotation per image" in err
    rc, _, err = _cli(["embed", labeled[0]["image"], "--annotation", str(la_dataset / labeled[0]["annotation"]),
                       "--organ", "x", "--out", str(out_file), "--visual", str(visual), "--quiet"], capsys)
    assert rc == 2 and "--visual needs --openai" in err

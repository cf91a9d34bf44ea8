"""``rada train`` and ``rada predict`` end to end on real LA files, and the pseudo-label cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

import rada.train.data as train_data
from rada.annotation import SparseAnnotation
from rada.cli import main
from rada.io import read_volume
from rada.views import VIEWS
from rada.volume import Volume


def _fake_result(label: np.ndarray, annotation: SparseAnnotation):
    views = {}
    for v in VIEWS:
        seed = annotation.annotated_slices(v.axis)[0]
        d = np.abs(np.arange(label.shape[v.axis]) - seed).reshape([-1 if a == v.axis else 1 for a in range(3)])
        views[v.name] = SimpleNamespace(label=label, distance=np.broadcast_to(d, label.shape))
    return SimpleNamespace(views=views)


def test_pseudo_labels_are_propagated_once_and_cached(tmp_path):
    dense = np.zeros((12, 14, 16), np.uint8)
    dense[3:9, 4:10, 5:12] = 1
    ann = SparseAnnotation.from_dense(Volume(dense))
    image = Volume(np.random.default_rng(0).normal(size=dense.shape).astype(np.float32))
    calls = []

    def propagate(img, annotation, config):
        calls.append(1)
        noisy = dense.copy()
        noisy[0] = 1  # a wrong propagated plane; annotated planes must be pasted back as ground truth
        result = _fake_result(noisy, annotation)
        d = result.views["axial"].distance.astype(float)
        d[..., 0], d[..., 1] = -1, np.inf  # 'not reached' markers must become the largest distance
        result.views["axial"].distance = d
        return result

    labels, dist, known = train_data.cached_pseudo_labels("c1", image, ann, tmp_path, propagate, config="cfg")
    again = train_data.cached_pseudo_labels("c1", image, ann, tmp_path, propagate, config="cfg")
    assert len(calls) == 1 and (tmp_path / "c1.npz").exists()
    for v in VIEWS:
        assert np.array_equal(labels[v.name], again[0][v.name]) and labels[v.name].dtype == np.uint8
        assert np.array_equal(labels[v.name][known], ann.array[known])
        assert dist[v.name].dtype == np.uint16
    assert (dist["axial"][..., :2] == np.iinfo(np.uint16).max).all()
    train_data.cached_pseudo_labels("c1", image, ann, tmp_path, propagate, config="other")
    assert len(calls) == 2  # another propagation config invalidates the cache


def test_cli_train_resume_and_predict(la_dir, la_case_ids, tmp_path, capsys, monkeypatch):
    ids = la_case_ids
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labeled": ids[:1], "unlabeled": ids[1:2], "val": ids[2:3]}), encoding="utf-8")
    assert main(["prepare-dataset", "la2018", str(la_dir), "--out", str(tmp_path / "ds"), "--split", str(split)]) == 0

    original = train_data.cached_pseudo_labels

    def pseudo(case_id, image, annotation, cache_dir, propagate=None, config=None, views=VIEWS):
        dense = (read_volume(la_dir / case_id / "label.nii.gz").array > 0).astype(np.uint8)
        return original(case_id, image, annotation, cache_dir,
                                               lambda i, a, c: _fake_result(dense, a), "dense", views)

    monkeypatch.setattr(train_data, "cached_pseudo_labels", pseudo)
    monkeypatch.setenv("RADA_HOME", str(tmp_path / "home"))  # no encoder weights: guidance auto -> off
    run = tmp_path / "run"
    common = ["train", str(tmp_path / "ds"), "--out", str(run), "--width", "4", "--patch", "32,32,32",
              "--device", "cpu", "--quiet", "--checkpoint-every", "1"]
    assert main(common + ["--iterations", "2"]) == 0
    assert main(common + ["--iterations", "3", "--resume"]) == 0
    out = json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "\n}")
    assert out["iterations"] == 3 and out["guidance"]["enabled"] is False
    assert "rada weights download" in out["guidance"]["reason"]  # the reason is shown, not only stored
    assert out["best_iteration"] == 3 and 0.0 <= out["best_val_dice"] <= 1.0  # validated at the end
    assert (run / "pseudo_labels" / f"{ids[0]}.npz").exists() and (run / "loss.png").exists()
    assert main(common + ["--iterations", "3"]) == 2  # existing run without --resume: a clear error

    image = la_dir / ids[2] / "image.nii.gz"
    pred = tmp_path / "pred.nii.gz"
    assert main(["predict", str(image), "--model", str(run / "checkpoint.pt"), "--out", str(pred), "--view", "axial",
                 "--stride", "32,32,32", "--device", "cpu", "--probability", str(tmp_path / "p.nii.gz")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["view"] == "axial" and report["guidance"] is False
    label, src = read_volume(pred), read_volume(image)
    assert label.same_grid(src) and set(np.unique(label.array)) <= {0, 1}
    assert read_volume(tmp_path / "p.nii.gz").same_grid(src)

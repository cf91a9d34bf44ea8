"""dataset.json: read/write/validate, the LA2018 builder and its fixed split, z-score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rada.annotation import SparseAnnotation
from rada.cli import main
from rada.dataset import (CaseEntry, DatasetSpec, SplitFile, build_la2018, load_annotation, load_image, read_dataset,
                          write_dataset, zscore)
from rada.errors import InputError
from rada.io import read_volume
from repo_paths import REPO

SPLIT = REPO / "bench" / "la2018_split.json"


def test_fixed_la2018_split(la_case_ids):
    split = SplitFile.read(SPLIT)
    assert (len(split.labeled), len(split.unlabeled), len(split.val)) == (8, 56, 16)
    everything = split.labeled + split.unlabeled + split.val
    assert len(set(everything)) == 80 and set(everything) == set(la_case_ids)
    # reproducible from the list with the fixed seed
    assert SplitFile.make(la_case_ids) == split


@pytest.mark.parametrize("text, reason", [
    ("{not json", "cannot use split file"),
    ('{"labeled": ["a"], "unlabeled": []}', "'val' is missing"),
    ('{"labeled": "a", "unlabeled": [], "val": []}', "'labeled' is missing or not a list"),
    ('[1, 2]', "'labeled' is missing"),
])
def test_a_bad_split_file_is_one_input_error(tmp_path, text, reason):
    path = tmp_path / "split.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=reason):
        SplitFile.read(path)
    with pytest.raises(InputError, match="cannot use split file"):
        SplitFile.read(tmp_path / "absent.json")


def test_build_la2018_subset_and_read_back(la_dir, la_case_ids, tmp_path):
    ids = la_case_ids
    split = SplitFile(labeled=(ids[0],), unlabeled=(ids[1],), val=(ids[2],))
    spec = build_la2018(la_dir, tmp_path / "ds", split)
    back = read_dataset(tmp_path / "ds")
    assert back.as_json() == spec.as_json()
    assert back.prompt == "An image containing the left atrium, with the rest being background"
    assert [c.split for c in back.cases] == ["train", "train", "val"]
    assert [c.labeled for c in back.cases] == [True, False, False]
    ann = load_annotation(back, back.cases[0])
    assert isinstance(ann, SparseAnnotation) and all(len(v) == 1 for v in ann.slices().values())
    dense = read_volume(la_dir / ids[0] / "label.nii.gz").array > 0
    assert ann.annotated_slices("axial") == [int(np.argmax(dense.sum(axis=(1, 2))))]
    assert load_annotation(back, back.cases[1]) is None
    assert Path(back.cases[0].image) == (la_dir / ids[0] / "image.nii.gz").resolve()  # referenced, not copied
    assert not list((tmp_path / "ds").rglob("image*"))
    img = load_image(back, back.cases[1])
    assert img.array.dtype == np.float32 and abs(float(img.array.mean())) < 1e-3


def test_validation_errors(tmp_path):
    img = tmp_path / "i.nii.gz"
    img.write_bytes(b"")
    ok = [CaseEntry("a", str(img), str(img), None, "train")]
    DatasetSpec("d", "liver", cases=ok, root=tmp_path).validate()
    with pytest.raises(InputError, match="twice"):
        DatasetSpec("d", "liver", cases=ok * 2, root=tmp_path).validate()
    with pytest.raises(InputError, match="split"):
        DatasetSpec("d", "liver", cases=[CaseEntry("a", str(img), str(img), None, "dev")], root=tmp_path).validate()
    with pytest.raises(InputError, match="not found"):
        DatasetSpec("d", "liver", cases=[CaseEntry("a", "missing.nii.gz", None)], root=tmp_path).validate()
    with pytest.raises(InputError, match="no labeled"):
        DatasetSpec("d", "liver", cases=[CaseEntry("a", str(img))], root=tmp_path).validate()
    write_dataset(DatasetSpec("d", "liver", cases=ok, root=tmp_path), tmp_path)
    assert read_dataset(tmp_path / "dataset.json").cases == ok
    (tmp_path / "dataset.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="JSON"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}), encoding="utf-8")
    with pytest.raises(InputError, match="malformed"):
        read_dataset(tmp_path)


def test_zscore():
    a = np.random.default_rng(0).normal(5, 3, size=(8, 9, 10))
    z = zscore(a)
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1, rel=1e-4)
    assert (zscore(np.ones((2, 2, 2))) == 0).all()


def test_cli_prepare_dataset(la_dir, la_case_ids, tmp_path, capsys):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labeled": la_case_ids[:1], "unlabeled": la_case_ids[1:2], "val": la_case_ids[2:3]}), encoding="utf-8")
    assert main(["prepare-dataset", "la2018", str(la_dir), "--out", str(tmp_path / "ds"), "--split", str(split)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["labeled"], out["unlabeled"], out["val"]) == (1, 1, 1)
    assert main(["prepare-dataset", "la2018", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2

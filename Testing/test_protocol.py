"""The CT protocol (METHOD.md section 1) on the real abdominal CT: HU window, crop to the body
and the organ's z-range, resampling with the sparse annotation kept one slice per axis;
the checkpoint's spacing honoured at inference with the prediction back on the input grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rada.annotation import SparseAnnotation
from rada.dataset import CaseEntry, DatasetSpec, load_case, read_dataset, write_dataset
from rada.errors import InputError
from rada.io import read_volume
from rada.metrics import dice
from rada.nets import ModelConfig, TriViewModel
from rada.protocol import Protocol, apply, resample_annotation, resample_image, to_input_grid
from rada.volume import Volume

LITS = {"hu_window": [-100, 200], "crop_body": True, "organ_margin": 10, "spacing": [4.5, 4.5, 4.5]}


@pytest.fixture(scope="module")
def ct(ct_dir):
    image = read_volume(ct_dir / "image.nii.gz")
    label = read_volume(ct_dir / "label.nii.gz")
    return image, label, SparseAnnotation.from_dense(label)


def _world_value(volume: Volume, point) -> float:
    img = volume.to_sitk()
    idx = img.TransformPhysicalPointToIndex(point)
    return float(volume.array[idx[2], idx[1], idx[0]])


def test_window_and_crops_keep_every_voxel_where_it_was(ct):
    image, label, annotation = ct
    protocol = Protocol.from_json({k: v for k, v in LITS.items() if k != "spacing"})
    out = apply(protocol, image, annotation, label)
    assert out.image.array.min() >= -100 and out.image.array.max() <= 200
    assert out.image.shape[1] * out.image.shape[2] < image.shape[1] * image.shape[2]  # air around the body gone
    assert out.image.spacing == image.spacing and out.image.direction == image.direction
    # The organ's z-range +- 10 slices (from the annotation's sagittal/coronal planes), nothing more.
    z = np.flatnonzero(annotation.foreground().any(axis=(1, 2)))
    assert out.image.shape[0] <= (z[-1] - z[0] + 1) + 20
    assert out.label.array.sum() == label.array.sum()  # the whole organ kept
    # A voxel keeps its world position: same HU (windowed) and label at the same physical point.
    zz, yy, xx = np.argwhere(out.label.array > 0)[len(np.argwhere(out.label.array > 0)) // 2]
    point = out.image.to_sitk().TransformIndexToPhysicalPoint((int(xx), int(yy), int(zz)))
    assert _world_value(out.image, point) == pytest.approx(np.clip(_world_value(image, point), -100, 200))
    assert _world_value(label, point) == 1
    assert out.annotation.slices() and all(len(v) == 1 for v in out.annotation.slices().values())
    assert out.annotation.labels.same_grid(out.image) and out.label.same_grid(out.image)


def test_resampling_keeps_one_annotated_slice_per_axis_on_the_organ(ct):
    image, label, annotation = ct
    out = apply(Protocol.from_json(LITS), image, annotation, label)
    assert out.image.spacing == (4.5, 4.5, 4.5)
    assert out.image.origin == pytest.approx(apply(Protocol.from_json({k: v for k, v in LITS.items()
                                                                        if k != "spacing"}), image,
                                                   annotation, label).image.origin)
    slices = out.annotation.slices()
    assert all(len(v) == 1 for v in slices.values())
    for axis, (index,) in ((0, slices["axial"]), (1, slices["coronal"]), (2, slices["sagittal"])):
        painted = np.take(out.annotation.array, index, axis=axis) == 1
        dense = np.take(out.label.array, index, axis=axis) > 0
        assert dice(painted, dense) > 0.9, axis  # the plane landed where the organ is


def test_dataset_protocol_option_is_validated_and_applied(ct_dir, tmp_path):
    from rada.io import write_volume

    label = read_volume(ct_dir / "label.nii.gz")
    write_volume(SparseAnnotation.from_dense(label).labels, tmp_path / "sparse.nii.gz")
    case = CaseEntry("liver", str(ct_dir / "image.nii.gz"), "sparse.nii.gz", str(ct_dir / "label.nii.gz"))
    write_dataset(DatasetSpec("ct", "liver", "CT", cases=[case], root=tmp_path, preprocessing=LITS), tmp_path)
    spec = read_dataset(tmp_path)
    assert spec.protocol == Protocol.from_json(LITS)
    z_image, ann, dense = load_case(spec, case, with_label=True)
    assert z_image.spacing == (4.5, 4.5, 4.5) and abs(float(z_image.array.mean())) < 1e-4  # then z-scored
    assert ann.labels.same_grid(z_image) and dense.same_grid(z_image)
    for bad, message in (({"hu_window": [200, -100]}, "low < high"), ({"spacing": [1, 1]}, "expected 3 values"),
                         ({"hu_windw": [0, 1]}, "unknown key 'preprocessing.hu_windw'")):
        raw = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
        raw["preprocessing"] = bad
        (tmp_path / "dataset.json").write_text(json.dumps(raw), encoding="utf-8")
        with pytest.raises(InputError, match=message):
            read_dataset(tmp_path)


def test_inference_honours_the_checkpoint_spacing_and_returns_the_input_grid(ct):
    from rada.intensity import zscore
    from rada.infer import InferenceConfig, predict, predict_probability

    image, label, annotation = ct
    torch.manual_seed(0)
    model = TriViewModel(ModelConfig.make(width=2, guidance=False)).eval()
    protocol = {"hu_window": [-100, 200], "spacing": [6.0, 6.0, 6.0]}
    state = {"views": {k: n.state_dict() for k, n in model.nets.items()}, "model_config": model.config.as_dict(),
             "guidance": {"enabled": False}, "preprocessing": {"patch_size": [16, 16, 16], "protocol": protocol}}
    pred = predict(image, state, InferenceConfig(device="cpu", stride=(16, 16, 16)))
    assert pred.label.same_grid(image) and pred.probability.same_grid(image)  # geometry of the input
    grid = pred.info["model_grid"]
    assert grid["spacing"] == [6.0, 6.0, 6.0]
    assert grid["shape_zyx"] == [round(n * 3 / 6) for n in image.shape]  # 3 mm -> 6 mm
    # The same numbers as windowing + resampling by hand, predicting there, resampling back.
    small = resample_image(image.with_array(np.clip(image.array, -100, 200).astype(np.float32)), (6.0, 6.0, 6.0))
    prob = predict_probability(model, zscore(small.array), InferenceConfig(stride=(16, 16, 16)), (16, 16, 16))
    back = to_input_grid(small.with_array(prob.astype(np.float32)), image)
    assert np.allclose(pred.probability.array, back.array, atol=1e-6)
    # Without a protocol the model runs on the input grid itself.
    plain = predict(image, {**state, "preprocessing": {"patch_size": [16, 16, 16]}},
                    InferenceConfig(device="cpu", stride=(16, 16, 16)))
    assert plain.info["model_grid"]["shape_zyx"] == list(image.shape)


def test_resample_annotation_round_trip_on_a_cube():
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:15, 5:15, 5:15] = 1
    ann = SparseAnnotation.from_dense(Volume(label, spacing=(1.0, 1.0, 2.0)))
    reference = resample_image(Volume(label.astype(np.float32), spacing=(1.0, 1.0, 2.0)), (2.0, 2.0, 2.0))
    moved = resample_annotation(ann, reference)
    assert moved.labels.same_grid(reference)
    assert {k: len(v) for k, v in moved.slices().items()} == {"axial": 1, "coronal": 1, "sagittal": 1}
    assert moved.foreground().sum() > 0 and set(np.unique(moved.array)) <= {0, 1, 255}

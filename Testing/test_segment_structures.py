"""Segment beyond one compact blob: pairs, empty painted slices, more slices never hurting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rada.annotation import SparseAnnotation, protocol_slices
from rada.cli import main
from rada.io import read_volume, write_volume
from rada.metrics import dice
from rada.pipeline import segment_case
from rada.shape_prior import extent_matched_warp
from rada.volume import Volume


def two_piece_case(seed: int = 0) -> tuple[Volume, Volume, np.ndarray]:
    """A left/right pair of ellipsoids of different shape and height in noisy tissue; the left one."""
    shape = (40, 44, 64)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    left = ((z - 16) / 8) ** 2 + ((y - 18) / 10) ** 2 + ((x - 18) / 8) ** 2 <= 1
    right = ((z - 24) / 8) ** 2 + ((y - 27) / 9) ** 2 + ((x - 46) / 10) ** 2 <= 1
    truth = left | right
    rng = np.random.default_rng(seed)
    tissue = 100 + 6 * np.sin(x / 5) + 4 * np.cos(y / 7)
    image = np.where(truth, 160.0, tissue) + rng.normal(0, 12, shape)
    geometry = dict(spacing=(0.8, 0.9, 1.1), origin=(-12.0, 5.0, 30.0))
    return (Volume(image.astype(np.float32), **geometry), Volume(truth.astype(np.uint8), **geometry),
            left)


def test_a_pair_painted_with_its_sagittal_slice_through_one_piece_finds_both_pieces():
    image, label, left = two_piece_case()
    truth = label.array > 0
    # Axial and coronal through both pieces; sagittal through the left one only.
    sparse = SparseAnnotation.from_dense(label, {"axial": 21, "coronal": 24, "sagittal": 18})
    right = truth & ~left
    assert sparse.slice_mask("axial", 21)[:, 32:].any() and sparse.slice_mask("coronal", 24)[:, 32:].any()
    assert not (sparse.foreground() & right).any(axis=(0, 1))[:32].any()  # no sagittal paint on it
    out = segment_case(image, sparse).label.array > 0
    assert dice(out & left, left) > 0.9
    # Clipped to the left piece's sagittal outline (the old visual-hull region) it scored 0.83.
    assert dice(out & right, right) > 0.9, "the piece missing on the sagittal plane was not found"
    assert dice(out, truth) > 0.9


def test_a_painted_slice_with_no_structure_is_accepted_and_honoured_as_background():
    image, label, _ = two_piece_case(1)
    truth = label.array > 0
    chosen = {"axial": [21], "coronal": [24], "sagittal": [18]}
    base = SparseAnnotation.from_dense(label, chosen)
    # A sagittal slice in the gap between the pieces: "nothing here" is a valid painting.
    gap = SparseAnnotation.from_dense(label, {**chosen, "sagittal": [18, 31]})
    assert not gap.slice_mask("sagittal", 31).any()
    out_base = segment_case(image, base).label.array > 0
    result = segment_case(image, gap)
    out = result.label.array > 0
    assert not out[..., 31].any()  # honoured as background
    assert result.report["annotated_slices"]["sagittal"] == [18, 31]
    assert dice(out, truth) >= dice(out_base, truth) - 0.01


def test_an_empty_painted_slice_pulls_the_interpolated_shape_towards_nothing():
    """Between a painted slice and an empty one the shape shrinks (signed-distance
    interpolation); the nearest-slice copy it replaces kept it full size up to half way."""
    _, label, _ = two_piece_case()
    one = SparseAnnotation.from_dense(label, {"axial": [21], "coronal": [24], "sagittal": [18]})
    with_empty = SparseAnnotation.from_dense(label, {"axial": [21], "coronal": [24], "sagittal": [18, 29]})
    before = extent_matched_warp(one, 2)[..., 22].sum()
    after = extent_matched_warp(with_empty, 2)[..., 22].sum()
    assert 0 < after < 0.8 * before


def test_empty_painted_slices_do_not_crash_on_a_real_pair(tmp_path, structures_dir):
    """The crashes of issue #10: ``prepare-sparse --slices`` through the gap of a pair, then segment."""
    folder = structures_dir / "ct_abdomen"
    label = read_volume(folder / "labels" / "femurs.nii.gz")
    fg = label.array > 0
    xs = np.flatnonzero(fg.any(axis=(0, 1)))
    gap = int(xs[np.argmax(np.diff(xs))] + 1)  # a sagittal slice between the two femurs
    assert not fg[..., gap].any()
    crop = (slice(0, 60), slice(None), slice(None))  # the femurs' end of the scan keeps the test small
    image = read_volume(folder / "image.nii.gz").crop(crop)
    write_volume(image, tmp_path / "image.nii.gz")
    write_volume(label.crop(crop), tmp_path / "label.nii.gz")
    zs = np.flatnonzero(fg[crop].any(axis=(1, 2)))
    ys = np.flatnonzero(fg[crop].any(axis=(0, 2)))
    slices = f"{gap},{int(ys.mean())},{int(zs.mean())}"
    assert main(["prepare-sparse", str(tmp_path / "label.nii.gz"), "--slices", slices,
                 "--out", str(tmp_path / "sparse.nrrd")]) == 0
    assert main(["segment", str(tmp_path / "image.nii.gz"), "--annotation", str(tmp_path / "sparse.nrrd"),
                 "--out", str(tmp_path / "seg.nii.gz"), "--report", str(tmp_path / "r.json")]) == 0
    seg = read_volume(tmp_path / "seg.nii.gz").array > 0
    assert not seg[..., gap].any()
    assert dice(seg, fg[crop]) > 0.6  # axial and coronal still show both femurs
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["structure_voxels"] == int(seg.sum())


def test_adding_a_painted_slice_never_lowers_dice_on_a_real_case(structures_dir):
    """A development structure of bench/peers_split.json (the two iliopsoas muscles, CT): from the
    largest slice per axis, add the protocol's k=2 slices one axis at a time, then an empty axial
    slice past the structure's end; no step may lose more than 0.01 Dice, and the slices must
    be used (the last painting clearly beats the first)."""
    folder = structures_dir / "ct_abdomen"
    image, label = read_volume(folder / "image.nii.gz"), read_volume(folder / "labels" / "iliopsoas.nii.gz")
    truth = label.array > 0
    chosen = protocol_slices(truth, 1)
    extra = protocol_slices(truth, 2)
    paintings = [chosen]
    for axis in ("axial", "coronal", "sagittal"):
        chosen = {**chosen, axis: sorted(set(chosen[axis]) | {extra[axis][0]})}
        paintings.append(chosen)
    beyond = int(np.flatnonzero(truth.any(axis=(1, 2))).max()) + 2
    assert not truth[beyond].any()
    paintings.append({**chosen, "axial": sorted(chosen["axial"] + [beyond])})
    scores = [dice(segment_case(image, SparseAnnotation.from_dense(label, p)).label.array, truth)
              for p in paintings]
    assert all(b >= a - 0.01 for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > scores[0] + 0.05, scores


def test_the_service_segments_a_painting_whose_only_sagittal_slice_is_empty(tmp_path):
    """Was an "internal" job failure (min() of an empty sequence in the shape prior)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from rada.service.app import create_app
    from rada.service.client import RadaClient
    from rada.service.settings import ServiceSettings
    from service_helpers import TOKEN, ServerThread, ellipsoid_case

    image, annotation, truth = ellipsoid_case((24, 24, 24))
    labels = np.full(truth.shape, 255, np.uint8)
    labels[12], labels[:, 12] = truth[12], truth[:, 12]  # the middle axial and coronal slices
    labels[:, :, 2] = truth[:, :, 2]  # the only sagittal slice, beside the ellipsoid: nothing here
    assert not truth[:, :, 2].any()
    sparse = SparseAnnotation(image.with_array(labels))
    assert sparse.slices()["sagittal"] == [2]
    app = create_app(ServiceSettings(token=TOKEN, work_dir=tmp_path, device="cpu"))
    with ServerThread(app) as srv, RadaClient(srv.url, TOKEN) as client:
        label, report = client.segment(image, sparse, {"preset": "fast"}, timeout=60)
    out = label.array > 0
    assert report["annotated_slices"]["sagittal"] == [2]
    assert not out[:, :, 2].any()
    assert dice(out, truth) > 0.75


@pytest.mark.parametrize("image_name, structure", [("ct_chest", "pulmonary_artery"), ("brain_mri", "brainstem")])
def test_the_protocols_second_painting_loses_at_most_0_01_on_the_cases_where_it_lost_most(
        structures_dir, image_name, structure):
    """The protocol's k = 2 slices (a quarter and three quarters into the extent) replace the
    largest slice of k = 1. On these two development cases that cost 0.021 (the pulmonary
    artery's branches, which the warps miss and the prior outvoted the competition on) and
    0.013 (the brainstem: the parasagittal pair misses the anterior bulge that only the
    midline slice shows, and the classifier over-reaches along the sides past them)."""
    folder = structures_dir / image_name
    image = read_volume(folder / "image.nii.gz")
    label = read_volume(folder / "labels" / f"{structure}.nii.gz")
    truth = label.array > 0
    scores = [dice(segment_case(image, SparseAnnotation.from_dense(label, protocol_slices(truth, k))).label.array,
                   truth) for k in (1, 2)]
    assert scores[1] >= scores[0] - 0.01, scores


@pytest.mark.parametrize("seed", [1, 2])
def test_the_brainstems_second_painting_holds_for_other_forest_seeds(structures_dir, seed):
    """The classifier's forest is seeded (0 by default). On the brainstem, the case nearest the
    step limit, forests grown from seeds 1 and 2 with leaves of 4 samples lost 0.014 and 0.013
    from k = 1 to k = 2; with leaves of 16 (the default now) 0.008 and under."""
    from rada.appearance import AppearanceConfig
    from rada.pipeline import SegmentConfig

    folder = structures_dir / "brain_mri"
    image = read_volume(folder / "image.nii.gz")
    label = read_volume(folder / "labels" / "brainstem.nii.gz")
    truth = label.array > 0
    config = SegmentConfig(appearance=AppearanceConfig(seed=seed))
    scores = [dice(segment_case(image, SparseAnnotation.from_dense(label, protocol_slices(truth, k)),
                                config).label.array, truth) for k in (1, 2)]
    assert scores[1] >= scores[0] - 0.01, scores

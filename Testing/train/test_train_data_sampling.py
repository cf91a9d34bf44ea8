"""rada.train.data's sampler: the two streams, the padding of small cases, the random window
and the axial-plane augmentation, checked on small coded volumes (each voxel's value says
where it came from)."""

from __future__ import annotations

import numpy as np
import pytest

from rada.train.data import LabeledCase, TrainingData, crop_or_pad, iteration_rng, rot_flip, sample_batch
from rada.views import VIEWS

UINT16_MAX = np.iinfo(np.uint16).max


def _case(name: str, shape=(6, 8, 8), offset: float = 0.0) -> LabeledCase:
    """Image = voxel index + offset (every voxel unique); view j (sagittal, coronal, axial)
    has label ``(index + j) % 3 == 0`` and distance j + 1 everywhere but on the annotated
    middle axial slice (0), so every view's label and weight can be told apart."""
    image = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + offset)
    annotated = np.zeros(shape, bool)
    annotated[shape[0] // 2] = True
    labels = {v.name: _view_label(image, j).astype(np.uint8) for j, v in enumerate(VIEWS)}
    distance = {v.name: np.where(annotated, 0, j + 1).astype(np.uint16) for j, v in enumerate(VIEWS)}
    return LabeledCase(name, image, labels, distance, annotated)


def _view_label(image: np.ndarray, j: int) -> np.ndarray:
    return (image.astype(np.int64) + j) % 3 == 0


def test_crop_or_pad_centres_the_padding_and_uses_each_arrays_value():
    a = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7) + 1
    b = np.ones((3, 5, 7), np.uint8)
    out_a, out_b = crop_or_pad([a, b], (6, 8, 7), np.random.default_rng(0), [-5.0, 9])
    assert out_a.shape == out_b.shape == (6, 8, 7)
    # 3 -> 6: 1 before, 2 after; 5 -> 8: 1 before, 2 after; 7 fits
    np.testing.assert_array_equal(out_a[1:4, 1:6, :], a)
    assert (out_a[0] == -5).all() and (out_a[4:] == -5).all() and (out_a[:, 0] == -5).all()
    assert (out_a[:, 6:] == -5).all() and (out_b[1:4, 1:6] == 1).all() and (out_b[0] == 9).all()
    (zero_padded,) = crop_or_pad([a], (4, 5, 7), np.random.default_rng(0))  # default pad value 0
    assert (zero_padded[3] == 0).all() and (zero_padded[:3] == a).all()
    for seed in range(10):  # a padded axis leaves no room for a random shift: the same placement
        (even,) = crop_or_pad([a], (5, 9, 7), np.random.default_rng(seed), [-1.0])
        np.testing.assert_array_equal(even[1:4, 2:7], a)  # 3 -> 5: 1 + 1; 5 -> 9: 2 + 2


def test_crop_or_pad_draws_every_window_and_the_same_one_for_every_array():
    a = np.arange(10, dtype=np.float32).reshape(10, 1, 1) * np.ones((1, 3, 3), np.float32)
    starts = set()
    for seed in range(200):
        x, y = crop_or_pad([a, a * 2], (4, 3, 3), np.random.default_rng(seed))
        assert x.shape == (4, 3, 3)
        np.testing.assert_array_equal(y, 2 * x)
        starts.add(int(x[0, 0, 0]))
        np.testing.assert_array_equal(x[:, 0, 0], np.arange(x[0, 0, 0], x[0, 0, 0] + 4))
    assert starts == set(range(7))  # 0 .. 10 - 4, both ends included


def test_a_non_square_patch_is_only_flipped_or_turned_half_way():
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    seen = {rot_flip([a], np.random.default_rng(s))[0].tobytes() for s in range(100)}
    # rot180 followed by a flip of y is a flip of x and vice versa: two outcomes
    assert seen == {np.flip(a, 1).tobytes(), np.flip(a, 2).tobytes()}
    square = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    outs = [rot_flip([square, square + 100], np.random.default_rng(s)) for s in range(50)]
    assert all(np.array_equal(o[1], o[0] + 100) for o in outs)  # the same transform for every array
    assert all(o[0].flags["C_CONTIGUOUS"] for o in outs)


def test_the_labeled_stream_draws_distinct_cases_when_there_are_enough():
    data = TrainingData([_case("a"), _case("b", offset=1000.0), _case("c", offset=2000.0)], [])
    counts = np.zeros(3, int)
    for t in range(60):
        b = sample_batch(data, t, 0.5, (4, 8, 8), labeled_batch=2, unlabeled_batch=2, augment=False)
        assert b.image.shape == (2, 1, 4, 8, 8) and b.n_labeled == 2  # no unlabeled cases: no stream
        which = (b.image[:, 0].min(axis=(1, 2, 3)) // 1000).astype(int)
        assert which[0] != which[1], t  # without replacement
        counts[which] += 1
    assert (counts > 20).all()
    exact = TrainingData([_case("a"), _case("b", offset=1000.0)], [np.full((6, 8, 8), 5000.0 + i, np.float32)
                                                                  for i in range(2)])
    for t in range(30):  # as many cases as the batch: each case once, in both streams
        b = sample_batch(exact, t, 0.5, (4, 8, 8), labeled_batch=2, unlabeled_batch=2, augment=False)
        assert sorted(b.image[:2, 0].min(axis=(1, 2, 3)) // 1000) == [0, 1], t
        assert sorted(np.unique(b.image[2:]).tolist()) == [5000.0, 5001.0], t
    one = TrainingData([_case("a")], [])
    b = sample_batch(one, 0, 0.5, (4, 8, 8), labeled_batch=3, unlabeled_batch=0)
    assert b.image.shape[0] == 3 and b.n_labeled == 3  # one case, drawn with replacement


def test_the_unlabeled_stream_and_its_size():
    unlabeled = [np.full((6, 8, 8), 5000.0 + i, np.float32) for i in range(3)]
    data = TrainingData([_case("a")], unlabeled)
    b = sample_batch(data, 1, 0.5, (4, 8, 8), labeled_batch=1, unlabeled_batch=2)
    assert b.image.shape == (3, 1, 4, 8, 8) and b.n_labeled == 1
    values = sorted(float(v) for v in np.unique(b.image[1:]))
    assert len(values) == 2 and all(v >= 5000 for v in values)  # two different unlabeled cases
    none = sample_batch(data, 1, 0.5, (4, 8, 8), labeled_batch=1, unlabeled_batch=0)
    assert none.image.shape[0] == 1
    few = TrainingData([_case("a")], unlabeled[:1])
    assert sample_batch(few, 1, 0.5, (4, 8, 8), labeled_batch=1, unlabeled_batch=3).image.shape[0] == 4


def test_a_case_smaller_than_the_patch_is_padded_with_zero_weight_outside():
    case = _case("a", shape=(3, 6, 6), offset=10.0)
    data = TrainingData([case], [np.full((3, 6, 6), 42.0, np.float32)])
    b = sample_batch(data, 0, 0.5, (5, 8, 8), labeled_batch=1, unlabeled_batch=1, augment=False)
    img = b.image[0, 0]
    inside = np.zeros((5, 8, 8), bool)
    inside[1:4, 1:7, 1:7] = True
    np.testing.assert_array_equal(img[inside].reshape(3, 6, 6), case.image)
    assert (img[~inside] == case.image.min()).all()       # padded with the case's minimum
    assert (b.image[1, 0][~inside] == 42.0).all()         # the unlabeled image's own minimum
    for j, v in enumerate(VIEWS):
        w, lab = b.weights[v.name][0], b.labels[v.name][0]
        assert (w[~inside] == 0).all() and (lab[~inside] == 0).all()  # no supervision on padding
        np.testing.assert_array_equal(w[inside].reshape(3, 6, 6), np.where(case.annotated, 1.0, 0.5 ** (j + 1)))
        np.testing.assert_array_equal(lab[inside].reshape(3, 6, 6), case.labels[v.name])
    assert b.image.dtype == np.float32 and b.labels["axial"].dtype == np.int64
    assert b.weights["axial"].dtype == np.float32


def test_augmentation_moves_labels_and_weights_with_the_image_and_views_can_be_chosen():
    case = _case("a", shape=(4, 8, 8))
    data = TrainingData([case], [])
    plain = sample_batch(data, 5, 0.5, (4, 8, 8), labeled_batch=1, unlabeled_batch=0, augment=False)
    np.testing.assert_array_equal(plain.image[0, 0], case.image)
    moved = [sample_batch(data, t, 0.5, (4, 8, 8), labeled_batch=1, unlabeled_batch=0) for t in range(12)]
    assert any(not np.array_equal(m.image[0, 0], case.image) for m in moved)
    for m in moved:
        img = m.image[0, 0]
        for j, v in enumerate(VIEWS):  # each view's own label and weights, moved with the image
            np.testing.assert_array_equal(m.labels[v.name][0], _view_label(img, j))
            np.testing.assert_array_equal(m.weights[v.name][0], np.where((img // 64) == 2, 1.0, 0.5 ** (j + 1)))
    one = sample_batch(data, 0, 0.5, (4, 8, 8), labeled_batch=1, unlabeled_batch=0, views=VIEWS[2:])
    assert set(one.labels) == set(one.weights) == {VIEWS[2].name}


def test_each_iteration_rank_and_seed_has_its_own_draw():
    data = TrainingData([_case("a", shape=(12, 12, 12))], [np.random.default_rng(0).random((12, 12, 12))])
    base = sample_batch(data, 3, 0.5, (4, 4, 4), seed=0, rank=0).image
    np.testing.assert_array_equal(base, sample_batch(data, 3, 0.5, (4, 4, 4), seed=0, rank=0).image)
    np.testing.assert_array_equal(base, sample_batch(data, 3, 0.5, (4, 4, 4)).image)  # defaults: seed 0, rank 0
    for other in ({"seed": 1}, {"rank": 1}):
        assert not np.array_equal(base, sample_batch(data, 3, 0.5, (4, 4, 4), **other).image), other
    draws = {tuple(iteration_rng(s, r, t).integers(0, 2**31, 3)) for s in (0, 1) for r in (0, 1) for t in (0, 1)}
    assert len(draws) == 8


def test_training_data_needs_a_labeled_case():
    with pytest.raises(ValueError, match="^training needs at least one labeled case$"):
        TrainingData([], [np.zeros((4, 4, 4), np.float32)])


def test_the_four_reflections_of_a_square_patch_are_equally_likely():
    # rot90 by k in 0..3, then a flip: each of the 4 reflections has probability 1/4
    # (4000 draws: a standard error of 0.007 around 0.25).
    a = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    rng = np.random.default_rng(0)
    counts: dict[bytes, int] = {}
    for _ in range(4000):
        key = rot_flip([a], rng)[0].tobytes()
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 4
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values()), sorted(counts.values())

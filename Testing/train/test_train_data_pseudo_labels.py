"""rada.train.data's pseudo-labels: what a propagation result becomes, and when the cache
answers instead of a new propagation.

The propagation here is the real ``rada.propagation.propagate`` on a constant image (flat
slices are never registered, so no ANTs run and the result is known exactly: each view
carries its seed masks), in this process (``isolate=False``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rada.annotation import SparseAnnotation
from rada.propagation import PropagationConfig, PropagationResult, ViewPropagation, propagate
from rada.train.data import cached_pseudo_labels, pseudo_labels_from_propagation
from rada.views import VIEWS
from rada.volume import Volume

#: In-process, no opening/closing, no crop: a cheap propagation with a known answer.
CHEAP = PropagationConfig(workers=1, isolate=False, kernel=0, crop=False, stop_at_extent=False)
UINT16_MAX = np.iinfo(np.uint16).max


def _case(shape=(12, 14, 16)) -> tuple[Volume, SparseAnnotation]:
    dense = np.zeros(shape, np.uint8)
    dense[3:9, 4:10, 5:12] = 1
    dense[3:5, 4:6, 5:7] = 0  # a notch: the seed slices differ, so the views differ
    dense[6, 4:10, 12:15] = 1  # a fin one voxel thick: an opening removes it
    ann = SparseAnnotation.from_dense(Volume(dense))
    return Volume(np.full(shape, 3.0, np.float32)), ann


def _result(ann: SparseAnnotation, label: np.ndarray, distance: np.ndarray) -> PropagationResult:
    views = {v.name: ViewPropagation(v.name, label, distance) for v in VIEWS}
    return PropagationResult(views, label.astype(np.uint8))


def test_distances_keep_zero_and_reached_slices_and_mark_the_rest_unreached():
    _, ann = _case()
    label = np.zeros(ann.shape, bool)  # a bool label is accepted; the pseudo-label is uint8
    distance = np.zeros(ann.shape, np.float32)
    distance[1] = 3.0
    distance[2] = -1.0        # 'not reached' markers become the largest distance (weight 0)
    distance[3] = np.nan
    distance[4] = np.inf
    distance[5] = 1e6         # larger than uint16: clipped, not wrapped
    labels, dist, known = pseudo_labels_from_propagation(_result(ann, label, distance), ann)
    for v in VIEWS:
        d = dist[v.name]
        assert d.dtype == np.uint16 and labels[v.name].dtype == np.uint8
        assert (d[0] == 0).all() and (d[1] == 3).all() and (d[6:] == 0).all()
        assert (d[2:6] == UINT16_MAX).all()
        np.testing.assert_array_equal(labels[v.name][known], ann.array[known])  # annotated planes pasted
        assert not labels[v.name][~known].any()
    np.testing.assert_array_equal(known, ann.known())


def test_pseudo_labels_are_the_propagation_with_the_annotation_pasted(tmp_path):
    image, ann = _case()
    expected = propagate(image, ann, CHEAP)
    labels, dist, known = cached_pseudo_labels("c1", image, ann, tmp_path, propagate, CHEAP)
    default = propagate(image, ann, replace(CHEAP, kernel=5))  # the opening changes these labels
    assert any(not np.array_equal(default.views[v.name].label, expected.views[v.name].label) for v in VIEWS)
    for v in VIEWS:
        np.testing.assert_array_equal(labels[v.name], expected.views[v.name].label)
        np.testing.assert_array_equal(dist[v.name], expected.views[v.name].distance)
    # no callable given: rada.propagation.propagate with the given config
    again = cached_pseudo_labels("c2", image, ann, tmp_path, config=CHEAP)
    for v in VIEWS:
        np.testing.assert_array_equal(again[0][v.name], labels[v.name])


def test_a_propagate_callable_without_config_is_called_with_image_and_annotation(tmp_path):
    image, ann = _case()
    seen = []

    def two_arguments(img, annotation):
        seen.append((img, annotation))
        return propagate(img, annotation, CHEAP)

    labels, _, _ = cached_pseudo_labels("c1", image, ann, tmp_path, two_arguments)
    assert len(seen) == 1 and seen[0][0] is image and seen[0][1] is ann
    np.testing.assert_array_equal(labels["axial"], propagate(image, ann, CHEAP).views["axial"].label)


def test_the_cache_is_keyed_by_image_annotation_and_config(tmp_path):
    image, ann = _case()
    calls = []

    def counted(img, annotation, config):
        calls.append(1)
        return propagate(img, annotation, config)

    first = cached_pseudo_labels("c1", image, ann, tmp_path, counted, CHEAP)
    cached_pseudo_labels("c1", image, ann, tmp_path, counted, CHEAP)
    assert len(calls) == 1
    other_image = image.with_array(image.array + 1.0)
    cached_pseudo_labels("c1", other_image, ann, tmp_path, counted, CHEAP)
    assert len(calls) == 2
    cached_pseudo_labels("c1", image, ann, tmp_path, counted, CHEAP)
    assert len(calls) == 3  # the entry now holds the other image's labels
    moved = SparseAnnotation.from_dense(Volume((ann.array == 1).astype(np.uint8)), {"axial": 4, "coronal": 6,
                                                                                    "sagittal": 8})
    relabeled = cached_pseudo_labels("c1", image, moved, tmp_path, counted, CHEAP)
    assert len(calls) == 4
    assert not np.array_equal(relabeled[2], first[2])


def test_only_the_requested_views_are_returned(tmp_path):
    image, ann = _case()
    one = VIEWS[:1]
    labels, dist, _ = cached_pseudo_labels("c1", image, ann, tmp_path, propagate, CHEAP, views=one)
    assert set(labels) == set(dist) == {one[0].name}
    cached = cached_pseudo_labels("c1", image, ann, tmp_path, propagate, CHEAP, views=one)
    assert set(cached[0]) == {one[0].name}


@pytest.mark.parametrize("bad", [np.nan, -2.0])
def test_unreached_markers_of_every_view(bad):
    _, ann = _case()
    distance = np.full(ann.shape, bad, np.float64)
    _, dist, _ = pseudo_labels_from_propagation(_result(ann, np.zeros(ann.shape, np.uint8), distance), ann)
    for v in VIEWS:
        assert (dist[v.name] == UINT16_MAX).all()

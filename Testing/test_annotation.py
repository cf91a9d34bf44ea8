"""Sparse annotations: validation errors, annotated-slice detection and slice picking."""

from __future__ import annotations

import numpy as np
import pytest

from rada.annotation import IGNORE, SparseAnnotation, pick_largest_slices, take_slice
from rada.errors import InputError
from rada.io import read_volume
from rada.views import AXIS_OF, VIEW_NAMES, VIEW_OF_AXIS, VIEWS
from rada.volume import Volume


def _ellipsoid(shape=(20, 24, 28), center=(9, 12, 15), radii=(6, 8, 10)) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + (
        (x - center[2]) / radii[2]) ** 2 <= 1


def test_largest_slices_are_the_centre_planes_of_an_ellipsoid():
    picked = pick_largest_slices(_ellipsoid())
    assert picked == {"axial": [9], "coronal": [12], "sagittal": [15]}


def test_from_dense_keeps_only_the_chosen_slices():
    fg = _ellipsoid()
    sparse = SparseAnnotation.from_dense(Volume(fg.astype(np.uint8)))
    assert sparse.slices() == {"axial": [9], "coronal": [12], "sagittal": [15]}
    known = sparse.known()
    assert known[9].all() and known[:, 12].all() and known[:, :, 15].all()
    # Exactly the three planes are known, and on them the labels equal the dense label.
    assert known.sum() == 24 * 28 + 20 * 28 + 20 * 24 - 28 - 24 - 20 + 1
    np.testing.assert_array_equal(sparse.array[known], fg[known].astype(np.uint8))
    assert (sparse.array[~known] == IGNORE).all()


def test_any_number_of_slices_per_axis_and_explicit_indices():
    fg = _ellipsoid()
    sparse = SparseAnnotation.from_dense(Volume(fg.astype(np.uint8)),
                                         {"axial": [5, 9, 12], "coronal": 12, "sagittal": [10, 15]})
    assert sparse.slices() == {"axial": [5, 9, 12], "coronal": [12], "sagittal": [10, 15]}
    np.testing.assert_array_equal(sparse.slice_mask("axial", 5), fg[5])
    # The CLI form "x,y,z" names sagittal, coronal, axial indices.
    cli = SparseAnnotation.from_dense(Volume(fg.astype(np.uint8)), "15,12,9")
    assert cli.slices() == {"axial": [9], "coronal": [12], "sagittal": [15]}


def test_extent_is_the_box_the_three_slices_imply():
    fg = _ellipsoid()
    sparse = SparseAnnotation.from_dense(Volume(fg.astype(np.uint8)))
    coords = np.argwhere(fg)
    expected = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(coords.min(0), coords.max(0)))
    assert sparse.extent() == expected


def test_real_la_case_slice_picking(la_dir, la_case_ids):
    label = read_volume(la_dir / la_case_ids[0] / "label.nii.gz")
    sparse = SparseAnnotation.from_dense(label).validate(label)
    for name, (index,) in sparse.slices().items():
        axis = {"axial": 0, "coronal": 1, "sagittal": 2}[name]
        areas = (label.array > 0).sum(axis=tuple(i for i in range(3) if i != axis))
        assert areas[index] == areas.max()
    assert sparse.labels.same_grid(label)


@pytest.mark.parametrize("case, message", [
    ("bad_values", "only 0 \\(background\\), 1 \\(structure\\) and 255"),
    ("no_axial", "no annotated axial slice"),
    ("no_sagittal", "no annotated sagittal slice"),
    ("empty", "marks no structure voxel"),
    ("geometry", "geometry differs from the image: spacing"),
    ("shape", "geometry differs from the image: size"),
])
def test_every_validation_error_is_one_clear_line(case, message):
    fg = _ellipsoid()
    image = Volume(np.zeros(fg.shape, np.float32))
    arr = np.full(fg.shape, IGNORE, np.uint8)
    arr[9], arr[:, 12], arr[:, :, 15] = fg[9], fg[:, 12], fg[:, :, 15]
    if case == "bad_values":
        arr[0, 0, 0] = 7
    elif case == "no_axial":
        arr[9, 0, 0] = IGNORE  # an axial plane with a hole is not annotated (the other planes still are)
    elif case == "no_sagittal":
        arr = np.full(fg.shape, IGNORE, np.uint8)
        arr[9], arr[:, 12] = fg[9], fg[:, 12]
    elif case == "empty":
        arr[arr == 1] = 0
    elif case == "geometry":
        image = Volume(image.array, spacing=(1.0, 1.0, 2.0))
    elif case == "shape":
        image = Volume(np.zeros((20, 24, 29), np.float32))
    with pytest.raises(InputError, match=message) as err:
        SparseAnnotation(Volume(arr)).validate(image)
    assert "\n" not in str(err.value)


def test_from_dense_rejects_empty_labels_and_out_of_range_slices():
    with pytest.raises(InputError, match="no foreground"):
        SparseAnnotation.from_dense(Volume(np.zeros((4, 4, 4), np.uint8)))
    with pytest.raises(InputError, match="outside the volume"):
        SparseAnnotation.from_dense(Volume(_ellipsoid().astype(np.uint8)), "15,12,40")
    with pytest.raises(InputError, match="three indices"):
        SparseAnnotation.from_dense(Volume(_ellipsoid().astype(np.uint8)), "15,12")
    with pytest.raises(InputError, match="is not annotated"):
        SparseAnnotation.from_dense(Volume(_ellipsoid().astype(np.uint8))).slice_mask("axial", 3)


def test_views_have_one_order_and_an_explicit_array_axis():
    """The view order (s, c, a) and the array axis of each view are two different things."""
    assert VIEW_NAMES == ("sagittal", "coronal", "axial")
    assert [v.name for v in VIEWS] == list(VIEW_NAMES) and all(v.axis == AXIS_OF[v.name] for v in VIEWS)
    assert all(VIEW_OF_AXIS[AXIS_OF[name]] == name for name in VIEW_NAMES)
    volume = np.zeros((4, 5, 6))  # [z, y, x]: an axial slice is y x, a coronal one z x, a sagittal one z y
    shapes = {name: take_slice(volume, AXIS_OF[name], 0).shape for name in VIEW_NAMES}
    assert shapes == {"axial": (5, 6), "coronal": (4, 6), "sagittal": (4, 5)}
    fg = np.zeros((4, 5, 6), bool)
    fg[1:3, 1:4, 2:5] = True
    assert list(SparseAnnotation.from_dense(Volume(fg.astype(np.uint8))).slices()) == list(VIEW_NAMES)

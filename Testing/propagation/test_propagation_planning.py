"""rada.propagation's planning and assembly, checked without a single ANTs registration.

Registrations return the identity when a slice is flat or thinner than ANTs can register
(``MIN_REGISTRATION_SIZE``), so on a constant image, or on slices a few pixels wide, every
chain carries its seed's mask unchanged. What is left is the method's bookkeeping, which
these tests pin against an independent reading of METHOD.md 2: each slice takes its nearest
annotated slice (ties to the lower one), an empty painted slice stays background, the
per-axis ranges and crop box, the distance maps, the opening/closing after every warp,
the >= 2-of-3 fusion with annotated voxels exact, and the registration cache keys
(invariant to a linear change of intensity, sensitive to content, spacing and parameters).
``isolate=False`` keeps everything in this process (no worker start-up), which is what
makes these tests fast enough for mutation testing.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from rada.annotation import IGNORE, SparseAnnotation, crop_box, take_slice
from rada.errors import InputError
from rada.propagation import PropagationConfig, RegistrationCache, propagate
from rada.views import AXIS_OF, VIEW_NAMES
from rada.volume import Volume

#: In-process, no opening/closing, the whole volume: only planning and assembly remain.
PLAIN = PropagationConfig(workers=1, isolate=False, kernel=0, crop=False, stop_at_extent=False)


def _paint(shape, axial: dict[int, np.ndarray], coronal: dict[int, np.ndarray],
           sagittal: dict[int, np.ndarray]) -> SparseAnnotation:
    """A sparse annotation (255 elsewhere) from 2D masks per axis and slice index."""
    sparse = np.full(shape, IGNORE, np.uint8)
    for a, masks in ((0, axial), (1, coronal), (2, sagittal)):
        for i, mask in masks.items():
            index = (slice(None),) * a + (i,)
            plane = sparse[index]
            plane[:] = np.where(plane == 1, 1, mask.astype(np.uint8))  # a voxel painted 1 on any plane stays 1
    return SparseAnnotation(Volume(sparse))


def _expected_view(ann: SparseAnnotation, axis: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """METHOD.md 2 with identity registrations: every slice of ``[lo, hi)`` takes the mask of
    its nearest annotated slice (ties to the lower one), an empty seed mask stays empty,
    annotated voxels are pasted; the distance is to the nearest annotated slice."""
    seeds = ann.annotated_slices(axis)
    shape = ann.shape
    label = np.zeros(shape, np.uint8)
    distance = np.zeros(shape, np.int16)
    for i in range(shape[axis]):
        gaps = [abs(i - s) for s in seeds]
        nearest = seeds[int(np.argmin(gaps))]  # argmin takes the first: the lower seed on a tie
        index = (slice(None),) * axis + (i,)
        distance[index] = min(gaps)
        if lo <= i < hi:
            label[index] = ann.slice_mask(axis, nearest)
    known = ann.known()
    label[known] = ann.foreground()[known]
    return label, distance


def _two_seed_case(shape=(31, 6, 7)) -> tuple[Volume, SparseAnnotation]:
    """Constant image; two different axial masks (z = 6 and 17), an empty axial slice (z = 26),
    one coronal and one sagittal plane through the structure."""
    z, y, x = shape
    low, high = np.zeros((y, x), bool), np.zeros((y, x), bool)
    low[1:4, 1:5] = True
    high[2:6, 3:7] = True
    coronal = np.zeros((z, x), bool)
    coronal[6:18, 1:6] = True
    sagittal = np.zeros((z, y), bool)
    sagittal[6:18, 1:5] = True
    ann = _paint(shape, {6: low, 17: high, 26: np.zeros((y, x), bool)}, {3: coronal}, {3: sagittal})
    return Volume(np.full(shape, 7.0, np.float32)), ann


def _check_views(result, ann: SparseAnnotation, ranges: dict[str, tuple[int, int]]) -> None:
    for name in VIEW_NAMES:
        a = AXIS_OF[name]
        label, distance = _expected_view(ann, a, *ranges[name])
        view = result.views[name]
        assert view.axis == name
        np.testing.assert_array_equal(view.label, label, err_msg=name)
        np.testing.assert_array_equal(view.distance, distance, err_msg=name)
        assert view.label.dtype == np.uint8 and view.distance.dtype == np.int16


def test_every_slice_takes_its_nearest_seed_and_an_empty_seed_stays_background():
    image, ann = _two_seed_case()
    result = propagate(image, ann, PLAIN)
    _check_views(result, ann, {name: (0, ann.shape[AXIS_OF[name]]) for name in VIEW_NAMES})
    axial = result.views["axial"].label
    free = ~ann.known()
    # 11 and 12 lie between the seeds 6 and 17 (annotated voxels of other planes aside)
    assert (axial[11][free[11]] == ann.slice_mask(0, 6)[free[11]]).all()
    assert (axial[12][free[12]] == ann.slice_mask(0, 17)[free[12]]).all()
    assert axial[21][free[21]].any()  # nearer 17 than the painted-empty slice 26
    assert not axial[22:26][free[22:26]].any() and not axial[27:][free[27:]].any()  # nearer 26: background
    # the views agree that the structure is there; the fusion is the 2-of-3 majority
    votes = sum(result.views[n].label.astype(int) for n in VIEW_NAMES)
    expected = (votes >= 2).astype(np.uint8)
    known = ann.known()
    expected[known] = ann.foreground()[known]
    np.testing.assert_array_equal(result.fused, expected)
    assert result.fused.dtype == np.uint8
    assert result.stats["ranges"] == {name: [0, ann.shape[AXIS_OF[name]]] for name in ("axial", "coronal", "sagittal")}
    assert result.stats["box"] == [[0, n] for n in ann.shape]


def test_a_tie_between_two_seeds_goes_to_the_lower_one():
    shape = (11, 5, 5)
    low, high = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    low[0:2, :] = True
    high[3:5, :] = True
    full = np.ones((11, 5), bool)
    ann = _paint(shape, {2: low, 8: high}, {2: full}, {2: full})
    result = propagate(Volume(np.zeros(shape, np.float32)), ann, PLAIN)
    axial = result.views["axial"].label
    free = ~ann.known()
    assert (axial[5][free[5]] == low[free[5]]).all()  # 5 is 3 from both seeds
    assert (axial[6][free[6]] == high[free[6]]).all()
    assert (result.views["axial"].distance[:, 0, 0] == [2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]).all()


def test_fusion_is_a_two_of_three_majority_with_annotated_voxels_exact():
    # One seed per axis with masks that overlap in different places: voxels with exactly
    # one, two or three votes all exist, so the threshold is pinned at two.
    shape = (9, 8, 10)
    axial = np.zeros((8, 10), bool)
    axial[1:7, 1:9] = True
    coronal = np.zeros((9, 10), bool)
    coronal[2:7, 2:6] = True
    sagittal = np.zeros((9, 8), bool)
    sagittal[1:8, 3:7] = True
    ann = _paint(shape, {4: axial}, {4: coronal}, {5: sagittal})
    result = propagate(Volume(np.zeros(shape, np.float32)), ann, PLAIN)
    votes = sum(result.views[n].label.astype(int) for n in VIEW_NAMES)
    known = ann.known()
    for v in (1, 2, 3):
        assert ((votes == v) & ~known).any(), v
    assert not result.fused[(votes == 1) & ~known].any()
    assert result.fused[(votes >= 2) & ~known].all()
    np.testing.assert_array_equal(result.fused[known], ann.foreground()[known])


def test_ranges_stop_at_the_extent_seen_on_the_other_axes_plus_the_slack():
    image, ann = _two_seed_case()
    extent = ann.extent()
    assert extent[0] == slice(6, 18)
    for slack in (0, 2):
        cfg = PropagationConfig(workers=1, isolate=False, kernel=0, crop=False, extent_slack=slack)
        result = propagate(image, ann, cfg)
        ranges = {name: (max(0, extent[AXIS_OF[name]].start - slack),
                         min(ann.shape[AXIS_OF[name]], extent[AXIS_OF[name]].stop + slack)) for name in VIEW_NAMES}
        assert result.stats["ranges"] == {n: list(r) for n, r in ranges.items()}
        _check_views(result, ann, ranges)


def _corner_painting() -> tuple[tuple[int, int, int], SparseAnnotation]:
    """A small structure near one corner of a 40 x 24 x 30 volume, one painted slice per axis."""
    shape = (40, 24, 30)
    axial = np.zeros((24, 30), bool)
    axial[3:7, 2:8] = True
    coronal = np.zeros((40, 30), bool)
    coronal[5:12, 2:8] = True
    sagittal = np.zeros((40, 24), bool)
    sagittal[5:12, 3:7] = True
    return shape, _paint(shape, {8: axial}, {5: coronal}, {4: sagittal})


def test_the_crop_box_bounds_the_ranges_and_the_planes():
    # A structure near one corner of a larger volume: the box is the extent plus the margin,
    # rounded outward to the quantum; nothing outside it is labeled except annotated voxels.
    shape, ann = _corner_painting()
    image = Volume(np.ones(shape, np.float32))
    for margin, quantum in ((2, 1), (3, 8)):
        cfg = PropagationConfig(workers=1, isolate=False, kernel=0, stop_at_extent=False, margin=margin,
                                crop_quantum=quantum)
        result = propagate(image, ann, cfg)
        box = crop_box(ann, margin, 0.0, quantum)
        assert result.stats["box"] == [[s.start, s.stop] for s in box]
        assert result.stats["ranges"] == {name: [box[AXIS_OF[name]].start, box[AXIS_OF[name]].stop] for name in VIEW_NAMES}
        inside = np.zeros(shape, bool)
        inside[box] = True
        known = ann.known()
        for name in VIEW_NAMES:
            label = result.views[name].label
            assert not label[~inside & ~known].any(), name
            a = AXIS_OF[name]
            expected, _ = _expected_view(ann, a, box[a].start, box[a].stop)
            expected[~inside & ~known] = 0
            np.testing.assert_array_equal(label, expected, err_msg=name)


def test_without_the_crop_every_slice_of_the_volume_is_reached():
    # The corner structure of the test above with crop=False: the box is the whole volume,
    # and without the extent stop every slice takes its nearest seed, far outside the crop.
    shape, ann = _corner_painting()
    assert crop_box(ann, PLAIN.margin, 0.0, PLAIN.crop_quantum) != tuple(slice(0, n) for n in shape)
    result = propagate(Volume(np.ones(shape, np.float32)), ann, PLAIN)
    assert result.stats["box"] == [[0, n] for n in shape]
    _check_views(result, ann, {name: (0, shape[AXIS_OF[name]]) for name in VIEW_NAMES})
    assert result.views["axial"].label[39, 3, 2] == 1  # 31 slices beyond the seed, off the painted planes


def test_every_warped_slice_is_opened_then_closed_by_the_kernel():
    # The seed carries a one-pixel spur and a one-pixel hole: after each step a 3x3 opening
    # removes the spur and the closing fills the hole. A two-pixel block in the slice's
    # corner survives: the border neither erodes nor grows a mask (OpenCV's convention).
    shape = (7, 16, 16)
    seed = np.zeros((16, 16), bool)
    seed[4:12, 4:12] = True
    seed[7, 7] = False        # hole
    seed[8, 12:14] = True     # spur, one pixel thick
    seed[0:2, 0:3] = True     # a block two pixels thick in the corner
    empty = np.zeros((7, 16), bool)
    ann = _paint(shape, {1: seed}, {15: empty}, {15: empty})
    cfg = PropagationConfig(workers=1, isolate=False, kernel=3, crop=False, stop_at_extent=False)
    result = propagate(Volume(np.zeros(shape, np.float32)), ann, cfg)
    expected = np.zeros((16, 16), bool)
    expected[4:12, 4:12] = True
    expected[0:2, 0:3] = True
    axial = result.views["axial"].label
    known = ann.known()
    for z in (0, 2, 3, 6):  # both directions, first and later steps
        free = ~known[z]
        np.testing.assert_array_equal(axial[z].astype(bool)[free], expected[free], err_msg=str(z))
    assert axial[1][7, 7] == 0 and axial[1][8, 13] == 1  # the painted slice itself stays exact
    # flat slices (16 x 16, large enough for ANTs) are never registered: identity transforms
    assert result.stats["identity_transforms"] == result.stats["registrations_run"] > 0
    # kernel 0 carries the seed mask unchanged
    plain = propagate(Volume(np.zeros(shape, np.float32)), ann, PLAIN)
    np.testing.assert_array_equal(plain.views["axial"].label[4][~known[4]], seed[~known[4]])


def test_a_chain_whose_label_vanishes_under_the_opening_stays_empty():
    # A seed thinner than the kernel vanishes at the first step: the rest of its chain is
    # background even though the next seed's territory is not.
    shape = (12, 10, 10)
    thin = np.zeros((10, 10), bool)
    thin[4, 2:8] = True
    thick = np.zeros((10, 10), bool)
    thick[2:8, 2:8] = True
    ann = _paint(shape, {1: thin, 10: thick}, {9: np.zeros((12, 10), bool)}, {9: np.zeros((12, 10), bool)})
    cfg = PropagationConfig(workers=1, isolate=False, kernel=3, crop=False, stop_at_extent=False)
    result = propagate(Volume(np.zeros(shape, np.float32)), ann, cfg)
    axial = result.views["axial"].label
    known = ann.known()
    for z in (0, 2, 3, 4, 5):
        assert not axial[z][~known[z]].any(), z
    for z in (6, 7, 8, 9, 11):
        np.testing.assert_array_equal(axial[z][~known[z]], thick[~known[z]], err_msg=str(z))


# --- the registration cache's keys ------------------------------------------------------

def _noise_case(seed: int = 0, shape=(14, 6, 6), spacing=(1.0, 1.0, 1.0)) -> tuple[Volume, SparseAnnotation]:
    """Integer-valued random slices a few pixels wide (identity transforms, distinct cache keys)."""
    rng = np.random.default_rng(seed)
    image = Volume(rng.integers(0, 1000, size=shape).astype(np.float32), spacing)
    mask = np.zeros(shape[1:], bool)
    mask[1:5, 1:5] = True
    coronal = np.zeros((shape[0], shape[2]), bool)
    coronal[3:11, 1:5] = True
    sagittal = np.zeros((shape[0], shape[1]), bool)
    sagittal[3:11, 1:5] = True
    ann = _paint(shape, {7: mask}, {3: coronal}, {3: sagittal})
    return image, SparseAnnotation(Volume(ann.array, spacing))


#: Keys only: no opening (which would end chains on these tiny slices), the whole volume.
KEYS = PropagationConfig(workers=1, isolate=False, kernel=0, crop=False, stop_at_extent=False)


def test_cache_keys_ignore_a_change_of_intensity_scale_and_offset():
    image, ann = _noise_case()
    cache = RegistrationCache()
    first = propagate(image, ann, KEYS, cache=cache)
    planned = first.stats["registrations_planned"]
    # 13 axial + 5 coronal + 5 sagittal steps, all different noise: every pair is its own key
    assert planned == 13 + 5 + 5 == first.stats["registrations_run"] == len(cache)
    assert first.stats["registrations_cached"] == 0 and first.stats["identity_transforms"] == planned
    # x4 is exact in floating point, and so is every normalised slice: all cached
    scaled = propagate(image.with_array(image.array * 4.0), ann, KEYS, cache=cache)
    assert scaled.stats["registrations_cached"] == planned and scaled.stats["registrations_run"] == 0
    # an offset: exact with integer voxels and the min/max percentiles (no interpolation)
    wide = replace(KEYS, percentiles=(0.0, 100.0))
    assert propagate(image, ann, wide, cache=cache).stats["registrations_cached"] == 0  # new parameters
    shifted = propagate(image.with_array(image.array + 1000.0), ann, wide, cache=cache)
    assert shifted.stats["registrations_cached"] == planned
    # brightening one voxel changes the scale of its slices only (min/max: no clip)
    spiky = image.array.copy()
    spiky[7, 2, 2] += 5000.0
    changed = propagate(image.with_array(spiky), ann, wide, cache=cache).stats
    assert changed["registrations_run"] == 2 + 2 + 2  # the pairs on each axis that hold that voxel's slice


def test_cache_keys_ignore_voxels_clipped_by_the_percentiles():
    # With the 10th/90th percentiles, neither the darkest nor the brightest voxel of a slice
    # sets the scale; both are clipped to 0 and 1, so making them more extreme changes no key.
    image, ann = _noise_case()
    cfg = replace(KEYS, percentiles=(10.0, 90.0))
    cache = RegistrationCache()
    planned = propagate(image, ann, cfg, cache=cache).stats["registrations_planned"]
    extreme = image.array.copy()
    extreme.reshape(-1)[np.argmax(extreme)] += 5000.0
    extreme.reshape(-1)[np.argmin(extreme)] -= 5000.0
    st = propagate(image.with_array(extreme), ann, cfg, cache=cache).stats
    assert st["registrations_cached"] == planned and st["registrations_run"] == 0


def test_cache_keys_change_with_content_spacing_and_registration_parameters():
    image, ann = _noise_case()
    cfg = KEYS
    cache = RegistrationCache()
    planned = propagate(image, ann, cfg, cache=cache).stats["registrations_planned"]
    other, _ = _noise_case(seed=1)
    assert propagate(other, ann, cfg, cache=cache).stats["registrations_cached"] == 0
    for changed in (replace(KEYS, seed=3), replace(KEYS, transform="SyN"), replace(KEYS, resolution="half")):
        assert propagate(image, ann, changed, cache=cache).stats["registrations_cached"] == 0, changed
    stretched, stretched_ann = _noise_case(spacing=(1.0, 1.0, 2.0))
    st = propagate(stretched, stretched_ann, cfg, cache=cache).stats
    # z spacing 2: the coronal and sagittal planes change, the 13 axial pairs (y, x) do not
    assert st["registrations_cached"] == 13 and st["registrations_planned"] == planned
    # a refinement that moves the axial seed from z = 7 to z = 9 reuses every pair it shares:
    # all but (8 <- 9) and (7 <- 8); slice 8 was registered before, but against slice 7
    image2, _ = _noise_case()
    moved = ann.array.copy()
    moved[9] = ann.array[7]
    moved[7] = IGNORE
    moved[7, 3, :], moved[7, :, 3] = ann.array[7, 3, :], ann.array[7, :, 3]  # the coronal and sagittal planes
    moved_ann = SparseAnnotation(Volume(moved))
    assert moved_ann.annotated_slices(0) == [9] and moved_ann.annotated_slices(1) == [3]
    fresh = RegistrationCache()
    propagate(image2, ann, cfg, cache=fresh)
    st = propagate(image2, moved_ann, cfg, cache=fresh).stats
    assert st["registrations_planned"] == planned
    assert st["registrations_cached"] == planned - 2 and st["registrations_run"] == 2


def test_identical_slice_pairs_are_registered_once():
    # A constant image: every axial pair (and every coronal / sagittal pair) is the same
    # pair of normalised slices, so each axis needs one registration.
    image, ann = _two_seed_case()
    result = propagate(image, ann, PLAIN)
    assert result.stats["registrations_planned"] == 3
    assert result.stats["registrations_run"] == 3 and result.stats["identity_transforms"] == 3


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_distance_is_measured_along_the_view_axis_only(axis):
    image, ann = _two_seed_case()
    result = propagate(image, ann, PLAIN)
    name = [n for n, a in AXIS_OF.items() if a == axis][0]
    d = result.views[name].distance
    seeds = ann.annotated_slices(axis)
    for i in range(ann.shape[axis]):
        sl = take_slice(d, axis, i)
        assert (sl == min(abs(i - s) for s in seeds)).all(), (name, i)


#: What ``propagate`` reports in ``stats``, as its docstring lists it.
STATS_KEYS = {"registrations_planned", "registrations_run", "registrations_cached", "registrations_skipped",
              "identity_transforms", "workers", "transform", "resolution", "ranges", "box", "seconds"}


def test_progress_counts_the_registrations_and_ends_at_one():
    image, ann = _noise_case()
    calls: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    result = propagate(image, ann, KEYS, progress=lambda f, m: calls.append((f, m)))
    elapsed = time.perf_counter() - t0
    seconds = result.stats["seconds"]
    assert 0 <= seconds <= elapsed + 1e-3  # the call's own wall time, rounded to ms
    assert isinstance(seconds, float) and seconds == round(seconds, 3)
    planned = result.stats["registrations_planned"]
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and calls[-1] == (1.0, "propagation done")
    # one report per registration, each the share of the planned pairs done so far
    assert fractions[1:-1] == [k / planned for k in range(1, planned + 1)]
    assert all(m == "registering neighbouring slices" for _, m in calls[:-1])
    st = result.stats
    assert set(st) == STATS_KEYS
    assert (st["transform"], st["resolution"], st["workers"]) == ("SyNRA", "full", 1)
    assert st["registrations_skipped"] == 0 and st["seconds"] >= 0
    cached = RegistrationCache()
    propagate(image, ann, KEYS, cache=cached)
    again: list[float] = []
    propagate(image, ann, KEYS, cache=cached, progress=lambda f, m: again.append(f))
    assert again == [1.0, 1.0]  # everything cached: done from the start


def test_a_painted_empty_slice_plans_no_registration_for_its_chains():
    # Axial seeds 7 (the structure) and 12 (painted empty): 7 reaches 8, 9 and 6..0; the
    # chains of 12 are empty from the start, so 10, 11 and 13 need no registration.
    image, ann = _noise_case()
    arr = ann.array.copy()
    arr[12] = np.where(arr[12] == IGNORE, 0, arr[12])
    ann2 = SparseAnnotation(Volume(arr))
    assert ann2.annotated_slices(0) == [7, 12]
    st = propagate(image, ann2, KEYS).stats
    assert st["registrations_planned"] == st["registrations_run"] == 9 + 5 + 5
    assert st["registrations_skipped"] == 0


def _vanishing_case() -> tuple[Volume, SparseAnnotation]:
    image = Volume(np.random.default_rng(3).integers(0, 100, size=(12, 6, 6)).astype(np.float32))
    thin = np.zeros((6, 6), bool)
    thin[2, 1:5] = True
    side = np.zeros((12, 6), bool)
    side[1, 1:5] = True
    return image, _paint((12, 6, 6), {1: thin}, {2: side}, {2: side})


def test_a_chain_that_vanishes_skips_the_rest_of_its_registrations():
    image, ann = _vanishing_case()
    reports: list[tuple[float, str]] = []
    st = propagate(image, ann, replace(KEYS, kernel=3), progress=lambda f, m: reports.append((f, m))).stats
    # every chain empties at its first step (a line one pixel thick under a 3x3 opening):
    # 6 first steps run; axial 3..11 (9), coronal and sagittal 4, 5 and 0 (3 each) are skipped
    assert (st["registrations_planned"], st["registrations_run"], st["registrations_skipped"]) == (21, 6, 15)
    assert set(st) == STATS_KEYS
    # a skipped registration counts as done: the last registration's report is the whole plan
    assert reports[-2] == (1.0, "registering neighbouring slices") and reports[-1] == (1.0, "propagation done")
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)


def test_progress_of_a_single_registration():
    # A constant image whose coronal and sagittal planes are painted empty: the axial chains
    # need one registration in all (every pair of slices is the same pair).
    shape = (9, 6, 7)
    square = np.zeros((6, 7), bool)
    square[1:5, 1:6] = True
    ann = _paint(shape, {4: square}, {0: np.zeros((9, 7), bool)}, {0: np.zeros((9, 6), bool)})
    reports: list[float] = []
    st = propagate(Volume(np.full(shape, 3.0, np.float32)), ann, PLAIN, progress=lambda f, m: reports.append(f)).stats
    assert (st["registrations_planned"], st["registrations_run"]) == (1, 1)
    assert reports == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("case", ["two seeds", "noise", "vanishing"])
def test_several_workers_give_the_single_worker_result(case):
    # workers=2 takes the scheduling path that submits every pair up front (nearest steps
    # first); in this process each registration finishes on submission, so nothing is left
    # to cancel and every planned pair runs once.
    image, ann = {"two seeds": _two_seed_case, "noise": _noise_case, "vanishing": _vanishing_case}[case]()
    cfg = replace(KEYS, kernel=3)
    one = propagate(image, ann, cfg)
    reports: list[tuple[float, str]] = []
    two = propagate(image, ann, replace(cfg, workers=2), progress=lambda f, m: reports.append((f, m)))
    calls = [f for f, _ in reports]
    assert {m for _, m in reports[:-1]} == {"registering neighbouring slices"} and reports[-1] == (1.0, "propagation done")
    for name in VIEW_NAMES:
        np.testing.assert_array_equal(two.views[name].label, one.views[name].label, err_msg=name)
        np.testing.assert_array_equal(two.views[name].distance, one.views[name].distance)
        assert two.views[name].axis == name
    np.testing.assert_array_equal(two.fused, one.fused)
    st = two.stats
    assert st["workers"] == 2 and one.stats["workers"] == 1
    assert st["registrations_planned"] == one.stats["registrations_planned"] == st["registrations_run"]
    assert st["registrations_skipped"] == 0 and st["identity_transforms"] == st["registrations_run"]
    assert calls[-1] == 1.0 and calls == sorted(calls)

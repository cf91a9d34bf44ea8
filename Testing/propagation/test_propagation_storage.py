"""rada.propagation's storage: the registration cache (memory, LRU bound, folder on disk) and
saving / loading a propagation result, checked without ANTs (fast enough for mutation testing).

A transform record is what ANTs' files become, ``((name, bytes), ...)`` in ``fwdtransforms``
order, and ``()`` for the identity: the cache must give back exactly what it was given, from
memory or from its folder, and only whole entries.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil

import numpy as np
import pytest

from rada.annotation import SparseAnnotation
from rada.errors import InputError
from rada.propagation import PropagationConfig, RegistrationCache, load_propagation, propagate, save_propagation
from rada.propagation.cache import pair_key
from rada.propagation.config import PropagationResult, ViewPropagation
from rada.views import VIEW_NAMES
from rada.volume import Volume

AFFINE_AND_WARP = (("t0_r0GenericAffine.mat", b"affine \x00\x01"), ("t1_r1Warp.nii.gz", b"warp \xff"))


# --- the registration cache ---------------------------------------------------------------

def test_memory_cache_gives_back_what_it_was_given_and_counts_entries():
    cache = RegistrationCache()
    assert len(cache) == 0 and cache.get("a") is None and "a" not in cache
    cache.put("a", AFFINE_AND_WARP)
    cache.put("b", ())  # the identity: an empty record is an entry, not a miss
    assert cache.get("a") == AFFINE_AND_WARP and cache.get("b") == ()
    assert "a" in cache and "b" in cache and "c" not in cache
    assert len(cache) == 2
    cache.put("a", ())  # a later put replaces
    assert cache.get("a") == () and len(cache) == 2


def test_max_entries_drops_the_least_recently_used():
    cache = RegistrationCache(max_entries=2)
    cache.put("a", AFFINE_AND_WARP)
    cache.put("b", ())
    assert cache.get("a") == AFFINE_AND_WARP  # a is now the most recent
    cache.put("c", ())
    assert len(cache) == 2
    assert cache.get("b") is None and cache.get("a") == AFFINE_AND_WARP and cache.get("c") == ()
    cache.put("a", AFFINE_AND_WARP)  # refreshing a, then d pushes out c
    cache.put("d", ())
    assert cache.get("c") is None and "a" in cache and "d" in cache
    unbounded = RegistrationCache()
    for i in range(50):
        unbounded.put(str(i), ())
    assert len(unbounded) == 50


def test_a_folder_cache_is_read_back_by_a_new_cache(tmp_path):
    folder = tmp_path / "deep" / "reg"  # made, parents included
    first = RegistrationCache(folder)
    first.put("k1", AFFINE_AND_WARP)
    first.put("k2", ())
    assert sorted(os.listdir(folder)) == ["k1", "k2"]  # no temporary folder left
    assert sorted(os.listdir(folder / "k1")) == ["done", "t0_r0GenericAffine.mat", "t1_r1Warp.nii.gz"]
    assert (folder / "k1" / "t1_r1Warp.nii.gz").read_bytes() == b"warp \xff"
    second = RegistrationCache(folder, max_entries=1)
    assert len(second) == 0
    assert second.get("k1") == AFFINE_AND_WARP  # in fwdtransforms order
    assert len(second) == 1  # what the folder gave is remembered in memory too
    assert second.get("k2") == () and "k2" in second and len(second) == 1  # the bound still holds
    assert second.get("k3") is None and "k3" not in second
    third = RegistrationCache(folder)
    assert third.get("k1") == AFFINE_AND_WARP and third.get("k2") == () and len(third) == 2
    shutil.rmtree(folder)  # once read, entries are served from memory
    assert third.get("k1") == AFFINE_AND_WARP and third.get("k2") == ()


def test_a_folder_entry_without_its_done_marker_is_a_miss(tmp_path):
    # A writer killed half-way leaves no 'done': the entry must not be read (nor half of it).
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "t0_r0GenericAffine.mat").write_bytes(b"affine")
    cache = RegistrationCache(tmp_path)
    assert cache.get("half") is None and "half" not in cache
    cache.put("half", AFFINE_AND_WARP)  # kept in memory; the stray folder is left alone
    assert cache.get("half") == AFFINE_AND_WARP and RegistrationCache(tmp_path).get("half") is None


def test_a_finished_folder_entry_is_kept_when_another_writer_stores_the_same_key(tmp_path):
    # Two processes may register the same pair; the first finished entry stays, the second
    # put is not an error and leaves no temporary folder.
    RegistrationCache(tmp_path).put("k", AFFINE_AND_WARP)
    late = RegistrationCache(tmp_path)
    late.put("k", (("t0_other.mat", b"other"),))
    assert late.get("k") == (("t0_other.mat", b"other"),)  # its own memory has its record
    assert RegistrationCache(tmp_path).get("k") == AFFINE_AND_WARP
    assert os.listdir(tmp_path) == ["k"]
    # a folder that is there but not finished does not stop a put either
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "junk").write_bytes(b"x")
    RegistrationCache(tmp_path).put("stale", ())
    assert RegistrationCache(tmp_path).get("stale") is None


def test_the_cache_keys_are_32_hex_digits_of_the_pair_in_order():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 6), dtype=np.float32), rng.random((5, 6), dtype=np.float32)
    params = PropagationConfig().registration_params()
    key = pair_key(a, b, (1.0, 1.0), params)
    assert len(key) == 32 and int(key, 16) >= 0
    assert pair_key(a, b, (1.0, 1.0), dict(params)) == key
    assert pair_key(b, a, (1.0, 1.0), params) != key  # fixed and moving are not interchangeable
    assert pair_key(a.T.copy().T, b, (1.0, 1.0), params) == key  # memory layout does not matter


# --- the configuration's derived values ------------------------------------------------------

def test_registration_params_hold_everything_that_changes_a_registration():
    params = PropagationConfig().registration_params()
    assert params == {"transform": "SyNRA", "ants_seed": 1, "percentiles": [1.0, 99.0], "downsample": 1,
                      "reg_iterations": [40, 20, 0]}
    json.dumps(params)  # JSON-ready (it is hashed into the cache keys)
    half = PropagationConfig(transform="SyN", seed=6, percentiles=(2.0, 98.0), resolution="half")
    assert half.registration_params() == {"transform": "SyN", "ants_seed": 7, "percentiles": [2.0, 98.0],
                                          "downsample": 2, "reg_iterations": [40, 20, 0]}
    # settings that only decide which slices are reached are not part of it
    assert PropagationConfig(margin=3, kernel=3, workers=2, crop=False).registration_params() == params


def test_n_workers_is_the_setting_or_the_cpus_this_process_may_use(monkeypatch):
    assert PropagationConfig(workers=3).n_workers() == 3
    assert PropagationConfig(workers=1).n_workers() == 1
    assert PropagationConfig().n_workers() == len(os.sched_getaffinity(0))
    for cpus in ({0}, {0, 2, 5}):  # the CPUs this process may run on, not all of the machine's
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=cpus: cpus)
        assert PropagationConfig().n_workers() == len(cpus)
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS and Windows have no affinity: all CPUs
    for count, expected in ((3, 3), (1, 1), (None, 1)):  # os.cpu_count() may not know: one worker
        monkeypatch.setattr(os, "cpu_count", lambda count=count: count)
        assert PropagationConfig().n_workers() == expected


@pytest.mark.parametrize("field, value, message", [
    ("transform", "Affine", "unknown transform 'Affine'; use one of SyNRA, SyN"),
    ("resolution", "slow", "unknown registration resolution 'slow'; use one of full, half"),
    ("workers", 0, "workers must be at least 1, got 0"),
    ("margin", -1, "margin and extent_slack must not be negative"),
    ("extent_slack", -1, "margin and extent_slack must not be negative"),
    ("crop_quantum", 0, "crop_quantum must be at least 1, got 0"),
    ("kernel", -1, "kernel must be 0, 1 or an odd size, got -1"),
    ("kernel", 2, "kernel must be 0, 1 or an odd size, got 2"),
    ("kernel", 4, "kernel must be 0, 1 or an odd size, got 4"),
    ("seed", -1, "seed must be in [0, 2**31 - 2], got -1"),
    ("seed", 2**31 - 1, "seed must be in [0, 2**31 - 2], got 2147483647"),
    ("start_method", "nope", "start_method 'nope' is not available here; use one of "
                             + ", ".join(multiprocessing.get_all_start_methods())),
    ("percentiles", (50.0, 10.0), "percentiles must satisfy 0 <= low < high <= 100, got (50.0, 10.0)"),
    ("percentiles", (-1.0, 99.0), "percentiles must satisfy"),
    ("percentiles", (1.0, 100.5), "percentiles must satisfy"),
    ("percentiles", (5.0, 5.0), "percentiles must satisfy"),
])
def test_validated_names_the_bad_field_in_one_line(field, value, message):
    with pytest.raises(InputError) as info:
        PropagationConfig(**{field: value}).validated()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize("edge", [
    {"workers": 1}, {"margin": 0, "extent_slack": 0}, {"crop_quantum": 1}, {"kernel": 0}, {"kernel": 1},
    {"kernel": 3}, {"seed": 0}, {"seed": 2**31 - 2}, {"percentiles": (0.0, 100.0)}, {"percentiles": (0.0, 0.5)},
    {"transform": "SyN", "resolution": "half"}, {"start_method": "spawn"},
])
def test_validated_accepts_the_edge_of_every_range(edge):
    cfg = PropagationConfig(**edge)
    assert cfg.validated() is cfg


# --- saving and loading a result ---------------------------------------------------------------

def _small_result() -> PropagationResult:
    """A real (identity-registration) propagation of a constant 9 x 6 x 7 volume, in process."""
    shape = (9, 6, 7)
    sparse = np.full(shape, 255, np.uint8)
    sparse[4] = 0
    sparse[4, 1:4, 2:5] = 1
    sparse[:, 2, :] = np.where(sparse[:, 2, :] == 1, 1, 0)
    sparse[:, :, 3] = np.where(sparse[:, :, 3] == 1, 1, 0)
    cfg = PropagationConfig(workers=1, isolate=False, kernel=0, crop=False, stop_at_extent=False)
    return propagate(Volume(np.full(shape, 3.0, np.float32)), SparseAnnotation(Volume(sparse)), cfg)


def test_a_saved_result_loads_back_equal(tmp_path):
    result = _small_result()
    path = save_propagation(result, tmp_path / "prop.npz")
    assert path == tmp_path / "prop.npz" and os.listdir(tmp_path) == ["prop.npz"]
    back = load_propagation(path)
    assert list(back.views) == list(result.views) == list(VIEW_NAMES)
    for name, view in result.views.items():
        got = back.views[name]
        assert got.axis == view.axis == name
        np.testing.assert_array_equal(got.label, view.label)
        np.testing.assert_array_equal(got.distance, view.distance)
        assert got.label.dtype == np.uint8 and got.distance.dtype == np.int16
    np.testing.assert_array_equal(back.fused, result.fused)
    assert back.fused.dtype == np.uint8
    assert back.stats == json.loads(json.dumps(result.stats))  # tuples come back as lists
    with np.load(path, allow_pickle=False) as z:
        assert z["fused"].dtype == np.uint8  # stored compactly, whatever the result held


def test_any_label_type_is_stored_as_uint8_and_odd_stats_as_text(tmp_path):
    label = np.zeros((2, 3, 4), bool)
    label[1, 1, 1:3] = True
    distance = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    result = PropagationResult({"axial": ViewPropagation("axial", label, distance)}, label.astype(np.int64),
                               {"where": tmp_path, "n": 3})
    back = load_propagation(save_propagation(result, tmp_path / "r.npz"))
    assert back.views["axial"].label.dtype == np.uint8 and back.fused.dtype == np.uint8
    np.testing.assert_array_equal(back.views["axial"].label, label)
    np.testing.assert_array_equal(back.fused, label)
    np.testing.assert_array_equal(back.views["axial"].distance, distance)
    assert back.stats == {"where": str(tmp_path), "n": 3}


def test_loading_refuses_what_is_not_a_saved_result(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_propagation(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read propagation result"):
        load_propagation(tmp_path / "junk.npz")
    np.savez(tmp_path / "nofused.npz", label_axial=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(InputError, match="cannot read propagation result"):
        load_propagation(tmp_path / "nofused.npz")
    # no pickle: an object array (which could run code when unpickled) is refused
    np.savez(tmp_path / "pickled.npz", fused=np.zeros((2, 2, 2), np.uint8), stats=np.asarray([{"a": 1}], object))
    with pytest.raises(InputError, match="cannot read propagation result"):
        load_propagation(tmp_path / "pickled.npz")

"""rada.propagation.registration: real ANTs on small synthetic slices whose answer is known.

A smooth disc moved 5 pixels between two 32 x 32 slices: a good registration carries the
moving disc's mask onto the fixed disc (Dice 0.62 before, 0.98-1.0 after with seeds 1-8);
each registration takes about 0.1 s, so these tests stay fast enough for mutation testing.
Every in-process ANTs call is seeded (unseeded, ANTs draws its seed anew). The worker-process
test starts spawned workers (a few seconds each: they import ANTs).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ants  # imported here once: every test below calls ANTs
import numpy as np
import pytest

from rada.annotation import IGNORE, SparseAnnotation
from rada.metrics import dice
from rada.propagation import PropagationConfig, RegistrationCache, propagate
from rada.propagation.cache import pair_key
from rada.propagation.registration import (
    MIN_REGISTRATION_SIZE,
    RegistrationExecutor,
    Warper,
    ants_seed,
    normalise,
    register_pair,
    register_task,
)
from rada.volume import Volume

#: ANTs' forward transforms of a SyN-type registration, in the order apply_transforms takes them.
NAMES = ["t0_r1Warp.nii.gz", "t1_r0GenericAffine.mat"]


def _disc(side: int, cx: float, radius: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """A normalised slice with a smooth bright disc centred at (side / 2, cx), and its mask."""
    yy, xx = np.mgrid[:side, :side].astype(float)
    r = np.hypot(yy - side / 2, xx - cx)
    image = (100.0 / (1.0 + np.exp((r - radius) * 1.5))).astype(np.float32)
    return normalise(image, (0.5, 99.5)), r <= radius


def _pair(side: int = 32, radius: float = 8.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fixed, moving, fixed mask, moving mask): the disc moved 5 pixels along x."""
    fixed, fixed_mask = _disc(side, side / 2 + 2.5, radius)
    moving, moving_mask = _disc(side, side / 2 - 2.5, radius)
    return fixed, moving, fixed_mask, moving_mask


def _params(**kw) -> dict:
    return PropagationConfig(**kw).registration_params()


def _field(record, tmp: Path) -> ants.ANTsImage:
    """The displacement field of a record, read back with ANTs."""
    path = tmp / "field.nii.gz"
    path.write_bytes(dict(record)[NAMES[0]])
    return ants.image_read(str(path))


@pytest.fixture(autouse=True)
def _seeded_ants(monkeypatch):
    """In-process ANTs calls get a fixed seed (restored after the test)."""
    monkeypatch.setattr(ants.config, "_random_seed", 1)


# --- normalise ------------------------------------------------------------------------------

def test_normalise_maps_the_percentiles_to_0_and_1_and_clips_beyond():
    a = np.arange(100, dtype=np.int32).reshape(10, 10)
    out = normalise(a, (10.0, 90.0))
    lo, hi = np.percentile(a.astype(np.float64), (10.0, 90.0))
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_allclose(out, np.clip((a - lo) / (hi - lo), 0.0, 1.0), rtol=1e-6, atol=1e-7)
    assert out.min() == 0.0 and out.max() == 1.0 and (out == 0.0).sum() == 10 and (out == 1.0).sum() == 10
    for flat in (np.full((4, 5), 3, np.int16), np.full((4, 5), -2.5, np.float64)):
        zero = normalise(flat, (0.5, 99.5))  # nothing to scale: all zero, not NaN
        assert zero.dtype == np.float32 and zero.shape == (4, 5) and not zero.any()


# --- register_pair --------------------------------------------------------------------------

def test_a_moved_disc_is_registered_and_its_label_warped_onto_the_fixed_disc(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # ANTs' own temporary files too
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    fixed, moving, fixed_mask, moving_mask = _pair()
    spacing = (2.0, 2.0)
    record = register_pair(fixed, moving, spacing, _params())
    assert [name for name, _ in record] == NAMES and all(data for _, data in record)
    assert list((tmp_path / "tmp").iterdir()) == list((tmp_path / "cwd").iterdir()) == []  # all in a cleaned folder
    assert capfd.readouterr().out == ""  # ANTs ran quietly
    field = _field(record, tmp_path)
    assert field.shape == (32, 32) and field.spacing == spacing  # full resolution, physical spacing
    warper = Warper(tmp_path / "warp")
    (tmp_path / "warp").mkdir()
    warped = warper.warp(moving_mask, "k", record, spacing)
    assert warped.dtype == bool and warped.shape == moving_mask.shape
    assert dice(moving_mask, fixed_mask) < 0.65 and dice(warped, fixed_mask) > 0.93  # measured 0.62 -> 1.0
    # the transform is physical: the same record applied on 1 mm pixels moves the label too little
    assert dice(Warper(tmp_path / "warp").warp(moving_mask, "k2", record, (1.0, 1.0)), fixed_mask) < 0.8  # 0.62-0.67
    assert register_task((fixed, moving, spacing, _params())) and not register_task((fixed, fixed * 0, spacing, _params()))


def test_half_resolution_registers_slices_downsampled_2x_when_they_stay_large_enough(tmp_path):
    for side, expected_shape, expected_spacing in ((16, (8, 8), (4.0, 4.0)), (15, (15, 15), (2.0, 2.0))):
        fixed, moving, _, _ = _pair(side, 4.0)
        field = _field(register_pair(fixed, moving, (2.0, 2.0), _params(resolution="half")), tmp_path)
        # 16 // 2 = 8 pixels is still registrable, 15 // 2 = 7 is not: 15 stays at full resolution
        assert (field.shape, field.spacing) == (expected_shape, expected_spacing), side
    fixed, moving, fixed_mask, moving_mask = _pair()
    record = register_pair(fixed, moving, (1.0, 1.0), _params(resolution="half"))
    assert _field(record, tmp_path).shape == (16, 16)
    # the coarse transform still applies to the full-resolution label: 0.62 before
    assert dice(Warper(tmp_path).warp(moving_mask, "k", record, (1.0, 1.0)), fixed_mask) > 0.8  # measured 0.87-0.95


def test_half_resolution_registers_both_slices_linearly_resampled_to_twice_the_spacing(tmp_path):
    # The reference: ANTs itself on the two slices resampled (linear interpolation) to twice
    # the spacing, with the same transform, iterations and seed.
    fixed, moving, _, _ = _pair()
    spacing, params = (1.5, 1.0), _params(resolution="half")
    record = register_pair(fixed, moving, spacing, params)
    f, m = (ants.resample_image(ants.from_numpy(a, spacing=spacing), (3.0, 2.0), use_voxels=False, interp_type=0)
            for a in (fixed, moving))
    out = ants.registration(f, m, type_of_transform="SyNRA", outprefix=str(tmp_path / "r"),
                            reg_iterations=(40, 20, 0), verbose=False)
    assert record == tuple((f"t{i}_{Path(p).name}", Path(p).read_bytes()) for i, p in enumerate(out["fwdtransforms"]))


def test_the_transform_type_and_the_seed_decide_the_registration():
    fixed, moving, _, _ = _pair()
    spacing = (1.0, 1.0)

    def run(seed: int, **kw):
        with ants_seed(seed):
            return register_pair(fixed, moving, spacing, _params(**kw))
    first = run(3)
    assert run(3) == first  # the same seed: the same bytes
    assert run(4) != first  # ANTs samples the metric at random: the seed is used
    assert run(3, transform="SyN") != first  # SyN starts from an affine, SyNRA from rigid then affine


def test_slices_too_small_flat_or_unregistrable_carry_the_label_over(monkeypatch):
    params = _params()
    small, _ = _disc(MIN_REGISTRATION_SIZE - 1, 3.0, 2.0)
    wide = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (MIN_REGISTRATION_SIZE - 1, 1))
    assert register_pair(small, small[::-1], (1.0, 1.0), params) == ()
    assert register_pair(wide, wide[:, ::-1].copy(), (1.0, 1.0), params) == ()  # 7 x 30: too thin
    assert register_pair(wide.T.copy(), wide.T[::-1].copy(), (1.0, 1.0), params) == ()  # 30 x 7
    fixed, moving, _, _ = _pair(MIN_REGISTRATION_SIZE, 2.0)
    assert [n for n, _ in register_pair(fixed, moving, (1.0, 1.0), params)] == NAMES  # the smallest registered
    fixed, moving, _, _ = _pair()
    flat = np.zeros_like(fixed)
    assert register_pair(flat, moving, (1.0, 1.0), params) == ()
    assert register_pair(fixed, flat, (1.0, 1.0), params) == ()
    for error in (RuntimeError, ValueError):
        def fail(*args, error=error, **kwargs):
            raise error("ANTs failed")
        monkeypatch.setattr(ants, "registration", fail)
        assert register_pair(fixed, moving, (1.0, 1.0), params) == ()


# --- ants_seed and Warper -------------------------------------------------------------------

def test_ants_seed_holds_for_the_block_and_is_restored_even_after_an_error(monkeypatch):
    monkeypatch.setattr(ants.config, "_random_seed", 123)
    with ants_seed(7):
        assert ants.config._random_seed == 7
    assert ants.config._random_seed == 123
    with pytest.raises(KeyError), ants_seed(8):
        assert ants.config._random_seed == 8
        raise KeyError("inside")
    assert ants.config._random_seed == 123


def test_the_warper_writes_each_transform_once_and_copies_a_label_under_the_identity(tmp_path):
    fixed, moving, fixed_mask, moving_mask = _pair()
    record = register_pair(fixed, moving, (1.0, 1.0), _params())
    warper = Warper(tmp_path)
    first = warper.warp(moving_mask, "abc", record, (1.0, 1.0))
    assert sorted(p.name for p in (tmp_path / "abc").iterdir()) == sorted(NAMES)
    assert [(tmp_path / "abc" / n).read_bytes() for n, _ in record] == [d for _, d in record]
    # ANTs' nearest-neighbour resampling of the label (no blending of 0 and 1 at the edge)
    ref = ants.from_numpy(np.zeros(moving_mask.shape, np.float32))
    nearest = ants.apply_transforms(ref, ants.from_numpy(moving_mask.astype(np.float32)),
                                    [str(tmp_path / "abc" / n) for n, _ in record], interpolator="nearestNeighbor")
    np.testing.assert_array_equal(first, nearest.numpy() > 0.5)
    # a key is materialised once: a second warp under it reuses the files it wrote
    other = register_pair(moving, fixed, (1.0, 1.0), _params())
    np.testing.assert_array_equal(warper.warp(moving_mask, "abc", other, (1.0, 1.0)), first)
    assert dice(warper.warp(moving_mask, "back", other, (1.0, 1.0)), fixed_mask) < 0.4  # the other way: 0.24-0.26
    label = moving_mask.astype(np.uint8)
    same = warper.warp(label, "identity", (), (1.0, 1.0))
    assert same is not label and not (tmp_path / "identity").exists()
    np.testing.assert_array_equal(same, label)


# --- RegistrationExecutor -------------------------------------------------------------------

_INHERITED: list[int] = []


def _worker_state() -> tuple:
    """What a registration sees where it runs (module-level: the pool pickles it)."""
    return (os.getpid(), os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"),
            os.environ.get("ANTS_RANDOM_SEED"), ants.config._random_seed, len(_INHERITED))


def test_in_process_the_executor_runs_at_once_under_its_ants_seed(monkeypatch):
    monkeypatch.setattr(ants.config, "_random_seed", None)
    cfg = PropagationConfig(isolate=False)
    with RegistrationExecutor(cfg, 2, 11) as pool:
        fut = pool.submit(_worker_state)
        assert fut.done() and multiprocessing.active_children() == []
        pid, _, _, seed, _ = fut.result()
    assert (pid, seed) == (os.getpid(), 11) and ants.config._random_seed is None


def test_isolated_workers_are_fresh_spawned_processes_with_one_itk_thread_and_the_seed(monkeypatch):
    _claim_cpus(monkeypatch, 4)
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
    monkeypatch.setenv("ANTS_RANDOM_SEED", "99")
    _INHERITED.append(1)  # a forked worker would inherit this; a spawned one imports the module afresh
    fixed, moving, _, _ = _pair()
    params = _params()
    try:
        with RegistrationExecutor(PropagationConfig(), 1, 11) as pool:
            assert multiprocessing.active_children() == []  # nothing started before the first submission
            state = pool.submit(_worker_state).result()
            record = pool.submit(register_task, (fixed, moving, (1.0, 1.0), params)).result()
            queued = [pool.submit(os.getpid) for _ in range(3)]
            assert len(multiprocessing.active_children()) == 1  # ``workers`` processes, not one per CPU
            assert {f.result() for f in queued} == {pid for pid, *_ in [state]}
        assert multiprocessing.active_children() == []  # and ends them on exit
    finally:
        _INHERITED.clear()
    pid, threads, env_seed, seed, inherited = state
    assert pid != os.getpid() and inherited == 0
    assert (threads, env_seed, seed) == ("1", "11", 11)
    assert [n for n, _ in record] == NAMES
    # the same pair in another worker started with the same seed: the same transform (also
    # where this process would give ITK one thread: 1 and 2 threads give other bytes); leaving
    # the block on an error cancels what is still queued instead of running it
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    with pytest.raises(KeyError), RegistrationExecutor(PropagationConfig(), 1, 11) as pool:
        assert pool.submit(register_task, (fixed, moving, (1.0, 1.0), params)).result() == record
        sleeps = [pool.submit(time.sleep, 1.0) for _ in range(5)]
        raise KeyError("stop")
    assert sleeps[-1].cancelled() and sum(f.cancelled() for f in sleeps) >= 3


def _claim_cpus(monkeypatch, n: int) -> None:
    """Make this process look like it has ``n`` CPUs (what a pool sized by the CPU count reads)."""
    monkeypatch.setattr(os, "cpu_count", lambda: n)
    monkeypatch.setattr(os, "process_cpu_count", lambda: n, raising=False)


# --- the chain run with real transforms -----------------------------------------------------

def _drifting_disc(n_slices: int = 10, side: int = 32) -> tuple[Volume, np.ndarray]:
    """A smooth bright disc (radius 8) that moves 1 pixel along x per axial slice, and its mask."""
    zz, yy, xx = np.mgrid[:n_slices, :side, :side].astype(float)
    r = np.hypot(yy - side / 2, xx - 10.0 - zz)
    image = 100.0 / (1.0 + np.exp((r - 8.0) * 1.5))
    return Volume(image.astype(np.float32), (2.0, 1.0, 3.0)), r <= 8.0  # x, y, z spacing


def test_chains_warp_each_label_by_the_registration_of_its_own_slice_pair(tmp_path):
    # In this process: the axial chains follow the drifting disc (carrying the
    # seed mask over unchanged would not), and each cached transform is the registration of
    # its neighbouring slices under the configured seed + 1.
    image, mask = _drifting_disc()
    sparse = np.full(mask.shape, IGNORE, np.uint8)
    sparse[4] = mask[4]
    sparse[:, 0, :] = 0  # coronal and sagittal planes painted empty at the edge: axial chains only
    sparse[:, :, 0] = 0
    ann = SparseAnnotation(Volume(sparse, image.spacing))
    cfg = PropagationConfig(workers=1, isolate=False, crop=False, stop_at_extent=False, seed=5)
    cache = RegistrationCache()
    result = propagate(image, ann, cfg, cache=cache)
    st = result.stats
    assert (st["registrations_run"], st["identity_transforms"], st["registrations_skipped"]) == (9, 0, 0)
    axial = result.views["axial"].label.astype(bool)
    for z in range(10):
        assert dice(axial[z], mask[z]) > 0.94, z  # measured 0.99-1.0
    assert max(dice(mask[4], mask[z]) for z in (0, 1, 7, 8, 9)) < 0.77  # the seed's mask carried over
    params = cfg.registration_params()
    spacing2d = (1.0, 2.0)  # the axial plane's (y, x) spacing: the transforms are physical
    slices = [normalise(image.array[z], cfg.percentiles) for z in range(image.shape[0])]
    with ants_seed(cfg.seed + 1):
        for fixed, moving in ((5, 4), (3, 4), (9, 8)):  # the label goes from ``moving`` to ``fixed``
            key = pair_key(slices[fixed], slices[moving], spacing2d, params)
            cached = cache.get(key)
            assert [name for name, _ in cached] == NAMES, (fixed, moving)
            # The cached transform is this pair's, in this direction: it carries the moving slice's
            # mask onto the fixed slice's (the disc drifts 1 pixel a slice), as a fresh
            # registration does. (Bytes match only with one ITK thread: with more, ANTs' sampled
            # metric differs between runs; the seed itself is pinned by the seed test above.)
            fresh = register_pair(slices[fixed], slices[moving], spacing2d, params)
            before = dice(mask[moving], mask[fixed])
            for record in (cached, fresh):
                warped = Warper(tmp_path).warp(mask[moving], "k", record, spacing2d)
                assert dice(warped, mask[fixed]) > max(0.97, before + 0.03), (fixed, moving, before)
    # a second call takes every transform from the cache and warps by it again
    again = propagate(image, ann, cfg, cache=cache)
    assert (again.stats["registrations_cached"], again.stats["registrations_run"]) == (9, 0)
    np.testing.assert_array_equal(again.views["axial"].label, result.views["axial"].label)
    # two workers (nearest steps first across the chains) register the same pairs. Each worker
    # runs ITK on one thread and this process may run it on more, and ANTs' sampled metric then
    # differs in the last digits: the labels agree to a few boundary voxels, not bit for bit.
    two = propagate(image, ann, replace(cfg, workers=2))
    assert two.stats["workers"] == 2
    two_axial = two.views["axial"].label.astype(bool)
    assert dice(two_axial, axial) > 0.99
    for z in range(10):
        assert dice(two_axial[z], mask[z]) > 0.94, z


def test_an_isolated_run_holds_as_many_worker_processes_as_it_uses(monkeypatch):
    # Two workers asked on a machine that looks like it has 4 CPUs: two spawned processes
    # register (the pool is not sized by the CPU count), and the labels still follow the disc.
    _claim_cpus(monkeypatch, 4)
    image, mask = _drifting_disc()
    sparse = np.full(mask.shape, IGNORE, np.uint8)
    sparse[4] = mask[4]
    sparse[:, 0, :] = 0
    sparse[:, :, 0] = 0
    children: list[int] = []
    result = propagate(image, SparseAnnotation(Volume(sparse, image.spacing)),
                       PropagationConfig(workers=2, crop=False, stop_at_extent=False),
                       progress=lambda f, m: children.append(len(multiprocessing.active_children())))
    assert result.stats["workers"] == 2 and result.stats["registrations_run"] == 9
    assert children[0] == 0 and max(children) == 2  # none before the first registration
    assert multiprocessing.active_children() == []
    assert min(dice(result.views["axial"].label[z], mask[z]) for z in range(10)) > 0.9

"""Dense pseudo-labels from a sparse annotation by slice-to-slice registration (METHOD.md 2).

For every annotated slice of every axis, its label is carried outward along that axis, one
slice at a time, in both directions: the neighbouring 2D image slices are registered with
ANTs (``SyNRA`` by default), the previous slice's label is warped with nearest-neighbour
interpolation and cleaned with a ``kernel x kernel`` opening and closing, and the chain goes
on (DeSCO, CVPR 2023). What differs from the reference code:

* The registrations of neighbouring image pairs do not depend on the labels, so they run in
  a process pool (one ITK thread per worker; parallelism across slice pairs), while the
  cheap label warps are chained in the calling process as the transforms arrive.
* Work is restricted to the annotated extent (``SparseAnnotation.extent()``) plus a margin,
  and each axis stops at the structure's extent seen on the other two annotated axes; the
  "warped label is empty" rule still applies (an empty label stays empty, so the rest of
  that chain's registrations are cancelled).
* Registrations are deterministic: ANTs reads a random seed of 0 as "seed from the clock"
  (measured: such runs differ), so ``PropagationConfig.seed`` is passed to ANTs as
  ``seed + 1``. The ITK thread count changes the transforms too (measured), so every
  registration runs in a worker process with one ITK thread, even with one worker: then
  sequential, parallel and repeated runs give identical results.
* A :class:`RegistrationCache`, keyed by the content of the two (cropped, normalised) image
  slices and the registration parameters, lets a second call on the same image (refinement:
  more annotated slices) reuse every registration it already ran; it lives in memory and,
  optionally, in a directory on disk.

Outputs (:class:`PropagationResult`): per view (``axial``/``coronal``/``sagittal``, the view's
axis being its propagation axis) a pseudo-label on the full grid with every annotated voxel
pasted in, and the distance in slices from the nearest annotated slice of that axis
(:func:`rada.train.schedules.voxel_weights` turns it into the voxel weights ``alpha**d``, 1 on
annotated voxels);
and a fused 3D estimate, the majority (>= 2 of 3) of the three views with annotated voxels
exact. Each slice takes the propagation from its nearest annotated slice on that axis
(ties go to the lower slice); slices never reached are background.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from rada.annotation import SparseAnnotation, crop_box, take_slice
from rada.errors import InputError
from rada.safe_write import atomic_folder, atomic_path
from rada.views import AXIS_OF, VIEW_NAMES
from rada.volume import Volume

#: Transforms ANTs may run between neighbouring slices.
TRANSFORMS = ("SyNRA", "SyN")
#: Registration resolutions: ``full`` = ANTs defaults on the slices; ``half`` registers slices
#: downsampled 2x in-plane (the transform is physical, so it is applied to the full-resolution label).
RESOLUTIONS: dict[str, dict[str, Any]] = {
    "full": {"downsample": 1, "reg_iterations": (40, 20, 0)},
    "half": {"downsample": 2, "reg_iterations": (40, 20, 0)},
}
#: Slices smaller than this (pixels, either in-plane side) are not registered: the label is
#: carried over unchanged (ANTs' 4x shrink factors need some room).
MIN_REGISTRATION_SIZE = 8

ProgressFn = Callable[[float, str], None]
#: A transform between two slices as ANTs writes it: ``(file name, bytes)`` in the order of
#: ``fwdtransforms``; an empty tuple means identity (slice too small or featureless).
TransformRecord = tuple[tuple[str, bytes], ...]


# --- configuration and results ----------------------------------------------------------

@dataclass(frozen=True)
class PropagationConfig:
    """How to propagate; every default follows METHOD.md section 2.

    ``transform``: ANTs ``type_of_transform`` between neighbouring slices (``SyNRA`` or ``SyN``).
    ``resolution``: ``full`` (ANTs defaults) or ``half`` (slices registered downsampled 2x).
    ``seed``: registration seed (given to ANTs as ``seed + 1``: ANTs ignores 0).
    ``workers``: registration processes (None = the CPUs this process may use).
    ``margin``: voxels added around the annotated extent when ``crop`` is on.
    ``kernel``: side of the square opening/closing after every warp (0 or 1 = none).
    ``stop_at_extent``: stop each axis at the structure's extent seen on the other annotated
    axes (plus ``extent_slack`` slices); off = go to the crop box (or volume) edge.
    ``crop``: register only inside the annotated extent plus ``margin`` (off = full slices).
    ``percentiles``: per-slice intensity clip before registration.
    ``crop_quantum``: the crop box's bounds are rounded outward to multiples of this, so that
    a refinement whose extent grows a little keeps the box, and so its cached registrations.
    ``start_method``: how the pool starts workers. ``spawn`` (default) is safe in a process
    that holds threads (torch, a server), but like any multiprocessing program, a script
    that calls :func:`propagate` needs ``if __name__ == "__main__":``.
    ``isolate``: run registrations in worker processes with one ITK thread each, even with
    one worker (off = in this process: faster to start, but the transforms then depend on
    this process's ITK thread count, so results may differ from the isolated ones).
    """

    transform: str = "SyNRA"
    resolution: str = "full"
    seed: int = 0
    workers: int | None = None
    margin: int = 10
    kernel: int = 5
    stop_at_extent: bool = True
    extent_slack: int = 0
    crop: bool = True
    percentiles: tuple[float, float] = (1.0, 99.0)
    crop_quantum: int = 8
    start_method: str = "spawn"
    isolate: bool = True

    def validated(self) -> PropagationConfig:
        """Self, or an :class:`InputError` naming the bad field."""
        if self.transform not in TRANSFORMS:
            raise InputError(f"unknown transform {self.transform!r}; use one of {', '.join(TRANSFORMS)}")
        if self.resolution not in RESOLUTIONS:
            raise InputError(f"unknown registration resolution {self.resolution!r}; use one of {', '.join(RESOLUTIONS)}")
        if self.workers is not None and int(self.workers) < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        if self.margin < 0 or self.extent_slack < 0:
            raise InputError("margin and extent_slack must not be negative")
        if self.crop_quantum < 1:
            raise InputError(f"crop_quantum must be at least 1, got {self.crop_quantum}")
        if self.kernel < 0 or (self.kernel > 1 and self.kernel % 2 == 0):
            raise InputError(f"kernel must be 0, 1 or an odd size, got {self.kernel}")
        if not 0 <= self.seed < 2**31 - 1:
            raise InputError(f"seed must be in [0, 2**31 - 2], got {self.seed}")
        import multiprocessing

        if self.start_method not in multiprocessing.get_all_start_methods():
            raise InputError(f"start_method {self.start_method!r} is not available here; use one of "
                             f"{', '.join(multiprocessing.get_all_start_methods())}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        return self

    def registration_params(self) -> dict[str, Any]:
        """Everything that changes a registration's result (part of the cache key)."""
        return {"transform": self.transform, "ants_seed": self.seed + 1, "percentiles": list(self.percentiles),
                **{k: list(v) if isinstance(v, tuple) else v for k, v in RESOLUTIONS[self.resolution].items()}}

    def n_workers(self) -> int:
        if self.workers is not None:
            return int(self.workers)
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - macOS / Windows
            return max(1, os.cpu_count() or 1)


@dataclass
class ViewPropagation:
    """One view's pseudo-label and each voxel's distance (slices) to its nearest seed slice."""

    axis: str            # the view's propagation axis: 'axial', 'coronal' or 'sagittal'
    label: np.ndarray    # uint8 0/1, full grid, annotated voxels pasted in
    distance: np.ndarray  # int16, full grid: |slice - nearest annotated slice| along ``axis``


@dataclass
class PropagationResult:
    """Per-view pseudo-labels, the fused 3D estimate and run statistics."""

    views: dict[str, ViewPropagation]
    fused: np.ndarray                      # uint8 0/1, majority of the views, annotated voxels exact
    stats: dict[str, Any] = field(default_factory=dict)


# --- registration cache -----------------------------------------------------------------

class RegistrationCache:
    """Slice-pair registrations kept between calls (in memory; optionally also on disk).

    Keys are content hashes of the two cropped, normalised slices, their spacing and the
    registration parameters: a new call on the same image reuses every pair it shares with
    earlier calls, and a changed image or crop can never hit a stale entry. ``max_entries``
    bounds the in-memory part (least recently used entries go first); the directory keeps
    everything (one sub-folder of ANTs transform files per key, written atomically).
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_entries: int | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_entries = max_entries
        self._memory: OrderedDict[str, TransformRecord] = OrderedDict()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> TransformRecord | None:
        """The transform stored under ``key``, or None."""
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if self.directory is not None:
            folder = self.directory / key
            if (folder / "done").exists():
                names = sorted(p.name for p in folder.iterdir() if p.name.startswith("t"))
                record = tuple((n, (folder / n).read_bytes()) for n in names)
                self._remember(key, record)
                return record
        return None

    def put(self, key: str, record: TransformRecord) -> None:
        """Store ``record`` under ``key`` (in memory, and on disk if the cache has a directory)."""
        self._remember(key, record)
        if self.directory is not None and not (self.directory / key / "done").exists():
            try:
                with atomic_folder(self.directory / key) as tmp:
                    for name, data in record:
                        (tmp / name).write_bytes(data)
                    (tmp / "done").write_bytes(b"")
            except InputError:  # another process stored the same key first: keep theirs
                pass

    def _remember(self, key: str, record: TransformRecord) -> None:
        self._memory[key] = record
        self._memory.move_to_end(key)
        if self.max_entries is not None:
            while len(self._memory) > self.max_entries:
                self._memory.popitem(last=False)


# --- registration (runs in worker processes or in-process) ------------------------------

@contextlib.contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """Give ANTs ``seed`` for the calls inside the block, then restore its setting.

    In-process we set the seed antspyx passes as ``--random-seed`` and nothing else:
    ``ants.config.set_ants_deterministic`` would also reseed the caller's global numpy and
    ``random`` generators. Used only with ``PropagationConfig(isolate=False)``.
    """
    import ants

    old = getattr(ants.config, "_random_seed", None)
    ants.config._random_seed = seed
    try:
        yield
    finally:
        ants.config._random_seed = old


def _worker_init(seed: int) -> None:
    """Worker process set-up: one ITK thread, a fixed ANTs seed."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    os.environ["ANTS_RANDOM_SEED"] = str(seed)
    import ants

    if hasattr(ants.config, "set_ants_deterministic"):
        ants.config.set_ants_deterministic(True, seed)
    else:  # pragma: no cover - older antspyx: the seed attribute is what registration reads
        ants.config._random_seed = seed


def _register_pair(fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float],
                   params: dict[str, Any]) -> TransformRecord:
    """Register two normalised 2D slices; the transform files' bytes (empty = identity)."""
    if min(fixed.shape) < MIN_REGISTRATION_SIZE or np.ptp(fixed) == 0 or np.ptp(moving) == 0:
        return ()
    import ants

    f = ants.from_numpy(np.ascontiguousarray(fixed, np.float32), spacing=spacing)
    m = ants.from_numpy(np.ascontiguousarray(moving, np.float32), spacing=spacing)
    ds = int(params["downsample"])
    if ds > 1 and min(fixed.shape) // ds >= MIN_REGISTRATION_SIZE:
        coarse = tuple(float(s) * ds for s in spacing)
        f = ants.resample_image(f, coarse, use_voxels=False, interp_type=0)
        m = ants.resample_image(m, coarse, use_voxels=False, interp_type=0)
    with tempfile.TemporaryDirectory(prefix="rada-reg-") as tmp:
        try:
            out = ants.registration(f, m, type_of_transform=params["transform"], outprefix=os.path.join(tmp, "r"),
                                    reg_iterations=tuple(params["reg_iterations"]), verbose=False)
        except (RuntimeError, ValueError):  # ANTs could not register this pair: carry the label over
            return ()
        return tuple((f"t{i}_{os.path.basename(p)}", Path(p).read_bytes())
                     for i, p in enumerate(out["fwdtransforms"]))


def _register_task(task: tuple[np.ndarray, np.ndarray, tuple[float, float], dict[str, Any]]) -> TransformRecord:
    return _register_pair(*task)


class _Executor:
    """Where registrations run: worker processes with one ITK thread each (``isolate``), or
    this process. The pool starts on the first submission, so fully cached calls start none.

    Why isolate even for one worker: ITK reads its thread count once per process, and the
    thread count changes the transforms (measured: 1 vs 2 threads give different results on
    most LA slice pairs), so only one-thread worker processes give the same result
    sequentially, in parallel and on any machine.
    """

    def __init__(self, cfg: PropagationConfig, workers: int, seed: int) -> None:
        self.cfg, self.workers, self.seed = cfg, workers, seed
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if not self.cfg.isolate:
            fut: Future = Future()
            with _ants_seed(self.seed):
                fut.set_result(fn(*args))
            return fut
        if self._pool is None:
            import multiprocessing

            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context(self.cfg.start_method),
                                             initializer=_worker_init, initargs=(self.seed,))
        return self._pool.submit(fn, *args)

    def __enter__(self) -> "_Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


# --- planning ---------------------------------------------------------------------------

@dataclass
class _Chain:
    """Propagation from one seed slice in one direction: ``steps`` = slices to reach, in order."""

    axis: int
    seed: int
    steps: list[int]
    keys: list[str] = field(default_factory=list)
    done: int = 0            # steps already warped
    label: np.ndarray | None = None  # current 2D label (in the crop's plane)
    dead: bool = False       # the label went empty: every further step is background


def _territories(seeds: Sequence[int], lo: int, hi: int) -> list[tuple[int, int, list[int]]]:
    """Chains ``(seed, direction, slices)``: each slice of ``[lo, hi)`` goes to its nearest
    seed (ties to the lower one), reached by stepping away from that seed."""
    out = []
    for k, s in enumerate(seeds):
        up_end = hi - 1 if k + 1 == len(seeds) else min(hi - 1, (s + seeds[k + 1]) // 2)
        down_end = lo if k == 0 else max(lo, (seeds[k - 1] + s) // 2 + 1)
        up = [i for i in range(s + 1, up_end + 1) if lo <= i < hi]
        down = [i for i in range(s - 1, down_end - 1, -1) if lo <= i < hi]
        out += [(s, 1, up), (s, -1, down)]
    return out


def _normalise(slice2d: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    a = np.asarray(slice2d, np.float32)
    lo, hi = np.percentile(a, percentiles)
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _pair_key(fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float], params: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"shape": fixed.shape, "spacing": spacing, **params}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(fixed).tobytes())
    h.update(np.ascontiguousarray(moving).tobytes())
    return h.hexdigest()[:32]


def _morph(mask: np.ndarray, kernel: int) -> np.ndarray:
    """Opening then closing by a square; the border neither erodes nor grows the mask
    (OpenCV's convention, which the reference code used)."""
    if kernel <= 1 or not mask.any():
        return mask
    st = np.ones((kernel, kernel), bool)
    out = ndimage.binary_erosion(mask, st, border_value=1)
    out = ndimage.binary_dilation(out, st, border_value=0)
    out = ndimage.binary_dilation(out, st, border_value=0)
    return ndimage.binary_erosion(out, st, border_value=1)


class _Warper:
    """Applies stored transforms to 2D labels (files materialised once in a temp folder)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._paths: dict[str, list[str]] = {}

    def warp(self, label: np.ndarray, key: str, record: TransformRecord, spacing: tuple[float, float]) -> np.ndarray:
        if not record:
            return label.copy()
        import ants

        if key not in self._paths:
            folder = self.tmp / key
            folder.mkdir(exist_ok=True)
            for name, data in record:
                (folder / name).write_bytes(data)
            self._paths[key] = [str(folder / name) for name, _ in record]
        ref = ants.from_numpy(np.zeros(label.shape, np.float32), spacing=spacing)
        mov = ants.from_numpy(label.astype(np.float32), spacing=spacing)
        out = ants.apply_transforms(ref, mov, self._paths[key], interpolator="nearestNeighbor")
        return out.numpy() > 0.5


# --- propagation ------------------------------------------------------------------------

def _check_inputs(image: Volume, annotation: SparseAnnotation) -> np.ndarray:
    if not isinstance(image, Volume):
        raise InputError(f"image must be a rada.volume.Volume, got {type(image).__name__}")
    if not isinstance(annotation, SparseAnnotation):
        raise InputError(f"annotation must be a rada.annotation.SparseAnnotation, got {type(annotation).__name__}")
    annotation.validate(image)
    arr = np.asarray(image.array)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"image voxels must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError("the image has NaN or infinite voxels")
    return arr


def propagate(image: Volume, annotation: SparseAnnotation, config: PropagationConfig = PropagationConfig(),
              progress: ProgressFn | None = None, cache: RegistrationCache | None = None) -> PropagationResult:
    """Propagate the annotated slices through the volume along each axis (METHOD.md 2).

    ``progress(fraction, message)`` is called as registrations finish. ``cache`` keeps the
    registrations for a later call on the same image. Raises :class:`InputError` for an
    unusable image, annotation or configuration.

    ``stats``: ``registrations_planned`` (slice pairs the chains may need),
    ``registrations_run`` (computed now), ``registrations_cached`` (found in ``cache``),
    ``registrations_skipped`` (not needed: a chain went empty), ``identity_transforms``
    (slices too small or flat to register), ``workers``, ``ranges`` (per axis, the slices
    propagation may reach, ``[lo, hi)``), ``box`` (the crop, ``[start, stop)`` per array
    axis), ``seconds``, ``transform`` and ``resolution``.
    """
    t_start = time.perf_counter()
    cfg = config.validated()
    arr = _check_inputs(image, annotation)
    shape = arr.shape
    extent = annotation.extent()
    box = crop_box(annotation, cfg.margin, quantum=cfg.crop_quantum) if cfg.crop else tuple(slice(0, n) for n in shape)
    params = cfg.registration_params()
    ants_seed = cfg.seed + 1
    spacing_zyx = tuple(reversed(image.spacing))

    # Plan: per axis, the chains, their slice pairs and the registrations they need.
    chains: list[_Chain] = []
    tasks: dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float], dict[str, Any]]] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for name in VIEW_NAMES:
        a = AXIS_OF[name]
        seeds = annotation.annotated_slices(a)
        if cfg.stop_at_extent:
            lo = max(box[a].start, extent[a].start - cfg.extent_slack)
            hi = min(box[a].stop, extent[a].stop + cfg.extent_slack)
        else:
            lo, hi = box[a].start, box[a].stop
        ranges[name] = (lo, hi)
        plane = tuple(box[i] for i in range(3) if i != a)
        spacing2d = tuple(float(spacing_zyx[i]) for i in range(3) if i != a)
        norm_cache: dict[int, np.ndarray] = {}

        def norm(i: int, a: int = a, plane: tuple = plane, memo: dict = norm_cache) -> np.ndarray:
            if i not in memo:
                memo[i] = _normalise(take_slice(arr, a, i)[plane], cfg.percentiles)
            return memo[i]

        for seed, step, slices in _territories(seeds, lo, hi):
            seed_label = annotation.slice_mask(a, seed)[plane]
            chain = _Chain(a, seed, slices, label=seed_label, dead=not seed_label.any())
            if not chain.dead:
                prev = seed
                for i in slices:
                    fixed, moving = norm(i), norm(prev)
                    key = _pair_key(fixed, moving, spacing2d, params)
                    chain.keys.append(key)
                    tasks[key] = (fixed, moving, spacing2d, params)  # type: ignore[assignment]
                    prev = i
            chains.append(chain)

    stats: dict[str, Any] = {"registrations_planned": len(tasks), "registrations_run": 0,
                             "registrations_cached": 0, "registrations_skipped": 0, "identity_transforms": 0,
                             "workers": 1, "transform": cfg.transform, "resolution": cfg.resolution}
    records: dict[str, TransformRecord] = {}
    for key in tasks:
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            records[key] = hit
    stats["registrations_cached"] = len(records)
    pending = [k for k in tasks if k not in records]
    total = max(1, len(tasks))

    def report(message: str) -> None:
        if progress is not None:
            progress(min(1.0, (len(records) + stats["registrations_skipped"]) / total), message)

    def store(key: str, record: TransformRecord) -> None:
        records[key] = record
        stats["registrations_run"] += 1
        stats["identity_transforms"] += int(not record)
        if cache is not None:
            cache.put(key, record)

    # Per-axis 2D labels of every reached slice (in the crop's plane).
    reached: dict[int, dict[int, np.ndarray]] = {0: {}, 1: {}, 2: {}}
    report("registering neighbouring slices")
    with tempfile.TemporaryDirectory(prefix="rada-warp-") as tmp:
        warper = _Warper(Path(tmp))

        def advance(chain: _Chain) -> list[str]:
            """Warp as far as the available transforms go; the keys no longer needed."""
            spacing2d = tuple(float(spacing_zyx[i]) for i in range(3) if i != chain.axis)
            while chain.done < len(chain.steps) and not chain.dead:
                key = chain.keys[chain.done]
                if key not in records:
                    return []
                assert chain.label is not None
                label = _morph(warper.warp(chain.label, key, records[key], spacing2d), cfg.kernel)  # type: ignore[arg-type]
                reached[chain.axis][chain.steps[chain.done]] = label
                chain.label, chain.done = label, chain.done + 1
                if not label.any():
                    chain.dead = True
                    return chain.keys[chain.done:]
            return []

        workers = max(1, min(cfg.n_workers(), len(pending)))
        stats["workers"] = workers
        with _Executor(cfg, workers, ants_seed) as pool:
            if workers == 1:
                # In chain order, so that a chain going empty skips its remaining registrations.
                for chain in chains:
                    while chain.done < len(chain.steps) and not chain.dead:
                        key = chain.keys[chain.done]
                        if key not in records:
                            store(key, pool.submit(_register_task, tasks[key]).result())
                            report("registering neighbouring slices")
                        advance(chain)
                    if chain.dead:
                        stats["registrations_skipped"] += sum(k not in records for k in chain.keys[chain.done:])
            else:
                # Nearest steps first, across all chains, so that every chain can advance early.
                order = sorted(((step, ci) for ci, c in enumerate(chains) for step in range(len(c.keys))))
                submitted: list[str] = []
                seen = set(records)
                for step, ci in order:
                    key = chains[ci].keys[step]
                    if key not in seen:
                        seen.add(key)
                        submitted.append(key)
                futures: dict[Future, str] = {pool.submit(_register_task, tasks[k]): k for k in submitted}
                by_key = {k: f for f, k in futures.items()}
                live = set(futures)
                while True:
                    unneeded = [k for chain in chains for k in advance(chain)]
                    if unneeded:  # a chain went empty; identical slice pairs may serve another
                        needed = {k for c in chains if not c.dead for k in c.keys[c.done:]}
                        for k in unneeded:
                            fut = by_key.get(k)
                            if k not in needed and fut is not None and fut in live and fut.cancel():
                                live.discard(fut)
                                stats["registrations_skipped"] += 1
                    if not live:
                        break
                    finished, _ = wait(live, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        live.discard(fut)
                        store(futures[fut], fut.result())
                    report("registering neighbouring slices")
                for chain in chains:  # every transform has arrived: finish the chains
                    advance(chain)

    # Assemble the views on the full grid.
    views: dict[str, ViewPropagation] = {}
    for name in VIEW_NAMES:
        a = AXIS_OF[name]
        plane = tuple(box[i] for i in range(3) if i != a)
        label = np.zeros(shape, np.uint8)
        for i, lab in reached[a].items():
            index = (slice(None),) * a + (i,)
            sub = label[index]
            sub[plane] = lab
        annotation.paste(label)
        views[name] = ViewPropagation(name, label, _distance(shape, a, annotation.annotated_slices(a)))
    votes = sum(v.label.astype(np.uint8) for v in views.values())
    fused = annotation.paste((votes >= 2).astype(np.uint8))

    stats["ranges"] = {k: list(v) for k, v in ranges.items()}
    stats["box"] = [[s.start, s.stop] for s in box]
    stats["seconds"] = round(time.perf_counter() - t_start, 3)
    if progress is not None:
        progress(1.0, "propagation done")
    return PropagationResult(views, fused, stats)


def _distance(shape: Sequence[int], axis: int, seeds: Sequence[int]) -> np.ndarray:
    idx = np.arange(shape[axis])
    d = np.min(np.abs(idx[:, None] - np.asarray(seeds)[None, :]), axis=1).astype(np.int16)
    view = [1, 1, 1]
    view[axis] = shape[axis]
    return np.ascontiguousarray(np.broadcast_to(d.reshape(view), tuple(shape)))


# --- persistence ------------------------------------------------------------------------

def save_propagation(result: PropagationResult, path: str | os.PathLike) -> Path:
    """Write a result as a compressed ``.npz`` (atomically)."""
    target = Path(path)
    arrays: dict[str, np.ndarray] = {"fused": np.asarray(result.fused, np.uint8),
                                     "stats": np.asarray(json.dumps(result.stats, default=str))}
    for name, view in result.views.items():
        arrays[f"label_{name}"] = np.asarray(view.label, np.uint8)
        arrays[f"distance_{name}"] = np.asarray(view.distance)
        arrays[f"axis_{name}"] = np.asarray(view.axis)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return target


def load_propagation(path: str | os.PathLike) -> PropagationResult:
    """Read a result written by :func:`save_propagation`."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            names = [k[len("label_"):] for k in z.files if k.startswith("label_")]
            views = {n: ViewPropagation(str(z[f"axis_{n}"]), z[f"label_{n}"], z[f"distance_{n}"]) for n in names}
            return PropagationResult(views, z["fused"], json.loads(str(z["stats"])))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read propagation result {p}: {exc}") from None


__all__ = [
    "RESOLUTIONS",
    "TRANSFORMS",
    "PropagationConfig",
    "PropagationResult",
    "RegistrationCache",
    "ViewPropagation",
    "load_propagation",
    "propagate",
    "save_propagation",
]

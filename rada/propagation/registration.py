"""ANTs slice-to-slice registration: the worker set-up, the pool, and warping labels.

Registrations run in worker processes with one ITK thread each (see
:class:`RegistrationExecutor`); labels are warped in the calling process (:class:`Warper`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from rada.propagation.cache import TransformRecord
from rada.propagation.config import PropagationConfig

#: Slices smaller than this (pixels, either in-plane side) are not registered: the label is
#: carried over unchanged (ANTs' 4x shrink factors need some room).
MIN_REGISTRATION_SIZE = 8


def normalise(slice2d: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """A slice's intensities clipped at two percentiles and scaled to [0, 1] for registration.

    Args:
        slice2d: the image slice.
        percentiles: low and high percentile.

    Returns:
        float32 in [0, 1]; all zero for a flat slice.
    """
    a = np.asarray(slice2d, np.float32)
    lo, hi = np.percentile(a, percentiles)
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


@contextlib.contextmanager
def ants_seed(seed: int) -> Iterator[None]:
    """Context manager: give ANTs ``seed`` for the calls inside the block, then restore its setting.

    In-process we set the seed antspyx passes as ``--random-seed`` and nothing else:
    ``ants.config.set_ants_deterministic`` would also reseed the caller's global numpy and
    ``random`` generators. Used only with ``PropagationConfig(isolate=False)``.

    Args:
        seed: the seed ANTs passes as ``--random-seed``.

    Yields:
        None.
    """
    import ants  # heavy (ITK): loaded only where registrations run

    old = getattr(ants.config, "_random_seed", None)
    ants.config._random_seed = seed
    try:
        yield
    finally:
        ants.config._random_seed = old


def worker_init(seed: int) -> None:
    """Set up a worker process: one ITK thread, a fixed ANTs seed.

    Args:
        seed: the seed ANTs gets (never 0: ANTs reads 0 as "seed from the clock").
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    os.environ["ANTS_RANDOM_SEED"] = str(seed)
    import ants  # after the environment above: ITK reads its thread count on import

    if hasattr(ants.config, "set_ants_deterministic"):
        ants.config.set_ants_deterministic(True, seed)
    else:  # pragma: no cover - older antspyx: the seed attribute is what registration reads
        ants.config._random_seed = seed


def register_pair(fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float],
                  params: dict[str, Any]) -> TransformRecord:
    """Register two normalised 2D slices with ANTs.

    Args:
        fixed: the slice the label is warped onto.
        moving: the slice the label comes from.
        spacing: in-plane spacing of both.
        params: :meth:`PropagationConfig.registration_params`.

    Returns:
        The transform files' names and bytes; empty (identity) for slices too small or flat
        to register, or a pair ANTs cannot register.
    """
    if min(fixed.shape) < MIN_REGISTRATION_SIZE or np.ptp(fixed) == 0 or np.ptp(moving) == 0:
        return ()
    import ants  # heavy (ITK): loaded where registrations run, not on import of rada

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


def register_task(task: tuple[np.ndarray, np.ndarray, tuple[float, float], dict[str, Any]]) -> TransformRecord:
    """Run :func:`register_pair` on one task (a module-level function, so the pool can pickle it).

    Args:
        task: ``(fixed, moving, spacing, params)``.

    Returns:
        The transform record.
    """
    return register_pair(*task)


class RegistrationExecutor:
    """Where registrations run: worker processes with one ITK thread each (``isolate``), or
    this process. The pool starts on the first submission, so fully cached calls start none.

    Why isolate even for one worker: ITK reads its thread count once per process, and the
    thread count changes the transforms (measured: 1 vs 2 threads give different results on
    most LA slice pairs), so only one-thread worker processes give the same result
    sequentially, in parallel and on any machine.
    """

    def __init__(self, cfg: PropagationConfig, workers: int, seed: int) -> None:
        """``workers`` processes started with ANTs seed ``seed``; ``cfg`` says whether to isolate."""
        self.cfg, self.workers, self.seed = cfg, workers, seed
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a worker (or here, at once, when not isolated).

        Args:
            fn: a picklable function.
            *args: its arguments.

        Returns:
            The future of its result.
        """
        if not self.cfg.isolate:
            fut: Future = Future()
            with ants_seed(self.seed):
                fut.set_result(fn(*args))
            return fut
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context(self.cfg.start_method),
                                             initializer=worker_init, initargs=(self.seed,))
        return self._pool.submit(fn, *args)

    def __enter__(self) -> "RegistrationExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class Warper:
    """Applies stored transforms to 2D labels (files materialised once in a temp folder)."""

    def __init__(self, tmp: Path) -> None:
        """Transform files go under ``tmp`` (a folder the caller removes)."""
        self.tmp = tmp
        self._paths: dict[str, list[str]] = {}

    def warp(self, label: np.ndarray, key: str, record: TransformRecord, spacing: tuple[float, float]) -> np.ndarray:
        """Warp a 2D label by a stored transform (nearest neighbour).

        Args:
            label: bool or 0/1 2D label on the moving slice.
            key: the transform's cache key (its files are written once under that name).
            record: the transform (empty = identity).
            spacing: in-plane spacing.

        Returns:
            The bool label on the fixed slice.
        """
        if not record:
            return label.copy()
        import ants  # heavy (ITK): loaded only where labels are warped

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


__all__ = ["MIN_REGISTRATION_SIZE", "RegistrationExecutor", "Warper", "ants_seed", "normalise", "register_pair",
           "register_task", "worker_init"]

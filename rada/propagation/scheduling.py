"""Running a plan: registrations as they are needed or in parallel, label warps as they arrive.

The registrations of neighbouring image slices do not depend on the labels, so they can run
ahead in a pool while the cheap label warps are chained here as transforms arrive. A chain
whose label goes empty stops, and the registrations only it needed are cancelled.

Two schedules, same results: with one worker, chain by chain (a chain going empty skips the
rest of its registrations); with several, nearest steps first across all chains, so that
every chain advances early.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from rada.propagation.cache import RegistrationCache, TransformRecord
from rada.propagation.config import ProgressFn, PropagationConfig
from rada.propagation.planning import Chain, Plan, in_plane
from rada.propagation.registration import RegistrationExecutor, Warper, register_task

MESSAGE = "registering neighbouring slices"


def open_close(mask: np.ndarray, kernel: int) -> np.ndarray:
    """Opening then closing of a 2D mask by a ``kernel x kernel`` square.

    The border neither erodes nor grows the mask (OpenCV's convention, which the reference
    code used).

    Args:
        mask: bool 2D mask.
        kernel: the square's side; 0 or 1 = no cleaning.

    Returns:
        The cleaned mask.
    """
    if kernel <= 1 or not mask.any():
        return mask
    st = np.ones((kernel, kernel), bool)
    out = ndimage.binary_erosion(mask, st, border_value=1)
    out = ndimage.binary_dilation(out, st, border_value=0)
    out = ndimage.binary_dilation(out, st, border_value=0)
    return ndimage.binary_erosion(out, st, border_value=1)


class ChainRun:
    """Carries every chain of a :class:`Plan` to its end; counts what it registered.

    After :meth:`run`, :attr:`reached` holds per array axis the 2D label (in the crop's plane)
    of every slice reached, and :attr:`stats` the registration counts.
    """

    def __init__(self, plan: Plan, cfg: PropagationConfig, spacing_zyx: tuple[float, ...],
                 cache: RegistrationCache | None = None, progress: ProgressFn | None = None) -> None:
        """Prepare a run.

        Args:
            plan: what :func:`~rada.propagation.planning.plan_chains` made.
            cfg: the validated configuration.
            spacing_zyx: voxel spacing in array order.
            cache: registrations kept between calls (read first, then filled).
            progress: ``progress(fraction, message)``.
        """
        self.plan, self.cfg, self.spacing_zyx = plan, cfg, spacing_zyx
        self.cache, self.progress = cache, progress
        self.records: dict[str, TransformRecord] = {}
        self.reached: dict[int, dict[int, np.ndarray]] = {0: {}, 1: {}, 2: {}}
        self.stats: dict[str, Any] = {"registrations_planned": len(plan.tasks), "registrations_run": 0,
                                      "registrations_cached": 0, "registrations_skipped": 0,
                                      "identity_transforms": 0, "workers": 1}
        self._warper: Warper | None = None

    # --- the steps ------------------------------------------------------------------------
    def run(self) -> None:
        """Take what the cache holds, register the rest, warp every chain to its end."""
        pending = self._take_cached()
        self._report(MESSAGE)
        with tempfile.TemporaryDirectory(prefix="rada-warp-") as tmp:
            self._warper = Warper(Path(tmp))
            workers = max(1, min(self.cfg.n_workers(), len(pending)))
            self.stats["workers"] = workers
            with RegistrationExecutor(self.cfg, workers, self.cfg.seed + 1) as pool:
                if workers == 1:
                    self._run_chain_by_chain(pool)
                else:
                    self._run_nearest_first(pool)

    def _take_cached(self) -> list[str]:
        """Fill :attr:`records` from the cache; the keys still to register."""
        for key in self.plan.tasks:
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.records[key] = hit
        self.stats["registrations_cached"] = len(self.records)
        return [k for k in self.plan.tasks if k not in self.records]

    def _run_chain_by_chain(self, pool: RegistrationExecutor) -> None:
        """One worker: in chain order, so that a chain going empty skips its remaining registrations."""
        dropped: set[str] = set()  # pairs a dead chain no longer needs; a later chain may still register one
        for chain in self.plan.chains:
            while chain.done < len(chain.steps) and not chain.dead:
                key = chain.keys[chain.done]
                if key not in self.records:
                    self._store(key, pool.submit(register_task, self.plan.tasks[key]).result())
                    self.stats["registrations_skipped"] = len(dropped.difference(self.records))
                    self._report(MESSAGE)
                self._advance(chain)
            if chain.dead:
                dropped.update(chain.keys[chain.done:])
                self.stats["registrations_skipped"] = len(dropped.difference(self.records))

    def _run_nearest_first(self, pool: RegistrationExecutor) -> None:
        """Several workers: nearest steps first across all chains; cancel what an emptied chain no
        longer needs (unless another live chain needs the same slice pair)."""
        chains = self.plan.chains
        futures: dict[Future, str] = {pool.submit(register_task, self.plan.tasks[k]): k
                                      for k in self._submission_order()}
        by_key = {k: f for f, k in futures.items()}
        live = set(futures)
        while True:
            unneeded = [k for chain in chains for k in self._advance(chain)]
            if unneeded:
                needed = {k for c in chains if not c.dead for k in c.keys[c.done:]}
                for k in unneeded:
                    fut = by_key.get(k)
                    if k not in needed and fut is not None and fut in live and fut.cancel():
                        live.discard(fut)
                        self.stats["registrations_skipped"] += 1
            if not live:
                break
            finished, _ = wait(live, return_when=FIRST_COMPLETED)
            for fut in finished:
                live.discard(fut)
                self._store(futures[fut], fut.result())
            self._report(MESSAGE)
        for chain in chains:  # every transform has arrived: finish the chains
            self._advance(chain)

    # --- helpers ----------------------------------------------------------------------------
    def _submission_order(self) -> list[str]:
        """Keys not yet held, each once, ordered by step (distance from the seed), then chain."""
        chains = self.plan.chains
        order = sorted((step, ci) for ci, c in enumerate(chains) for step in range(len(c.keys)))
        submitted: list[str] = []
        seen = set(self.records)
        for step, ci in order:
            key = chains[ci].keys[step]
            if key not in seen:
                seen.add(key)
                submitted.append(key)
        return submitted

    def _advance(self, chain: Chain) -> list[str]:
        """Warp ``chain`` as far as the transforms at hand go; the keys it no longer needs."""
        assert self._warper is not None
        spacing2d = tuple(float(s) for s in in_plane(self.spacing_zyx, chain.axis))
        while chain.done < len(chain.steps) and not chain.dead:
            key = chain.keys[chain.done]
            if key not in self.records:
                return []
            assert chain.label is not None
            label = open_close(self._warper.warp(chain.label, key, self.records[key], spacing2d),  # type: ignore[arg-type]
                               self.cfg.kernel)
            self.reached[chain.axis][chain.steps[chain.done]] = label
            chain.label, chain.done = label, chain.done + 1
            if not label.any():
                chain.dead = True
                return chain.keys[chain.done:]
        return []

    def _store(self, key: str, record: TransformRecord) -> None:
        self.records[key] = record
        self.stats["registrations_run"] += 1
        self.stats["identity_transforms"] += int(not record)
        if self.cache is not None:
            self.cache.put(key, record)

    def _report(self, message: str) -> None:
        if self.progress is not None:
            total = max(1, len(self.plan.tasks))
            self.progress(min(1.0, (len(self.records) + self.stats["registrations_skipped"]) / total), message)


__all__ = ["ChainRun", "open_close"]

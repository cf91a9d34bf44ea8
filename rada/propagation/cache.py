"""Slice-pair registrations kept between calls: :class:`RegistrationCache` and its keys."""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from rada.errors import InputError
from rada.safe_write import atomic_folder

#: A transform between two slices as ANTs writes it: ``(file name, bytes)`` in the order of
#: ``fwdtransforms``; an empty tuple means identity (slice too small or featureless).
TransformRecord = tuple[tuple[str, bytes], ...]


def pair_key(fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float], params: dict[str, Any]) -> str:
    """The cache key of one registration: a hash of both slices, their spacing and the parameters.

    Args:
        fixed: the normalised fixed slice.
        moving: the normalised moving slice.
        spacing: in-plane spacing of both.
        params: :meth:`PropagationConfig.registration_params`.

    Returns:
        32 hex digits.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"shape": fixed.shape, "spacing": spacing, **params}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(fixed).tobytes())
    h.update(np.ascontiguousarray(moving).tobytes())
    return h.hexdigest()[:32]


class RegistrationCache:
    """Slice-pair registrations kept between calls (in memory; optionally also on disk).

    Keys are content hashes of the two cropped, normalised slices, their spacing and the
    registration parameters: a new call on the same image reuses every pair it shares with
    earlier calls, and a changed image or crop can never hit a stale entry. ``max_entries``
    bounds the in-memory part (least recently used entries go first); the directory keeps
    everything (one sub-folder of ANTs transform files per key, written atomically).
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_entries: int | None = None) -> None:
        """Make an empty cache.

        Args:
            directory: also keep every entry here (created if missing); None = memory only.
            max_entries: bound on the in-memory entries (None = unbounded).
        """
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
        """The transform stored under ``key``.

        Args:
            key: a :func:`pair_key`.

        Returns:
            The transform record, or None when neither memory nor the directory holds it.
        """
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
        """Store ``record`` under ``key``: in memory, and on disk if the cache has a directory.

        Args:
            key: a :func:`pair_key`.
            record: the transform files' names and bytes (empty = identity).
        """
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


__all__ = ["RegistrationCache", "TransformRecord", "pair_key"]

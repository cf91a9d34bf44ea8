"""Outputs that are either complete or absent: exact names, checked early, written atomically.

Every file RADA writes goes through :class:`OutputSet`: each output is first written to a
hidden temporary file beside its target, and only when *all* of a command's outputs are
written are they renamed into place. A failure anywhere removes every temporary file and
every folder the set created, so nothing half-written, no hidden temp file and no empty
folder is left behind. Operating-system errors become :class:`~rada.errors.InputError`
naming the user's own path, never the temporary one.

Names are taken literally: ``x.nii.nii.gz`` is written as exactly that file. The temporary
name carries only the format suffix (``.rada-tmp-<random>.nii.gz``), because some writers
(ITK's NIfTI writer) rewrite names that contain a format suffix twice.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from rada.errors import InputError

#: Formats a volume can be written as, longest suffix first (matched case-insensitively).
VOLUME_SUFFIXES: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha")
#: Formats that write a second file beside the first (an atomic rename cannot cover both).
DETACHED_SUFFIXES: tuple[str, ...] = (".mhd", ".nhdr", ".hdr", ".img")
TMP_PREFIX = ".rada-tmp-"


def format_suffix(path: str | os.PathLike, allowed: Sequence[str] | None = None) -> str:
    """The format suffix of ``path``'s name: the longest of ``allowed`` it ends with.

    Args:
        path: the output path as the user gave it.
        allowed: accepted suffixes (e.g. :data:`VOLUME_SUFFIXES`); ``None`` accepts any
            name and returns its last suffix (``""`` if it has none).

    Returns:
        The suffix in the case the user wrote it.

    Raises:
        InputError: the name ends in none of ``allowed``, or in a two-file format.
    """
    name = Path(path).name
    lower = name.lower()
    if allowed is None:
        return Path(name).suffix
    for suffix in sorted(allowed, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[-len(suffix):]
    detached = next((s for s in DETACHED_SUFFIXES if lower.endswith(s)), None)
    if detached:
        raise InputError(f"cannot write {path}: {detached} writes a second data file beside it; "
                         f"use one of {', '.join(allowed)}")
    raise InputError(f"cannot write {path}: unknown format; the name must end in one of {', '.join(allowed)}")


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(path.anchor or ".")


def check_output(path: str | os.PathLike, allowed: Sequence[str] | None = None) -> Path:
    """Check, before any work is done, that ``path`` can be written.

    The target must not be a folder, its format must be known (``allowed``), and its
    nearest existing ancestor must be a writable folder (missing folders are created at
    write time and removed again if the write fails).

    Args:
        path: the output path.
        allowed: accepted suffixes (e.g. :data:`VOLUME_SUFFIXES`), or None for any.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: one line with the user's path and the reason.
    """
    target = Path(path)
    if not target.name or target.name in (".", ".."):
        raise InputError(f"cannot write {path}: not a file name")
    format_suffix(target, allowed)
    if target.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    if target.exists() and not target.is_file():
        raise InputError(f"cannot write {path}: it exists and is not a regular file")
    base = _nearest_existing(target)
    if not base.is_dir():
        raise InputError(f"cannot write {path}: {base} is not a folder")
    _probe_writable(target, base)
    return target


def _probe_writable(target: Path, base: Path) -> None:
    """Really create (and remove at once) what the write will create: a file in the target's
    folder, or the first missing folder. Permission bits alone mislead (root, /proc, ACLs)."""
    try:
        if target.parent == base:
            probe = base / f"{TMP_PREFIX}{secrets.token_hex(6)}.probe"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        else:  # Path(".") is its own parent, hence p != base
            first_missing = next(p for p in reversed(target.parents) if p.parent == base and p != base)
            first_missing.mkdir()
            first_missing.rmdir()
    except OSError as exc:
        raise InputError(f"cannot write {target}: {_reason(exc)} in {base}") from None


def _plain_suffix(target: Path) -> str:
    """The temporary file's suffix when any name is accepted: the last one (two for ``.gz``)."""
    suffixes = target.suffixes
    if len(suffixes) > 1 and suffixes[-1].lower() == ".gz":
        return "".join(suffixes[-2:])
    return target.suffix or ".tmp"


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class OutputSet:
    """Several outputs written all together or not at all.

    Use as a context manager; :meth:`stage` gives the temporary path to write each output
    to. On a clean exit every staged file is renamed to its target; on an exception every
    staged file and every folder created for them is removed, and the exception goes on.

    Example::

        with OutputSet() as out:
            write_label(out.stage("seg.nii.gz", VOLUME_SUFFIXES))
            out.stage("report.json").write_text(text, encoding="utf-8")
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []   # (temporary, target)
        self._created_dirs: list[Path] = []

    def stage(self, path: str | os.PathLike, allowed: Sequence[str] | None = None) -> Path:
        """Create the target's folder if needed and return a fresh temporary path beside it.

        The caller writes the temporary file; :meth:`commit` renames it to ``path``.

        Args:
            path: the final output path.
            allowed: accepted suffixes, or None for any.

        Returns:
            The temporary path (created empty, same suffix in lower case).

        Raises:
            InputError: the target cannot be written.
        """
        target = check_output(path, allowed)
        # Lower case: ITK picks its writer from the suffix and knows only ".nii.gz", not ".NII.GZ".
        suffix = (format_suffix(target, allowed) if allowed else _plain_suffix(target)).lower()
        self._make_parents(target)
        for _ in range(100):
            tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}{suffix}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(f"cannot write {target}: {_reason(exc)}") from None
            os.close(fd)
            self._staged.append((tmp, target))
            return tmp
        raise InputError(f"cannot write {target}: no free temporary name in {target.parent}")

    def _make_parents(self, target: Path) -> None:
        missing = []
        for parent in target.parents:
            if parent.exists():
                break
            missing.append(parent)
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(f"cannot write {target}: cannot create folder {folder}: {_reason(exc)}") from None
            self._created_dirs.append(folder)

    def commit(self) -> list[Path]:
        """Rename every staged file to its target (targets already renamed are undone on failure).

        Returns:
            The targets written, in staging order.

        Raises:
            InputError: a staged file is missing or cannot be renamed.
        """
        done: list[Path] = []
        for tmp, target in self._staged:
            try:
                if not tmp.exists():
                    raise InputError(f"cannot write {target}: the writer produced no file")
                os.replace(tmp, target)
            except OSError as exc:
                for path in done:
                    path.unlink(missing_ok=True)
                raise InputError(f"cannot write {target}: {_reason(exc)}") from None
            done.append(target)
        self._staged.clear()
        self._created_dirs.clear()
        return done

    def rollback(self) -> None:
        """Remove every staged file and the folders this set created (deepest first)."""
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self._staged.clear()
        for folder in sorted(self._created_dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never remove what someone else put there
        self._created_dirs.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.rollback()
                raise
        else:
            described = self._describe()
            self.rollback()
            if isinstance(exc, OSError):
                raise InputError(f"cannot write {described}: {_reason(exc)}") from None

    def _describe(self) -> str:
        return ", ".join(str(t) for _, t in self._staged) or "the output"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, allowed: Sequence[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` only if the block succeeds.

    The one way RADA writes a single file atomically (a one-output :class:`OutputSet`).

    Args:
        path: the target file, taken literally.
        allowed: accepted format suffixes (``None`` = any name).

    Returns:
        A context manager yielding the temporary path to write to.

    Raises:
        InputError: the target cannot be written, naming ``path``.
    """
    with OutputSet() as out:
        yield out.stage(path, allowed)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    The folder counterpart of :func:`atomic_path`, for outputs made of several files that
    readers must see all or none of (a cached registration's transform files).

    Args:
        path: the target folder; its parent must exist.

    Returns:
        A context manager yielding the temporary folder to fill.

    Raises:
        InputError: the folder cannot be made or renamed, e.g. ``path`` already exists and is
            not empty (another process stored it first); nothing is left behind.
    """
    target = Path(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target.parent))
    except OSError as exc:
        raise InputError(f"cannot write {target}: {_reason(exc)}") from None
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {_reason(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

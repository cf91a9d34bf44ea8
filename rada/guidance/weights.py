"""Encoder weights: a registry of known files, a per-user cache, download and offline import.

Weights cannot be bundled (licences, size). They live in a per-user cache folder:
``$RADA_HOME/weights`` if ``RADA_HOME`` is set, else ``$XDG_CACHE_HOME/rada/weights``
(``~/.cache/rada/weights``). ``manifest.json`` there records every file's sha256, size and
origin. ``rada weights download`` fetches the registry's URLs (resumable with HTTP Range,
sha256-checked, renamed into place atomically); ``rada weights import FILE`` is the offline
path (a file fetched elsewhere, e.g. behind a firewall) with the same checks.

sha256: where the registry knows a published hash the file must match it. Where it does not
(the Alpha-CLIP releases publish none), the hash is *recorded* on first download/import
(trust on first use), shown by ``rada weights list`` as ``verified: false``, and every later
use checks the file still has the recorded hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from rada.errors import InputError
from rada.safe_write import atomic_path

CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    """One known weights file.

    Attributes:
        name: registry key, e.g. ``openai-vit-b-16``.
        filename: file name in the cache (and of the official release).
        urls: download URLs, tried in order.
        sha256: published hash, None where none is known (recorded on first use).
        role: ``openai`` (full CLIP, JIT archive) or ``alpha-visual`` (visual-only state dict).
        description: one line for ``rada weights list``.
    """

    name: str                  # registry key, e.g. "openai-vit-b-16"
    filename: str              # file name in the cache (and of the official release)
    urls: tuple[str, ...]      # tried in order
    sha256: str | None         # published hash, None where none is known (recorded on first use)
    role: str                  # "openai" (full CLIP, JIT archive) or "alpha-visual" (visual-only state dict)
    description: str = ""


#: Known files. OpenAI's CLIP URLs carry the file's sha256 as the second-to-last path
#: component (OpenAI's ``clip`` package verifies exactly that), so that hash is published.
#: The Alpha-CLIP B/16 releases (github.com/SunzeY/AlphaCLIP, model-zoo.md; mirrored on
#: OpenXLab) publish no checksum: their sha256 is UNKNOWN to us, hence None here, and it is
#: recorded (and shown as unverified) on first download or import.
REGISTRY: dict[str, WeightFile] = {w.name: w for w in (
    WeightFile(
        "openai-vit-b-16", "ViT-B-16.pt",
        ("https://openaipublic.azureedge.net/clip/models/"
         "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",),
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        "openai", "OpenAI CLIP ViT-B/16 (JIT archive; text tower and base of the visual tower)"),
    WeightFile(
        "alpha-clip-b16-grit1m", "clip_b16_grit1m_fultune_8xe.pth",
        ("https://download.openxlab.org.cn/models/SunzeY/AlphaCLIP/weight/clip_b16_grit1m_fultune_8xe.pth",),
        None, "alpha-visual", "Alpha-CLIP ViT-B/16 visual tower, GRIT-1M, full fine-tune (METHOD.md default)"),
    WeightFile(
        "alpha-clip-b16-grit20m", "clip_b16_grit20m_fultune_2xe.pth",
        ("https://download.openxlab.org.cn/models/SunzeY/AlphaCLIP/weight/clip_b16_grit20m_fultune_2xe.pth",),
        None, "alpha-visual", "Alpha-CLIP ViT-B/16 visual tower, GRIT-20M, full fine-tune"),
)}

#: Encoder variants: which files build the dual encoder. ``clip-b16`` is plain CLIP (zero
#: ``conv1_alpha``), the paper's "CLIP visual instead of Alpha-CLIP" ablation.
VARIANTS: dict[str, tuple[str, str | None]] = {
    "alpha-clip-b16-grit1m": ("openai-vit-b-16", "alpha-clip-b16-grit1m"),
    "alpha-clip-b16-grit20m": ("openai-vit-b-16", "alpha-clip-b16-grit20m"),
    "clip-b16": ("openai-vit-b-16", None),
}
DEFAULT_VARIANT = "alpha-clip-b16-grit1m"


# --- cache folder and manifest ---------------------------------------------------------------

def cache_dir() -> Path:
    """The per-user weights folder (not created here).

    Returns:
        ``$RADA_HOME/weights``, else ``$XDG_CACHE_HOME/rada/weights``, else
        ``~/.cache/rada/weights``.
    """
    home = os.environ.get("RADA_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rada" / "weights"


def _manifest_path(folder: Path) -> Path:
    return folder / "manifest.json"


def read_manifest(folder: Path | None = None) -> dict[str, dict]:
    """The cache's record of each file (sha256, size, source, verified).

    Args:
        folder: the weights folder (default :func:`cache_dir`).

    Returns:
        File name -> record; empty when there is no manifest.

    Raises:
        InputError: the manifest is not valid JSON.
    """
    path = _manifest_path(folder or cache_dir())
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"corrupt weights manifest {path}: delete it and re-import the weights") from None
    return data.get("files", {})


def _record(folder: Path, filename: str, sha256: str, size: int, origin: str, verified: bool) -> None:
    files = read_manifest(folder)
    files[filename] = {"sha256": sha256, "size": size, "origin": origin, "verified": verified,
                       "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(_manifest_path(folder)) as tmp:
        tmp.write_text(json.dumps({"format": 1, "files": files}, indent=2), encoding="utf-8")


def sha256_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, read in chunks.

    Args:
        path: the file.
        progress: called with each chunk's size in bytes.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def lookup(name_or_filename: str) -> WeightFile:
    """A registry entry by name or by file name.

    Args:
        name_or_filename: a registry key (e.g. ``openai-vit-b-16``) or its file name.

    Returns:
        The :class:`WeightFile`.

    Raises:
        InputError: an unknown name.
    """
    if name_or_filename in REGISTRY:
        return REGISTRY[name_or_filename]
    for w in REGISTRY.values():
        if w.filename == name_or_filename:
            return w
    raise InputError(f"unknown weights {name_or_filename!r}; known: {', '.join(REGISTRY)}")


# --- download --------------------------------------------------------------------------------

def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not enabled, leave=False)


def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None, *,
                  progress: bool = True, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest``.

    Resumable: bytes already in ``dest + '.part'`` are kept and the rest is requested with an
    HTTP ``Range`` header (a server that ignores it answers 200 and the file restarts). Only a
    complete, checked file is renamed to ``dest`` (atomic ``os.replace``). A network failure
    keeps the partial file for a retry.

    Args:
        url: where to download from.
        dest: the final file; its folder is created.
        sha256: the whole file's expected sha256, or None (not checked).
        progress: show a progress bar.
        timeout: socket timeout in seconds.

    Returns:
        The file's sha256.

    Raises:
        InputError: an HTTP or network error, an unexpected byte range, or a sha256 mismatch
            (the partial file is then deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "rada-weights"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    h = hashlib.sha256()
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:   # the partial file is already complete
            response = None
        else:
            raise InputError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; fetch the file elsewhere "
                             f"and run `rada weights import FILE`") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"cannot download {url}: {reason}; fetch the file elsewhere and run "
                         f"`rada weights import FILE`") from None
    if response is not None:
        with response:
            resumed = offset > 0 and response.status == 206
            if resumed and not response.headers.get("Content-Range", "").split(" ")[-1].startswith(f"{offset}-"):
                part.unlink(missing_ok=True)
                raise InputError(f"{url} answered an unexpected byte range; the partial file was deleted, "
                                 f"run the command again")
            if resumed:
                with open(part, "rb") as f:  # the kept prefix counts towards the hash
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
            else:
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            bar = _progress_bar(total, offset, dest.name, progress)
            try:
                with open(part, "ab" if resumed else "wb") as f:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
            except OSError as exc:
                raise InputError(f"download of {url} interrupted ({exc}); run the command again to resume") from None
            finally:
                bar.close()
            if total is not None and part.stat().st_size != total:
                raise InputError(f"download of {url} ended early ({part.stat().st_size} of {total} bytes); "
                                 f"run the command again to resume")
    else:
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise InputError(f"sha256 mismatch for {url}: got {digest}, expected {sha256}; the partial file was "
                         f"deleted")
    os.replace(part, dest)
    return digest


def download(name: str, url: str | None = None, folder: Path | None = None, progress: bool = True,
             force: bool = False) -> Path:
    """Download a registry file (or its ``url`` override) into the cache.

    A file already in the cache is verified instead, unless ``force``. The registry's URLs are
    tried in order; the download is recorded in the manifest.

    Args:
        name: registry name or file name.
        url: download from here instead of the registry's URLs.
        folder: the weights folder (default :func:`cache_dir`).
        progress: show a progress bar.
        force: download again even if the file is present.

    Returns:
        The cached file's path.

    Raises:
        InputError: an unknown name, a present file that fails verification, or every URL
            failed (the last error).
    """
    w = lookup(name)
    folder = folder or cache_dir()
    dest = folder / w.filename
    if dest.exists() and not force:
        verify(w, folder)
        return dest
    errors = []
    for u in ([url] if url else list(w.urls)):
        try:
            digest = download_file(u, dest, w.sha256, progress=progress)
        except InputError as exc:
            errors.append(str(exc))
            continue
        _record(folder, w.filename, digest, dest.stat().st_size, u, verified=w.sha256 is not None)
        return dest
    raise InputError(errors[-1] if errors else f"no URL for {name}")


def import_file(path: str | os.PathLike, name: str | None = None, folder: Path | None = None,
                progress: bool = True) -> Path:
    """Copy a weights file fetched elsewhere into the cache (the offline path).

    Args:
        path: the file to import.
        name: registry name (default: looked up by the file's name).
        folder: the weights folder (default :func:`cache_dir`).
        progress: show a progress bar while hashing.

    Returns:
        The cached file's path. Its sha256 is recorded in the manifest.

    Raises:
        InputError: the file is missing, the name is unknown, or a published sha256 does not
            match.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(f"no such file: {src}")
    w = lookup(name or src.name)
    folder = folder or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    bar = _progress_bar(src.stat().st_size, 0, f"sha256 {src.name}", progress)
    try:
        digest = sha256_file(src, bar.update)
    finally:
        bar.close()
    if w.sha256 is not None and digest != w.sha256:
        raise InputError(f"{src} is not {w.filename} as published: sha256 {digest}, expected {w.sha256}")

    dest = folder / w.filename
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    _record(folder, w.filename, digest, dest.stat().st_size, f"import:{src.resolve()}", verified=w.sha256 is not None)
    return dest


def verify(w: WeightFile, folder: Path | None = None, rehash: bool = True) -> str:
    """Check a cached file against its published or recorded sha256.

    Args:
        w: the registry entry.
        folder: the weights folder (default :func:`cache_dir`).
        rehash: hash the file again; False trusts the manifest when the file size still
            matches (fast path).

    Returns:
        The file's sha256.

    Raises:
        InputError: the file is missing, has no recorded sha256, or its hash differs.
    """
    folder = folder or cache_dir()
    path = folder / w.filename
    record = read_manifest(folder).get(w.filename)
    if not path.is_file():
        raise InputError(f"{w.filename} is not in {folder}")
    if record is None:
        raise InputError(f"{path} has no recorded sha256: import it with `rada weights import {path}`")
    if not rehash and record.get("size") == path.stat().st_size:
        digest = record["sha256"]
    else:
        digest = sha256_file(path)
    expected = w.sha256 or record["sha256"]
    if digest != expected:
        raise InputError(f"{path} changed or is corrupt: sha256 {digest}, expected {expected}; download or "
                         f"import it again")
    return digest


def list_weights(folder: Path | None = None) -> list[dict]:
    """Every registry file: present or not, hashes, URLs (for ``rada weights list``).

    Args:
        folder: the weights folder (default :func:`cache_dir`).

    Returns:
        One dict per registry file.

    Raises:
        InputError: the manifest is corrupt.
    """
    folder = folder or cache_dir()
    manifest = read_manifest(folder)
    rows = []
    for w in REGISTRY.values():
        path = folder / w.filename
        record = manifest.get(w.filename, {})
        rows.append({"name": w.name, "file": w.filename, "role": w.role, "present": path.is_file(),
                     "path": str(path), "sha256": record.get("sha256"),
                     "expected_sha256": w.sha256 or "unknown (recorded on first download/import)",
                     "verified": bool(record.get("verified")), "size": record.get("size"),
                     "urls": list(w.urls), "description": w.description})
    return rows


# --- resolving an encoder variant ------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedWeights:
    """The files of one encoder variant, present and checked.

    Attributes:
        variant: the encoder variant.
        openai: OpenAI CLIP's ``ViT-B-16.pt``.
        visual: the Alpha-CLIP visual checkpoint, or None for plain CLIP.
        sha256: file name -> sha256.
    """

    variant: str
    openai: Path
    visual: Path | None
    sha256: dict[str, str]      # file name -> sha256


def resolve(variant: str = DEFAULT_VARIANT, folder: Path | None = None, rehash: bool = False) -> ResolvedWeights:
    """The cached, verified files of an encoder variant.

    Args:
        variant: the encoder variant.
        folder: the weights folder (default :func:`cache_dir`).
        rehash: hash the files again instead of trusting the manifest where sizes match.

    Returns:
        The :class:`ResolvedWeights`.

    Raises:
        InputError: an unknown variant, or a file is missing, unrecorded or corrupt (the
            message says what to run).
    """
    if variant not in VARIANTS:
        raise InputError(f"unknown encoder {variant!r}; known: {', '.join(VARIANTS)}")
    folder = folder or cache_dir()
    names = [n for n in VARIANTS[variant] if n is not None]
    missing = [REGISTRY[n].filename for n in names if not (folder / REGISTRY[n].filename).is_file()]
    if missing:
        raise InputError(f"no {' and no '.join(missing)} in {folder}: run `rada weights download` or "
                         f"`rada weights import FILE`")
    hashes = {REGISTRY[n].filename: verify(REGISTRY[n], folder, rehash=rehash) for n in names}
    openai_name, visual_name = VARIANTS[variant]
    return ResolvedWeights(variant, folder / REGISTRY[openai_name].filename,
                           folder / REGISTRY[visual_name].filename if visual_name else None, hashes)


def files_for(variants: Iterable[str]) -> list[str]:
    """Registry names needed by the given variants, in order, without repeats.

    Args:
        variants: encoder variant names.

    Returns:
        The registry names.

    Raises:
        InputError: an unknown variant.
    """
    out: list[str] = []
    for v in variants:
        if v not in VARIANTS:
            raise InputError(f"unknown encoder {v!r}; known: {', '.join(VARIANTS)}")
        out += [n for n in VARIANTS[v] if n is not None and n not in out]
    return out


__all__ = ["WeightFile", "REGISTRY", "VARIANTS", "DEFAULT_VARIANT", "cache_dir", "read_manifest", "sha256_file",
           "lookup", "download_file", "download", "import_file", "verify", "list_weights", "ResolvedWeights",
           "resolve", "files_for"]

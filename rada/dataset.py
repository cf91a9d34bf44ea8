"""Training datasets on disk: ``dataset.json`` (nnU-Net style) and the LA2018 builder.

A dataset is a folder with ``dataset.json``::

    {"name": "la2018", "organ": "left atrium", "prompt": "...", "modality": "MRI",
     "cases": [{"id": "...", "image": "...", "annotation": "..." | null,
                "label": "..." | null, "split": "train" | "val" | "test"}, ...]}

``annotation`` is a sparse annotation (0/1/255) or null for an unlabeled case; ``label`` is a
dense reference used for evaluation only (training never reads it). Paths are relative to
the folder or absolute. Images are normalised per volume (z-score) when loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rada.annotation import SparseAnnotation
from rada.errors import InputError
from rada.intensity import zscore
from rada.io import read_volume, write_volume
from rada.protocol import Protocol, apply
from rada.safe_write import atomic_path
from rada.volume import Volume

SPLITS = ("train", "val", "test")
DEFAULT_PROMPT = "An image containing the {organ}, with the rest being background"
DATASET_FILE = "dataset.json"


def default_prompt(organ: str) -> str:
    """The text prompt of the guidance encoder for ``organ`` (:data:`DEFAULT_PROMPT` filled in).

    Args:
        organ: the structure's name, e.g. ``left atrium``.

    Returns:
        The prompt a dataset uses when its ``dataset.json`` gives none.
    """
    return DEFAULT_PROMPT.format(organ=organ)


@dataclass(frozen=True)
class CaseEntry:
    """One case of a dataset; paths as written in ``dataset.json``.

    Attributes:
        id: the case id, unique in the dataset.
        image: the image file.
        annotation: the sparse annotation file (a labeled case), or None (unlabeled).
        label: the dense reference label (validation), or None.
        split: ``train``, ``val`` (or another of :data:`SPLITS`).
    """

    id: str
    image: str
    annotation: str | None = None
    label: str | None = None
    split: str = "train"

    @property
    def labeled(self) -> bool:
        """True when the case has a sparse annotation."""
        return self.annotation is not None


@dataclass
class DatasetSpec:
    """The content of ``dataset.json`` plus the folder it lives in (``root``).

    Attributes:
        name: the dataset's name.
        organ: the structure's name (for the guidance prompt).
        modality: the imaging modality (e.g. ``MRI``, ``CT``).
        prompt: the guidance text prompt (default: :func:`default_prompt` of ``organ``).
        cases: the cases.
        root: the folder relative paths are resolved against.
        preprocessing: a :class:`rada.protocol.Protocol` as JSON (e.g. the CT protocol).
    """

    name: str
    organ: str
    modality: str = "MRI"
    prompt: str = ""
    cases: list[CaseEntry] = field(default_factory=list)
    root: Path = Path(".")
    preprocessing: dict = field(default_factory=dict)   # rada.protocol.Protocol (e.g. the CT protocol)

    def __post_init__(self) -> None:
        if not self.prompt:
            self.prompt = default_prompt(self.organ)

    def path(self, relative: str) -> Path:
        """Absolute path of a path written in the dataset.

        Args:
            relative: a path from ``dataset.json`` (absolute ones are kept).

        Returns:
            The path, resolved against ``root``.
        """
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def split(self, name: str) -> list[CaseEntry]:
        """The cases of one split.

        Args:
            name: the split (``train``, ``val``, ...).

        Returns:
            Its cases in file order.
        """
        return [c for c in self.cases if c.split == name]

    def labeled(self, split: str = "train") -> list[CaseEntry]:
        """The cases of a split that have a sparse annotation.

        Args:
            split: the split.

        Returns:
            Its labeled cases in file order.
        """
        return [c for c in self.split(split) if c.labeled]

    def unlabeled(self, split: str = "train") -> list[CaseEntry]:
        """The cases of a split without a sparse annotation.

        Args:
            split: the split.

        Returns:
            Its unlabeled cases in file order.
        """
        return [c for c in self.split(split) if not c.labeled]

    def as_json(self) -> dict:
        """The spec as ``dataset.json`` content (``root`` is not written).

        Returns:
            The JSON object.
        """
        out = {"name": self.name, "organ": self.organ, "prompt": self.prompt, "modality": self.modality,
               "cases": [{k: v for k, v in asdict(c).items()} for c in self.cases]}
        if self.preprocessing:
            out["preprocessing"] = dict(self.preprocessing)
        return out

    @property
    def protocol(self):
        """The dataset's :class:`rada.protocol.Protocol` (validated)."""
        return Protocol.from_json(self.preprocessing)

    def validate(self, check_files: bool = True) -> "DatasetSpec":
        """Check that the dataset can be trained on.

        Args:
            check_files: also check that every referenced file exists.

        Returns:
            self.

        Raises:
            InputError: one line: no name or organ, a repeated case id, an unknown split, a
                missing file, no labeled training case, or bad ``preprocessing``.
        """
        if not self.name or not self.organ:
            raise InputError("dataset.json needs a 'name' and an 'organ'")
        seen: set[str] = set()
        for c in self.cases:
            if c.id in seen:
                raise InputError(f"case id {c.id!r} appears twice in dataset.json")
            seen.add(c.id)
            if c.split not in SPLITS:
                raise InputError(f"case {c.id}: split {c.split!r} is not one of {', '.join(SPLITS)}")
            if check_files:
                for key in ("image", "annotation", "label"):
                    value = getattr(c, key)
                    if value is not None and not self.path(value).exists():
                        raise InputError(f"case {c.id}: {key} file not found: {self.path(value)}")
        if not self.labeled("train"):
            raise InputError("dataset has no labeled training case (a case with an 'annotation')")
        self.protocol  # noqa: B018 - raises InputError for a bad 'preprocessing'
        return self


def read_dataset(path: str | os.PathLike, check_files: bool = True) -> DatasetSpec:
    """Read and validate a ``dataset.json``.

    Args:
        path: the file or its folder.
        check_files: also check that every referenced file exists.

    Returns:
        The validated :class:`DatasetSpec`, paths relative to the file's folder.

    Raises:
        InputError: missing, not JSON, a missing field, or a bad case.
    """
    p = Path(path)
    if p.is_dir():
        p = p / DATASET_FILE
    if not p.exists():
        raise InputError(f"no dataset.json at {p}")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p} is not valid JSON: {exc}") from None
    try:
        cases = [CaseEntry(id=str(c["id"]), image=c["image"], annotation=c.get("annotation"),
                           label=c.get("label"), split=c.get("split", "train")) for c in raw["cases"]]
        spec = DatasetSpec(name=raw["name"], organ=raw["organ"], modality=raw.get("modality", ""),
                           prompt=raw.get("prompt", ""), cases=cases, root=p.parent.resolve(),
                           preprocessing=dict(raw.get("preprocessing") or {}))
    except (KeyError, TypeError) as exc:
        raise InputError(f"{p}: malformed dataset.json (missing or wrong field {exc})") from None
    return spec.validate(check_files)


def write_dataset(spec: DatasetSpec, folder: str | os.PathLike) -> Path:
    """Write ``folder/dataset.json`` atomically.

    Args:
        spec: the dataset.
        folder: where the file goes (created if needed).

    Returns:
        The file's path.
    """
    target = Path(folder) / DATASET_FILE
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(spec.as_json(), indent=2) + "\n", encoding="utf-8")
    return target


def load_image(spec: DatasetSpec, case: CaseEntry) -> Volume:
    """The case's image, z-scored, as float32 (no protocol; see :func:`load_case`).

    Args:
        spec: the dataset.
        case: one of its cases.

    Returns:
        The image volume.
    """
    image = read_volume(spec.path(case.image))
    return image.with_array(zscore(image.array))


def load_case(spec: DatasetSpec, case: CaseEntry, with_label: bool = False):
    """A case after the dataset's protocol (:mod:`rada.protocol`).

    Args:
        spec: the dataset.
        case: one of its cases.
        with_label: also read the dense label.

    Returns:
        The z-scored image, its sparse annotation (None if unlabeled) and the dense label
        (None if absent or not asked for).
    """
    raw = read_volume(spec.path(case.image))
    label = read_volume(spec.path(case.label)) if with_label and case.label is not None else None
    prepared = apply(spec.protocol, raw, load_annotation(spec, case), label)
    image = prepared.image
    return image.with_array(zscore(image.array)), prepared.annotation, prepared.label


def load_annotation(spec: DatasetSpec, case: CaseEntry) -> SparseAnnotation | None:
    """The case's sparse annotation.

    Args:
        spec: the dataset.
        case: one of its cases.

    Returns:
        The annotation, or None for an unlabeled case.
    """
    if case.annotation is None:
        return None
    return SparseAnnotation(read_volume(spec.path(case.annotation)))


# --- LA2018 (UA-MT / SGTC protocol) ----------------------------------------------------

@dataclass(frozen=True)
class SplitFile:
    """A fixed split of LA2018's 80 cases.

    Attributes:
        labeled: train cases that get a sparse annotation.
        unlabeled: train cases used without annotation.
        val: validation cases (dense label only).
    """

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    val: tuple[str, ...]

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SplitFile":
        """Read a split JSON (``labeled``, ``unlabeled`` and ``val`` id lists).

        Args:
            path: the JSON file.

        Returns:
            The :class:`SplitFile`.

        Raises:
            InputError: the file cannot be read, is not JSON, or lacks an id list.
        """
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot use split file {path}: {exc}") from None
        lists = {k: raw.get(k) if isinstance(raw, dict) else None for k in ("labeled", "unlabeled", "val")}
        bad = [k for k, v in lists.items() if not (isinstance(v, list) and all(isinstance(i, str) for i in v))]
        if bad:
            raise InputError(f"split file {path} needs lists of case ids under labeled, unlabeled and val "
                             f"({bad[0]!r} is missing or not a list of strings)")
        return cls(tuple(lists["labeled"]), tuple(lists["unlabeled"]), tuple(lists["val"]))

    @classmethod
    def make(cls, case_ids: Sequence[str], n_labeled: int = 8, n_val: int = 16, seed: int = 2018) -> "SplitFile":
        """Draw a split: ``n_val`` cases drawn with ``seed``; the first ``n_labeled`` remaining ones
        (list order) labeled, the rest unlabeled.

        Args:
            case_ids: every case id, in a fixed order.
            n_labeled: labeled train cases.
            n_val: validation cases.
            seed: the draw's seed (2018 gives the repository's ``bench/la2018_split.json``).

        Returns:
            The :class:`SplitFile`.
        """
        ids = list(case_ids)
        val = set(np.random.default_rng(seed).permutation(len(ids))[:n_val].tolist())
        train = [c for i, c in enumerate(ids) if i not in val]
        return cls(tuple(train[:n_labeled]), tuple(train[n_labeled:]),
                   tuple(c for i, c in enumerate(ids) if i in val))


def build_la2018(source: str | os.PathLike, out: str | os.PathLike, split: SplitFile,
                 organ: str = "left atrium") -> DatasetSpec:
    """Build a barely-supervised LA2018 dataset in ``out`` from ``source/<ID>/{image,label}.nii.gz``.

    Labeled cases get a sparse annotation with the three largest-foreground slices (written
    to ``out/sparse/<ID>.nii.gz``); images and labels are referenced in place, never copied.
    Validation cases carry only their dense label.

    Args:
        source: folder with one sub-folder per case.
        out: the dataset folder to write (created).
        split: which cases are labeled, unlabeled and validation.
        organ: the structure's name.

    Returns:
        The validated :class:`DatasetSpec` (also written as ``out/dataset.json``).

    Raises:
        InputError: a case's image or label is missing, or a label is empty.
    """
    src, dst = Path(source).resolve(), Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    cases: list[CaseEntry] = []
    for split_name, ids in (("train", split.labeled), ("train", split.unlabeled), ("val", split.val)):
        for cid in ids:
            image, label = src / cid / "image.nii.gz", src / cid / "label.nii.gz"
            if not image.exists() or not label.exists():
                raise InputError(f"case {cid}: expected {image} and {label}")
            annotation = None
            if cid in split.labeled:
                sparse = SparseAnnotation.from_dense(read_volume(label))
                annotation = str(write_volume(sparse.labels, dst / "sparse" / f"{cid}.nii.gz").relative_to(dst))
            cases.append(CaseEntry(cid, str(image), annotation, str(label), split_name))
    spec = DatasetSpec(name="la2018", organ=organ, modality="MRI", cases=cases, root=dst.resolve())
    write_dataset(spec, dst)
    return spec.validate()


__all__ = ["CaseEntry", "DatasetSpec", "read_dataset", "write_dataset", "load_image", "load_case",
           "load_annotation", "SplitFile", "build_la2018", "DEFAULT_PROMPT", "default_prompt", "SPLITS"]

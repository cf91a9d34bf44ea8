"""A small real case on disk for the input-layer tests: a crop of an LA2018 MRI and its label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rada.annotation import SparseAnnotation
from rada.io import read_volume, write_volume
from rada.volume import Volume


@dataclass(frozen=True)
class CaseFiles:
    """Files of one cropped real case, plus the volumes they hold."""

    folder: Path
    image: Path          # .nii.gz, uint8 MRI
    label: Path          # .nii.gz, dense 0/1
    sparse: Path         # .nrrd, 0/1/255 with three annotated slices
    image_volume: Volume
    label_volume: Volume
    sparse_annotation: SparseAnnotation


def write_la_crop(case_dir: Path, folder: Path, margin: int = 4, step: int = 2) -> CaseFiles:
    """Crop a real LA2018 case around its atrium (every ``step``-th voxel, to keep tests fast).

    The crop keeps real intensities and a real label; the geometry follows the crop
    (origin moved, spacing times ``step``), so everything written is a valid volume.
    """
    image, label = read_volume(case_dir / "image.nii.gz"), read_volume(case_dir / "label.nii.gz")
    fg = np.argwhere(label.array > 0)
    lo = np.maximum(fg.min(axis=0) - margin, 0)
    hi = np.minimum(fg.max(axis=0) + margin + 1, label.shape)
    box = tuple(slice(int(a), int(b), step) for a, b in zip(lo, hi))
    spacing = tuple(s * step for s in image.spacing)

    def crop(volume: Volume) -> Volume:
        cropped = volume.crop(tuple(slice(b.start, b.stop) for b in box))
        return Volume(np.ascontiguousarray(cropped.array[::step, ::step, ::step]), spacing, cropped.origin,
                      cropped.direction)

    img, lab = crop(image), crop(label)
    sparse = SparseAnnotation.from_dense(lab)
    folder.mkdir(parents=True, exist_ok=True)
    files = CaseFiles(folder, folder / "image.nii.gz", folder / "label.nii.gz", folder / "sparse.nrrd",
                      img, lab, sparse)
    write_volume(img, files.image)
    write_volume(lab, files.label)
    write_volume(sparse.labels, files.sparse)
    return files

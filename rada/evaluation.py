"""Scoring label files and folders of label files (used by ``rada evaluate`` and the benchmarks)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from rada.errors import InputError
from rada.io import read_volume
from rada.safe_write import atomic_path
from rada.metrics import SegmentationScores, evaluate, summarize
from rada.volume import Volume

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_COLUMNS = ("dice", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm")


def score_volumes(pred: Volume, ref: Volume) -> SegmentationScores:
    """Score two label volumes on the same grid (distances in voxels and mm).

    Args:
        pred: the predicted label (non-zero is structure).
        ref: the reference label.

    Returns:
        The :class:`~rada.metrics.SegmentationScores`.

    Raises:
        InputError: the grids differ.
    """
    mismatch = pred.grid_mismatch(ref)
    if mismatch:
        raise InputError(f"prediction and reference grids differ: {mismatch}")
    return evaluate(pred.array, ref.array, spacing_zyx=pred.spacing[::-1])


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd",) + _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _label_files(folder: Path) -> dict[str, Path]:
    return {_case_id(f): f for f in sorted(folder.iterdir())
            if f.is_file() and f.name.lower().endswith(_VOLUME_SUFFIXES)}


def evaluate_paths(pred: str | os.PathLike, gt: str | os.PathLike) -> tuple[list[dict], dict]:
    """Score a file against a file, or a folder against a folder (cases matched by name).

    In folder mode every prediction needs a reference of the same name; references without a
    prediction are not scored, and the summary names them (``references_without_prediction``)
    so that a mean over fewer cases is never mistaken for the whole set.

    Args:
        pred: a predicted label volume, or a folder of them.
        gt: the reference volume, or a folder of them.

    Returns:
        ``(rows, summary)``: the per-case rows (``case`` plus every score) and the mean/std
        summary (:func:`rada.metrics.summarize`), in folder mode with
        ``references_without_prediction`` (case names, possibly empty).

    Raises:
        InputError: a file and a folder, a prediction without reference, an empty folder, an
            unreadable volume, or grids that differ.
    """
    pred_p, gt_p = Path(pred), Path(gt)
    if pred_p.is_dir() != gt_p.is_dir():
        raise InputError("give two files or two folders, not one of each")
    if pred_p.is_dir():
        preds, refs = _label_files(pred_p), _label_files(gt_p)
        missing = sorted(set(preds) - set(refs))
        if missing:
            raise InputError(f"no reference for {len(missing)} prediction(s): {', '.join(missing[:5])}")
        if not preds:
            raise InputError(f"no label volumes in {pred_p}")
        pairs = [(case, preds[case], refs[case]) for case in preds]
        unscored: list[str] | None = sorted(set(refs) - set(preds))
    else:
        pairs, unscored = [(_case_id(pred_p), pred_p, gt_p)], None
    rows, scores = [], []
    for case, p, g in pairs:
        s = score_volumes(read_volume(p), read_volume(g))
        scores.append(s)
        rows.append({"case": case, **s.as_dict()})
    summary = summarize(scores)
    if unscored is not None:
        summary["references_without_prediction"] = unscored
    return rows, summary


def format_table(rows: list[dict], summary: dict) -> str:
    """A plain-text table: one line per case, then mean +- std as in the papers.

    Args:
        rows: the per-case rows of :func:`evaluate_paths`.
        summary: its summary.

    Returns:
        The table.
    """
    head = f"{'case':<24}" + "".join(f"{c:>10}" for c in _COLUMNS) + "  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[c]:>10.4f}" if r[c] is not None else f"{'-':>10}" for c in _COLUMNS)
        lines.append(f"{r['case']:<24}{cells}  {'empty ' + r['empty'] if r['empty'] else ''}")
    lines.append("-" * len(head))
    lines.append(f"{'mean':<24}" + "".join(
        f"{summary[c]['mean']:>10.4f}" if c in summary else f"{'-':>10}" for c in _COLUMNS))
    lines.append(f"{'std':<24}" + "".join(
        f"{summary[c]['std']:>10.4f}" if c in summary else f"{'-':>10}" for c in _COLUMNS))
    if summary["empty"]["n"]:
        lines.append(f"{summary['empty']['n']} case(s) with an empty mask: surface metrics exclude them")
    unscored = summary.get("references_without_prediction")
    if unscored:
        lines.append(f"{len(unscored)} reference(s) without a prediction, not in the mean: "
                     f"{', '.join(unscored[:5])}{' ...' if len(unscored) > 5 else ''}")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write the per-case rows as CSV, atomically.

    Args:
        rows: the per-case rows of :func:`evaluate_paths`.
        path: the CSV file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: the file cannot be written.
    """
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", *_COLUMNS, "empty"])
        writer.writeheader()
        writer.writerows(rows)
    return target

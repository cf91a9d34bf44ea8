"""Metrics against analytic shapes and, where it installs, against medpy."""

from __future__ import annotations

import numpy as np
import pytest

from rada.metrics import asd, dice, evaluate, hd95, jaccard, summarize


def _sphere(shape, center, radius) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return ((grid - np.asarray(center, float)[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_dice_and_jaccard_of_offset_spheres_match_the_analytic_overlap():
    r, d = 12.0, 8.0
    a = _sphere((48, 48, 48), (24, 24, 20), r)
    b = _sphere((48, 48, 48), (24, 24, 28), r)
    # Two equal spheres at distance d overlap in a lens of volume pi (4r + d)(2r - d)^2 / 12.
    lens = np.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    sphere = 4 / 3 * np.pi * r**3
    assert dice(a, b) == pytest.approx(lens / sphere, abs=0.02)
    assert jaccard(a, b) == pytest.approx(lens / (2 * sphere - lens), abs=0.02)
    assert jaccard(a, b) == pytest.approx(dice(a, b) / (2 - dice(a, b)), rel=1e-12)


def test_surface_distances_of_concentric_spheres_equal_the_radius_gap():
    a = _sphere((40, 40, 40), (20, 20, 20), 12)
    b = _sphere((40, 40, 40), (20, 20, 20), 8)
    # Every surface point of one is ~4 voxels from the other's surface (discretisation +-1).
    assert asd(a, b) == pytest.approx(4.0, abs=0.6)
    assert asd(b, a) == pytest.approx(4.0, abs=0.6)
    assert hd95(a, b) == pytest.approx(4.0, abs=1.0)


def test_spacing_scales_distances_to_millimetres():
    a = _sphere((40, 40, 40), (20, 20, 20), 12)
    b = _sphere((40, 40, 40), (20, 20, 20), 8)
    s = evaluate(a, b, spacing_zyx=(2.0, 2.0, 2.0))
    assert s.hd95_mm == pytest.approx(2 * s.hd95)
    assert s.asd_mm == pytest.approx(2 * s.asd)


def test_identical_masks_score_perfectly():
    a = _sphere((20, 20, 20), (10, 10, 10), 6)
    s = evaluate(a, a)
    assert (s.dice, s.jaccard, s.hd95, s.asd, s.empty) == (1.0, 1.0, 0.0, 0.0, None)


def test_empty_prediction_is_reported_not_scored_as_zero_distance():
    ref = _sphere((20, 20, 20), (10, 10, 10), 6)
    s = evaluate(np.zeros_like(ref), ref)
    assert s.empty == "prediction" and s.dice == 0.0
    assert s.hd95 is None and s.asd is None
    summary = summarize([s, evaluate(ref, ref)])
    assert summary["empty"]["n"] == 1
    assert summary["hd95"]["n"] == 1 and summary["dice"]["n"] == 2
    with pytest.raises(ValueError, match="empty"):
        hd95(np.zeros_like(ref), ref)


def test_matches_medpy_on_real_shapes(la_dir, la_case_ids):
    medpy_binary = pytest.importorskip("medpy.metric.binary", reason="medpy is not installed")
    from rada.io import read_volume

    ref = read_volume(la_dir / la_case_ids[0] / "label.nii.gz").array[30:60, 40:100, 50:130] > 0
    pred = np.roll(ref, 3, axis=2) & ~np.roll(ref, -2, axis=1)  # a plausible, imperfect prediction
    spacing = (0.625, 0.625, 1.25)
    assert dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref), rel=1e-12)
    assert jaccard(pred, ref) == pytest.approx(medpy_binary.jc(pred, ref), rel=1e-12)
    assert hd95(pred, ref, spacing) == pytest.approx(medpy_binary.hd95(pred, ref, spacing), rel=1e-9)
    assert asd(pred, ref, spacing) == pytest.approx(medpy_binary.asd(pred, ref, spacing), rel=1e-9)

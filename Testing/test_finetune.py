"""The ``finetune`` preset (rada.finetune): the RADA method on one real LA case, cropped small.

Tiny settings (width 4, 32^3 patches, a few dozen iterations, half resolution) so the whole
path -- ANTs propagation, tri-view fine-tune with cross-view supervision, sliding-window
inference, fusion -- runs on one CPU thread in CI.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rada.annotation import IGNORE, SparseAnnotation
from rada.errors import CancelledError, InputError
from rada.finetune import FinetuneConfig, _resample_annotation, with_overrides
from rada.io import read_volume
from rada.metrics import dice
from rada.pipeline import SegmentCache, SegmentConfig, segment_case
from rada.volume import Volume

CASE = "0RZDK210BSMWAA6467LU"
TINY = FinetuneConfig.cpu(width=4, patch_size=(32, 32, 32), iterations=30, refine_iterations=6,
                          registration_workers=1, guidance=False)


def _small_case(la_dir) -> tuple[Volume, Volume]:
    """The case around its atrium (a few voxels of margin) with the spacing it really has."""
    image = read_volume(la_dir / CASE / "image.nii.gz")
    label = read_volume(la_dir / CASE / "label.nii.gz")
    fg = np.argwhere(label.array > 0)
    box = tuple(slice(max(int(lo) - 4, 0), min(int(hi) + 5, n)) for lo, hi, n in
                zip(fg.min(0), fg.max(0), label.shape))
    return image.crop(box), label.crop(box)


@pytest.fixture(scope="module")
def first_run(la_dir):
    image, label = _small_case(la_dir)
    annotation = SparseAnnotation.from_dense(label)
    cache = SegmentCache()
    stages: list[tuple[float, str, str]] = []
    result = segment_case(image, annotation, SegmentConfig(preset="finetune", finetune=TINY),
                          progress=lambda f, st, m: stages.append((f, st, m)), cache=cache)
    return image, label, annotation, cache, result, stages


@pytest.mark.slow
def test_finetune_beats_its_own_ants_pseudo_label(first_run):
    image, label, _, cache, result, _ = first_run
    box = tuple(slice(a, b) for a, b in result.report["finetune"]["box_zyx"])  # where the fine-tune ran
    truth = label.array[box] > 0
    memory = cache.finetune
    pseudo = dice(memory.pseudo_label > 0, truth)
    segmented = dice(result.label.array[box] > 0, truth)
    network = dice(memory.probability > 0.5, truth)
    # The whole path (fine-tuned networks fused with the fast evidence) beats registration alone;
    # the networks themselves learnt the structure in 30 steps (without optimiser steps: 0.36).
    assert segmented > pseudo, (segmented, pseudo, network)
    assert network > 0.5, (segmented, pseudo, network)


@pytest.mark.slow
def test_finetune_segment_output_and_report(first_run):
    image, _, annotation, _, result, stages = first_run
    assert result.label.same_grid(image)
    known = annotation.known()
    np.testing.assert_array_equal(result.label.array[known], annotation.array[known])
    ft = result.report["finetune"]
    assert result.report["preset"] == "finetune"
    assert ft["started_from"] == "scratch" and ft["iterations"] == TINY.iterations
    assert result.report["guidance"] == {"enabled": False, "reason": "guidance off: disabled in the fine-tune settings"}
    assert set(ft["timings_s"]) == {"propagate", "guidance", "finetune", "infer"}
    seen = {st for _, st, _ in stages}
    assert {"propagate", "finetune", "infer", "fuse"} <= seen
    assert f"iteration {TINY.iterations}/{TINY.iterations}" in [m for _, st, m in stages if st == "finetune"]
    fractions = [f for f, _, _ in stages]  # one bar from 0 to 1 that never runs backwards
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, [(round(f, 3), st) for f, st, _ in stages]
    assert ft["propagation"]["registrations_run"] > 0


@pytest.mark.slow
def test_refinement_starts_from_the_cached_weights(first_run):
    image, label, annotation, cache, first, _ = first_run
    # One more painted axial slice, 6 slices off the first.
    z = annotation.annotated_slices("axial")[0]
    more = annotation.array.copy()
    extra = z + 6 if z + 6 < label.shape[0] else z - 6
    more[extra] = label.array[extra] > 0
    refined = segment_case(image, SparseAnnotation(annotation.labels.with_array(more)),
                           SegmentConfig(preset="finetune", finetune=TINY), cache=cache)
    ft = refined.report["finetune"]
    assert ft["started_from"] == "cached weights"
    assert ft["iterations"] == TINY.refine_iterations
    assert ft["iterations_total"] == TINY.iterations + TINY.refine_iterations
    assert ft["propagation"]["registrations_cached"] > 0
    np.testing.assert_array_equal(refined.label.array[extra], (label.array[extra] > 0).astype(np.uint8))


@pytest.mark.slow
def test_cancel_mid_finetune_stops_and_keeps_nothing(la_dir):
    image, label = _small_case(la_dir)
    annotation = SparseAnnotation.from_dense(label)
    cache, cancel, seen = SegmentCache(), threading.Event(), []

    def progress(fraction: float, stage: str, message: str) -> None:
        seen.append((stage, message))
        if stage == "finetune" and message.startswith("iteration 3/"):
            cancel.set()
    with pytest.raises(CancelledError):
        segment_case(image, annotation, SegmentConfig(preset="finetune", finetune=TINY),
                     progress=progress, cancel=cancel, cache=cache)
    iterations = [m for st, m in seen if st == "finetune" and m.startswith("iteration")]
    assert iterations[-1].startswith("iteration 3/")  # stopped at the next iteration, not at the end
    # The image's memory got no weights and no result: a later call starts as if this never ran.
    assert cache.finetune.weights is None and cache.finetune.probability is None
    assert cache.finetune.key is None


def test_resampled_annotation_keeps_every_painted_slice():
    arr = np.full((20, 30, 40), IGNORE, np.uint8)
    arr[7] = 0                      # an empty painted axial slice (odd index): the structure is z 8..14
    arr[9] = 0
    arr[9, 10:20, 10:30] = 1
    arr[:, 15] = 0
    arr[8:15, 15, 10:30] = 1
    arr[:, :, 21] = 0
    arr[8:15, 10:20, 21] = 1
    ann = SparseAnnotation(Volume(arr, (1.0, 1.0, 2.0)))
    small = _resample_annotation(ann, (10, 15, 20))
    assert small.annotated_slices("axial") == [3, 4]      # 7 -> 3, 9 -> 4: neither lost
    assert small.annotated_slices("coronal") == [7]
    assert small.annotated_slices("sagittal") == [10]
    assert not small.slice_mask("axial", 3).any()          # the empty painted slice stays empty
    assert small.slice_mask("axial", 4).sum() == 5 * 10
    assert small.labels.spacing == (2.0, 2.0, 4.0)


def test_finetune_config_rejects_bad_values_and_picks_the_cpu_profile():
    with pytest.raises(InputError, match="patch_size"):
        FinetuneConfig(patch_size=(30, 32, 32)).validated()
    with pytest.raises(InputError, match="combine"):
        FinetuneConfig(combine="mean").validated()
    with pytest.raises(InputError, match="unknown finetune setting 'iteration'"):
        with_overrides(FinetuneConfig.cpu(), iteration=10)
    assert with_overrides(FinetuneConfig.cpu(), iterations=10).iterations == 10
    assert FinetuneConfig.for_device("cpu") == FinetuneConfig.cpu()
    assert FinetuneConfig.cpu().width < FinetuneConfig.gpu().width
    with pytest.raises(InputError, match="unknown preset"):
        SegmentConfig(preset="finetuned").resolved()


@pytest.mark.slow
def test_gpu_profile_runs_on_cpu_with_tiny_settings():
    """The GPU profile's path (full resolution, METHOD.md's optimiser, dropout and schedules)
    on a small phantom, shrunk to CPU size; it was not measured on a GPU."""
    from rada.finetune import finetune_case
    from rada.phantom import PhantomConfig, make_phantom

    image, truth = make_phantom(PhantomConfig(shape_zyx=(32, 48, 48), seed=1))
    annotation = SparseAnnotation.from_dense(truth)
    cfg = FinetuneConfig.gpu(device="cpu", width=4, patch_size=(32, 32, 32), iterations=4, registration_workers=1,
                             guidance=False, unlabeled_batch=1, labeled_batch=1, teacher_passes=2)
    assert cfg.scale == 1.0 and cfg.registration_resolution == "full" and cfg.dropout == 0.5 and cfg.lr_decay
    result = finetune_case(image, annotation, cfg)
    assert result.probability.shape == image.shape and result.probability.dtype == np.float32
    assert 0.0 <= float(result.probability.min()) and float(result.probability.max()) <= 1.0
    assert result.report["working_shape_zyx"] == list(image.shape) and result.report["device"] == "cpu"
    assert result.report["iterations"] == 4 and result.report["started_from"] == "scratch"

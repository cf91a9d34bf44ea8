"""A real train job through a real ``rada serve`` subprocess, with default settings except the
size (tiny width, patch and iterations; real LA cases cropped around the atrium and
downscaled): from the RadaClient and from RADATrainer's logic, to a named checkpoint with
validation Dice, guidance off with its reason, and settings refused before any work."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from rada.annotation import SparseAnnotation  # noqa: E402
from rada.dataset import CaseEntry, DatasetSpec, write_dataset  # noqa: E402
from rada.errors import InputError  # noqa: E402
from rada.io import read_volume, write_volume  # noqa: E402
from rada.service.client import LocalServer  # noqa: E402
from rada.checkpoint import load_checkpoint  # noqa: E402
from rada.volume import Volume  # noqa: E402

from repo_paths import REPO  # noqa: E402
STEP = (2, 3, 3)  # [z, y, x] downscale after the crop
TINY = {"model": {"backbone": {"width": 4}}, "patch_size": [16, 16, 16]}


def _small(volume: Volume, box: tuple[slice, ...], label: bool) -> Volume:
    """Crop ``box`` then keep every STEP-th voxel; spacing and origin follow (direction identity)."""
    window = tuple(slice(b.start, b.stop, s) for b, s in zip(box, STEP))
    array = volume.array[window]
    spacing_xyz = tuple(sp * s for sp, s in zip(volume.spacing, STEP[::-1]))
    origin_xyz = tuple(o + b.start * sp for o, b, sp in zip(volume.origin, box[::-1], volume.spacing))
    return Volume((array > 0).astype(np.uint8) if label else array, spacing_xyz, origin_xyz, volume.direction)


@pytest.fixture(scope="module")
def datasets(la_dir, la_case_ids, tmp_path_factory) -> Path:
    """``datasets/la_tiny``: 2 labeled (three largest-foreground slices), 1 unlabeled, 1 validation case."""
    root = tmp_path_factory.mktemp("datasets")
    folder = root / "la_tiny"
    entries = []
    for i, cid in enumerate(la_case_ids[:4]):
        image, dense = read_volume(la_dir / cid / "image.nii.gz"), read_volume(la_dir / cid / "label.nii.gz")
        idx = np.argwhere(dense.array > 0)
        lo, hi = np.maximum(idx.min(0) - 6, 0), np.minimum(idx.max(0) + 7, dense.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        small_image, small_label = _small(image, box, False), _small(dense, box, True)
        write_volume(small_image, folder / "images" / f"{cid}.nii.gz")
        write_volume(small_label, folder / "labels" / f"{cid}.nii.gz")
        annotation = None
        if i < 2:
            sparse = SparseAnnotation.from_dense(small_label)
            annotation = str(write_volume(sparse.labels, folder / "sparse" / f"{cid}.nii.gz").relative_to(folder))
        entries.append(CaseEntry(cid, f"images/{cid}.nii.gz", annotation, f"labels/{cid}.nii.gz",
                                 "val" if i == 3 else "train"))
    write_dataset(DatasetSpec(name="la_tiny", organ="left atrium", cases=entries, root=folder), folder)
    return root


def _env(tmp_path: Path) -> dict[str, str]:
    # This checkout's rada in the server; an empty weights folder, so the guidance is off.
    return {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "RADA_HOME": str(tmp_path / "rada-home"), "OMP_NUM_THREADS": "1"}


def _refusal(client, options: dict) -> str:
    """The one-line refusal of a train job's settings: at submit (422, names and ranges) or by
    the job itself before any work (the nested training configuration)."""
    try:
        job = client.submit_train(options)
    except InputError as exc:
        return str(exc)
    status = client.wait(job, timeout=60)
    with pytest.raises(InputError) as refused:
        status.raise_for_state()
    return str(refused.value)


@pytest.mark.slow
def test_train_job_through_rada_serve_to_a_checkpoint(datasets, tmp_path):
    models = tmp_path / "models"
    server = LocalServer(models_dir=models, device="cpu", extra_args=["--datasets-dir", str(datasets)],
                         env=_env(tmp_path)).start(timeout=120)
    try:
        with server.client(timeout=60) as client:
            # Settings are refused before any expensive step: no run folder, no pseudo-label.
            for options, message in (({"config": {"patch_size": [30, 32, 32]}}, "three multiples of 16"),
                                     ({"config": {"schedule": {"iteration": 3}}}, "unknown key 'schedule.iteration'"),
                                     ({"guidance": "always"}, "must be auto or off"),
                                     ({"iterations": 0}, "iterations must be at least 1")):
                assert message in _refusal(client, {"dataset": "la_tiny", "model_name": "bad", "resume": True,
                                                    **options})
            assert not (models / ".run-bad").exists()
            # The real job: defaults except the size.
            messages: list[str] = []
            job = client.submit_train({"dataset": "la_tiny", "model_name": "la", "iterations": 4, "resume": True,
                                       "checkpoint_every": 2, "validate_every": 2, "config": TINY})
            status = client.wait(job, progress=lambda f, s, m: messages.append(m), timeout=600)
            status.raise_for_state()
            report = status.report
            assert report["model"] == "la" and report["iterations"] == 4 and report["selected"] == "best"
            assert report["guidance"]["enabled"] is False and "rada weights download" in report["guidance"]["reason"]
            history = report["validation"]["history"]
            assert [h["iteration"] for h in history] == [2, 4]
            assert all(0.0 <= h["dice"] <= 1.0 for h in history)
            assert report["validation"]["best_dice"] == max(h["dice"] for h in history)
            assert any("val dice" in m for m in messages) and any(m.startswith("iteration 4/4") for m in messages)
            assert "la" in client.health()["models"]["available"]
        state = load_checkpoint(models / "la.pt")
        assert state["guidance"] == report["guidance"]
        assert state["iteration"] == report["validation"]["best_iteration"]
        assert state["config"]["model"]["backbone"]["width"] == 4
        assert state["config"]["teacher_passes"] == 8 and state["config"]["validate_every"] == 2
        assert sorted((models / ".run-la" / "pseudo_labels").glob("*.npz"))  # propagated once, kept for a resume
    finally:
        server.stop()


@pytest.mark.slow
def test_trainer_logic_against_a_real_server(datasets, tmp_path):
    from slicer_helpers import require_slicer_core

    require_slicer_core()
    from RADASegmentationLib.backend import Backend, BackendConfig
    from RADATrainerLib.logic import TrainerLogic, update_validation_plot
    from slicer_helpers import new_scene

    models = tmp_path / "models"
    backend = Backend(BackendConfig(device="cpu", models_dir=str(models), datasets_dir=str(datasets),
                                    extra_env=_env(tmp_path)))
    try:
        logic = TrainerLogic(backend)
        bad = logic.start("la_tiny", "bad", config={"patch_size": [16, 16]})
        deadline = time.monotonic() + 600
        while not logic.poll(bad).finished:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert bad.state == "failed" and "expected 3 values" in bad.error
        task = logic.start("la_tiny", "atrium", iterations=4, checkpoint_every=2, validate_every=2, config=TINY)
        while not logic.poll(task).finished:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert task.state == "done", task.error
        assert [it for it, *_ in task.validation] == [2, 4] and task.best is not None
        assert task.best[0] == max(d for _, d, _ in task.validation)
        assert logic.validation_summary(task).startswith("validation Dice ")
        scene = new_scene()
        chart = update_validation_plot(scene, task.validation)
        table = scene.GetFirstNodeByName("RADA validation Dice table").GetTable()
        assert chart.GetNumberOfPlotSeriesNodes() == 1 and table.GetNumberOfRows() == 2
        assert table.GetValue(1, 1).ToDouble() == pytest.approx(task.validation[1][1])
        iterations = [it for it, _ in task.losses]  # the live loss (polling may miss lines)
        assert iterations and iterations == sorted(set(iterations)) and max(iterations) <= 4
        assert "atrium" in logic.models()
    finally:
        backend.stop()

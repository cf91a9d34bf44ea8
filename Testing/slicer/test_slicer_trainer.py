"""RADATrainer's logic on real MRML nodes (slicer-core): datasets from the scene, validation,
train jobs through the client (start, live loss, stop, resume options), the loss plot."""

from __future__ import annotations

import time

import pytest
from slicer_helpers import new_scene, require_slicer_core

require_slicer_core()
pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from RADASegmentationLib.backend import Backend, BackendConfig
from RADATrainerLib import selftest
from RADATrainerLib.logic import TrainerLogic, update_loss_plot


@pytest.mark.parametrize("check", selftest.OFFLINE_CHECKS, ids=lambda c: c.__name__)
def test_offline_check(check, tmp_path):
    import inspect

    scene = new_scene()
    if len(inspect.signature(check).parameters) == 1:
        check(scene)
    else:
        check(scene, tmp_path)


def _fake_train_runner(seen: list):
    """A 'train' runner that reports 'iteration i/N, loss x' like rada's and honours cancel."""
    from rada.service.manager import JobOutput

    def run(ctx):
        seen.append(dict(ctx.options))
        total = ctx.options.get("iterations", 50)
        ctx.progress(0.0, "prepare", "propagating pseudo-labels and loading the dataset")
        for i in range(1, total + 1):
            ctx.check_cancel()
            time.sleep(0.02)
            ctx.progress(i / total, "train", f"iteration {i}/{total}, loss {1.0 / i:.4f}")
        return JobOutput(None, {"model": ctx.options.get("model_name"), "iterations": total})

    run.required_inputs = ()
    return run


def test_train_job_start_progress_loss_stop_and_finish():
    from service_helpers import TOKEN, start_test_server

    seen: list = []
    with start_test_server(runners={"train": _fake_train_runner(seen)}) as srv:
        logic = TrainerLogic(Backend(BackendConfig(mode="remote", url=srv.url, token=TOKEN)))
        scene = new_scene()
        # Stop mid-way: the job is cancelled on the server, the loss curve so far is kept.
        task = logic.start("liver_ct", "liver", iterations=400, device="cpu", resume=False)
        deadline = time.monotonic() + 30
        while len(logic.poll(task).losses) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        logic.stop(task)
        while not logic.poll(task).finished:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert task.state == "cancelled"
        iterations = [i for i, _ in task.losses]
        assert iterations == sorted(iterations) and task.losses[0][1] > task.losses[-1][1]
        chart = update_loss_plot(scene, task.losses)
        assert chart.GetNumberOfPlotSeriesNodes() == 1
        # Resume runs to the end; the options name the dataset and model, never a path.
        task = logic.start("liver_ct", "liver", iterations=20, resume=True)
        while not logic.poll(task).finished:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert task.state == "done" and task.report == {"model": "liver", "iterations": 20}
        assert seen[0] == {"dataset": "liver_ct", "resume": False, "model_name": "liver", "iterations": 400,
                           "device": "cpu"}
        assert seen[1]["resume"] is True
        logic.backend.stop()


def test_local_dataset_folder_configures_the_local_server(tmp_path):
    from rada.errors import InputError

    logic = TrainerLogic(Backend(BackendConfig(device="cpu")))
    (tmp_path / "ds" / "liver").mkdir(parents=True)
    with pytest.raises(InputError, match="no dataset.json"):
        logic.use_dataset_folder(tmp_path / "ds" / "liver", tmp_path / "models")
    (tmp_path / "ds" / "liver" / "dataset.json").write_text("{}", encoding="utf-8")
    assert logic.use_dataset_folder(tmp_path / "ds" / "liver", tmp_path / "models") == "liver"
    assert logic.backend.config.datasets_dir == str((tmp_path / "ds").resolve())
    assert logic.backend.config.models_dir == str(tmp_path / "models")
    assert logic.backend.config.device == "cpu"


def test_train_job_on_a_real_server_refuses_unknown_dataset(tmp_path):
    """The real 'train' runner behind a real `rada serve`: a bad dataset name fails in one line."""
    (tmp_path / "datasets").mkdir()
    backend = Backend(BackendConfig(device="cpu", models_dir=str(tmp_path / "models"),
                                    datasets_dir=str(tmp_path / "datasets")))
    try:
        logic = TrainerLogic(backend)
        task = logic.start("nope", iterations=2)
        deadline = time.monotonic() + 60
        while not logic.poll(task).finished:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert task.state == "failed" and "no dataset named 'nope'" in task.error
        assert logic.models() == []
    finally:
        backend.stop()


def test_loss_plot_shows_validation_dice_live_in_the_same_chart():
    """The panel has one plot: the validation Dice joins the loss chart as a second series once
    there is a validation point, and later updates change the tables in place."""
    scene = new_scene()
    losses = [(10, 0.9), (20, 0.6)]
    chart = update_loss_plot(scene, losses, validation=[])
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    validation = [(20, 0.41, 12.5)]
    assert update_loss_plot(scene, losses, validation=validation) is chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    validation.append((40, 0.55, None))  # HD95 not defined (empty prediction) -> NaN, still plotted
    update_loss_plot(scene, losses + [(30, 0.5), (40, 0.45)], validation=validation)
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    table = scene.GetFirstNodeByName("RADA validation Dice table").GetTable()
    assert table.GetNumberOfRows() == 2
    assert [table.GetValue(r, 1).ToDouble() for r in range(2)] == [0.41, 0.55]
    assert scene.GetFirstNodeByName("RADA training loss table").GetTable().GetNumberOfRows() == 4
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1

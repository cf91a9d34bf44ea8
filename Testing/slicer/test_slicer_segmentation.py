"""RADASegmentation's logic on real MRML nodes (slicer-core), against a real `rada serve`.

The check bodies live in RADASegmentation/RADASegmentationLib/selftest.py and are also the
module's self-test inside Slicer.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from slicer_helpers import new_scene, require_slicer_core

require_slicer_core()
pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from RADASegmentationLib import selftest
from RADASegmentationLib.backend import Backend, BackendConfig
from RADASegmentationLib.logic import SegmentationLogic


@pytest.fixture(scope="module")
def local_backend():
    """A real `rada serve` subprocess on loopback, started the way the module starts it."""
    backend = Backend(BackendConfig(device="cpu", start_timeout_s=90))
    backend.start()  # the widget's path: launch the process, poll its ready file from a timer
    deadline = time.monotonic() + 90
    while not backend.poll_ready():
        assert time.monotonic() < deadline, "local server did not start"
        time.sleep(0.05)
    yield backend
    backend.stop()


@pytest.mark.parametrize("check", selftest.OFFLINE_CHECKS, ids=lambda c: c.__name__)
def test_offline_check(check, tmp_path):
    scene = new_scene()
    if check is selftest.check_seg_nrrd_interop:
        check(scene, tmp_path)
    else:
        check(scene)


def test_segment_end_to_end_through_a_local_server(local_backend):
    scene = new_scene()
    result = selftest.check_segment_end_to_end(scene, SegmentationLogic(local_backend))
    assert result["dice"] > 0.8
    assert "no GPU found" in local_backend.device_message()
    # The server's local process is the one LocalServer started, on loopback.
    assert local_backend.description.startswith("local server http://127.0.0.1:")


def test_refinement_with_more_slices_and_a_second_output(local_backend):
    """Painting one more slice and pressing Segment again replaces the result (one segment)."""
    scene = new_scene()
    image, truth = selftest.synthetic_case()
    slices = selftest.largest_slices(truth)
    vol, seg, sid = selftest.add_case(scene, image, selftest.paint(truth, slices), "refine")
    logic = SegmentationLogic(local_backend)
    first_id, first = logic.segment(vol, seg, sid, options={"device": "cpu"})
    slices["axial"].append(slices["axial"][0] - 3)
    from RADASegmentationLib import mrml

    mrml.set_segment_mask(seg, sid, image.with_array(selftest.paint(truth, slices)))
    second_id, second = logic.segment(vol, seg, sid, options={"device": "cpu"})
    assert second_id == first_id and seg.GetSegmentation().GetNumberOfSegments() == 2
    assert sorted(second.annotation.slices()["axial"]) == sorted(slices["axial"])
    known = second.annotation.known()
    got = mrml.segment_mask(seg, second_id, vol).array > 0
    assert np.array_equal(got[known], second.annotation.foreground()[known])
    assert logic.undo(scene)  # back to the first result
    assert np.array_equal(mrml.segment_mask(scene.GetNodeByID(seg.GetID()), first_id, vol).array > 0,
                          first.label.array > 0)


def test_cancel_stops_the_job_and_nothing_is_written():
    """Cancel on a slow job (a loopback server with a slow runner): state 'cancelled', no segment."""
    from service_helpers import (
        TOKEN,
        Recorder,
        make_threshold_runner,
        start_test_server,
    )

    rec = Recorder()
    with start_test_server(rec, runners={"segment": make_threshold_runner(rec)}) as srv:
        backend = Backend(BackendConfig(mode="remote", url=srv.url, token=TOKEN))
        logic = SegmentationLogic(backend)
        scene = new_scene()
        image, truth = selftest.synthetic_case()
        vol, seg, sid = selftest.add_case(scene, image, selftest.paint(truth, selftest.largest_slices(truth)), "c")
        task = logic.submit(vol, seg, sid, {"steps": 200, "delay": 0.05})
        deadline = time.monotonic() + 20
        while logic.poll(task).state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        logic.cancel(task)
        while not logic.poll(task).finished:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert task.state == "cancelled" and task.label is None
        assert task.status_line() == "Cancelled."
        assert rec.cancelled == [task.job_id]
        with pytest.raises(Exception, match="no result to apply"):
            logic.apply_result(task, seg, "x")
        assert seg.GetSegmentation().GetNumberOfSegments() == 1
        backend.stop()


def test_remote_backend_errors_are_one_line():
    from rada.errors import InputError
    from rada.service.client import ServerUnavailableError

    with pytest.raises(InputError, match="no server URL"):
        Backend(BackendConfig(mode="remote")).client()
    backend = Backend(BackendConfig(mode="remote", url="http://127.0.0.1:9", token="x"))
    with pytest.raises(ServerUnavailableError, match="cannot reach the RADA server"):
        backend.health()
    with pytest.raises(InputError, match="server mode"):
        BackendConfig(mode="cloud")


def test_settings_keys_configure_the_backend(tmp_path):
    from RADASegmentationLib.backend import SETTINGS_KEYS
    from RADASegmentationLib.dependencies import runtime_constraints

    config = BackendConfig.from_settings({SETTINGS_KEYS["mode"]: "remote", SETTINGS_KEYS["url"]: "https://gpu:8765",
                                          SETTINGS_KEYS["token"]: "t", SETTINGS_KEYS["models_dir"]: None})
    assert (config.mode, config.url, config.token, config.device) == ("remote", "https://gpu:8765", "t", "auto")
    path = runtime_constraints(None, tmp_path / "c.txt")
    assert any(line.startswith("numpy==") for line in path.read_text(encoding="utf-8").splitlines())

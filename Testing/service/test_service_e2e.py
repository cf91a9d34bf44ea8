"""The real segment runner behind the server, and ``rada serve`` as a subprocess."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from rada.errors import InputError  # noqa: E402
from rada.metrics import dice  # noqa: E402
from rada.service.app import create_app  # noqa: E402
from rada.service.client import LocalServer, RadaClient, ServerUnavailableError  # noqa: E402
from rada.service.settings import ServiceSettings  # noqa: E402

from service_helpers import TOKEN, ServerThread, ellipsoid_case  # noqa: E402


def test_real_segment_runner_end_to_end(tmp_path):
    """Default runners (rada.pipeline): an oblique anisotropic ellipsoid from 3 painted slices."""
    pytest.importorskip("torch", reason="the real segment runner needs torch (not in the Slicer-Python service check of .ci/run)")
    image, annotation, truth = ellipsoid_case((24, 24, 24))
    app = create_app(ServiceSettings(token=TOKEN, work_dir=tmp_path, device="cpu"))  # default runners
    with ServerThread(app) as srv, RadaClient(srv.url, TOKEN) as client:
        assert client.health()["kinds"] == ["segment", "train"]
        stages: list[str] = []
        label, report = client.segment(image, annotation, {"preset": "fast"},
                                       progress=lambda f, s, m: stages.append(s), timeout=60)
        assert label.spacing == image.spacing and label.origin == image.origin
        assert label.direction == image.direction and label.shape == image.shape
        assert dice(label.array > 0, truth) > 0.9
        assert {"crop", "shape", "fuse"} <= set(stages)
        assert report["preset"] == "fast" and report["structure_voxels"] == int(label.array.sum())
        known = annotation.known()
        assert np.array_equal(label.array[known], annotation.foreground()[known])  # painted slices kept
        # Bad options and bad annotations fail the job with the pipeline's own message.
        with pytest.raises(InputError, match="unknown preset 'turbo'"):
            client.segment(image, annotation, {"preset": "turbo"})
        with pytest.raises(InputError, match="unknown segment option 'out'"):
            client.segment(image, annotation, {"out": "/tmp/x.nrrd"})
        with pytest.raises(InputError, match="model name from GET /health, not a path"):
            client.segment(image, annotation, {"model": "../../etc/passwd"})
        empty = annotation.labels.with_array(np.where(annotation.known(), 0, 255).astype(np.uint8))
        with pytest.raises(InputError, match="marks no structure voxel"):
            client.segment(image, empty)
        with pytest.raises(InputError, match="no dataset named"):
            status = client.wait(client.submit_train({"dataset": "la2018"}), timeout=30)
            status.raise_for_state()
        assert client.jobs()[0].kind == "train"


def test_local_server_subprocess_starts_serves_and_stops():
    pytest.importorskip("torch", reason="the real segment runner needs torch (not in the Slicer-Python service check of .ci/run)")
    image, annotation, _ = ellipsoid_case((16, 16, 16))
    t0 = time.monotonic()
    server = LocalServer(device="cpu").start(timeout=60)
    try:
        assert server.url.startswith("http://127.0.0.1:") and time.monotonic() - t0 < 60
        with server.client() as client:
            info = client.health()
            assert info["device"]["type"] == "cpu"
            label, _ = client.segment(image, annotation, timeout=60)
            assert label.direction == image.direction
        with RadaClient(server.url, "wrong-token") as bad:
            with pytest.raises(Exception, match="refused the token"):
                bad.jobs()
        pid, log_dir, url = server.process.pid, server.log_path.parent, server.url
    finally:
        server.stop()
    assert not server.running and not log_dir.exists()
    with pytest.raises(ServerUnavailableError):
        RadaClient(url, TOKEN, timeout=2).health()
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_local_server_that_cannot_start_reports_its_log():
    server = LocalServer(extra_args=["--workers", "0"])
    with pytest.raises(ServerUnavailableError, match="(?s)exited with code 2.*max_workers must be at least 1"):
        server.start(timeout=60)
    assert not server.running


def test_refinement_reuses_the_model_output_of_the_same_image(tmp_path):
    """A second Segment on the same image (one more painted slice) reuses cached work."""
    pytest.importorskip("torch", reason="the real segment runner needs torch (not in the Slicer-Python service check of .ci/run)")
    import torch

    from rada.annotation import SparseAnnotation
    from rada.nets.triview import ModelConfig, TriViewModel
    from rada.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = TriViewModel(ModelConfig.make(width=4, guidance=False))
    models = tmp_path / "models"
    save_checkpoint({"views": {k: n.state_dict() for k, n in model.nets.items()},
                     "model_config": model.config.as_dict(), "preprocessing": {"patch_size": [16, 16, 16]},
                     "guidance": {"enabled": False}}, models / "tiny.pt")
    image, annotation, truth = ellipsoid_case((24, 24, 24))
    more = SparseAnnotation.from_dense(image.with_array(truth.astype(np.uint8)),
                                       {**annotation.slices(), "axial": annotation.slices()["axial"] + [8]})
    app = create_app(ServiceSettings(token=TOKEN, work_dir=tmp_path / "work", models_dir=models, device="cpu"))
    with ServerThread(app) as srv, RadaClient(srv.url, TOKEN) as client:
        assert "tiny" in client.health()["models"]["available"]
        _, first = client.segment(image, annotation, {"model": "tiny"}, timeout=60)
        label, second = client.segment(image, more, {"model": "tiny"}, timeout=60)
    assert not first["model"].get("cached") and second["model"]["cached"] is True
    assert first["model"]["content_hash"] == second["model"]["content_hash"]
    known = more.known()
    assert np.array_equal(label.array[known], more.foreground()[known])

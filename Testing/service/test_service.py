"""The job server end to end over loopback HTTP: a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from rada.errors import CancelledError, InputError  # noqa: E402
from rada.service import PROTOCOL_HEADER, PROTOCOL_VERSION  # noqa: E402
from rada.service import client as client_module  # noqa: E402
from rada.service.client import AuthError, ProtocolMismatchError, RadaClient, ServiceError  # noqa: E402
from rada.service.codec import encode_nrrd  # noqa: E402
from rada.service.manager import JobOutput  # noqa: E402
from rada.service.settings import write_private_file  # noqa: E402

from service_helpers import TOKEN, Recorder, ellipsoid_case, start_test_server  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def server(rec, tmp_path):
    with start_test_server(rec, work_dir=tmp_path / "work", max_upload_bytes=4 * 2**20) as srv:
        yield srv


@pytest.fixture
def client(server):
    with RadaClient(server.url, TOKEN, timeout=20) as c:
        yield c


def _files(image, annotation) -> dict:
    return {"image": ("image.nrrd", encode_nrrd(image), "application/octet-stream"),
            "annotation": ("annotation.nrrd", encode_nrrd(annotation.labels), "application/octet-stream")}


def test_health_reports_version_protocol_device_queue(client, server):
    info = client.health()
    assert info["protocol"] == PROTOCOL_VERSION and info["rada_version"]
    assert info["device"]["type"] in ("cpu", "cuda")
    assert info["queue"]["max_workers"] == 1 and info["queue"]["queued"] == 0
    assert info["kinds"] == ["segment"]
    assert "available" in info["models"] and "loaded" in info["models"]
    raw = httpx.get(server.url + "/health")  # no token needed for /health
    assert raw.status_code == 200 and raw.headers[PROTOCOL_HEADER] == str(PROTOCOL_VERSION)


def test_submit_progress_result_geometry_identical(client, rec):
    image, annotation, truth = ellipsoid_case()
    job = client.submit_segment(image, annotation, {"steps": 6, "delay": 0.01})
    seen: list[tuple[float, str, str]] = []
    final = client.wait(job, progress=lambda f, s, m: seen.append((f, s, m)), timeout=30)
    assert final.state == "done" and final.fraction == 1.0 and final.report["steps"] == 6
    fractions = [f for f, s, _ in seen if s == "threshold"]
    assert len(fractions) == 6 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [m for _, s, m in seen if s == "threshold"][0] == "slab 1/6"
    label, report = client.result(job)
    # Geometry identical to the input bit for bit (oblique, anisotropic, off-origin).
    assert label.spacing == image.spacing and label.origin == image.origin and label.direction == image.direction
    assert label.shape == image.shape and label.array.dtype == np.uint8
    assert (label.array.astype(bool) == truth).mean() > 0.99
    assert report == final.report
    status = client.status(job)
    assert status.state == "done" and status.error is None


def test_event_stream_is_sse_and_resumable(client, server):
    image, annotation, _ = ellipsoid_case()
    job = client.submit_segment(image, annotation, {"steps": 4, "delay": 0.01})
    events = list(client.events(job))
    assert events[-1]["event"] == "end" and events[-1]["state"] == "done"
    seqs = [e["seq"] for e in events[:-1]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert {e["state"] for e in events[:-1]} >= {"queued", "running", "done"}
    # Resuming after a sequence number gives only the later events.
    later = list(client.events(job, after=seqs[2]))
    assert [e["seq"] for e in later[:-1]] == seqs[3:]
    with httpx.stream("GET", f"{server.url}/jobs/{job}/events", headers=AUTH) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert "event: progress\n" in text and "event: end\n" in text


def test_cancel_mid_job_really_stops_the_runner(client, rec):
    image, annotation, _ = ellipsoid_case()
    job = client.submit_segment(image, annotation, {"steps": 200, "delay": 0.02})  # ~4 s uncancelled
    deadline = time.monotonic() + 10
    while client.status(job).fraction < 0.05:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    assert client.cancel(job).state in ("running", "cancelled")
    final = client.wait(job, timeout=10)
    assert final.state == "cancelled" and time.monotonic() - t0 < 1.5
    assert rec.cancelled == [job] and rec.running == 0
    assert final.fraction < 0.5
    with pytest.raises(ServiceError) as err:  # no result for a cancelled job
        client.result(job)
    assert err.value.status_code == 409
    with pytest.raises(CancelledError):
        final.raise_for_state()


def test_segment_with_cancel_event_raises_cancelled(client, rec):
    image, annotation, _ = ellipsoid_case()
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    with pytest.raises(CancelledError):
        client.segment(image, annotation, {"steps": 200, "delay": 0.02}, cancel=stop, timeout=10)
    timer.cancel()
    assert client.jobs() == []  # segment() removed the job from the server


def test_queued_job_cancels_at_once_and_jobs_run_one_at_a_time(client, rec):
    image, annotation, _ = ellipsoid_case()
    ids: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        with RadaClient(client.url, TOKEN) as c:
            job = c.submit_segment(image, annotation, {"steps": 5, "delay": 0.03})
        with lock:
            ids.append(job)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(ids) == 4
    statuses = client.jobs()  # one consistent snapshot
    assert sum(s.state == "running" for s in statuses) <= 1
    assert sorted(s.queue_position for s in statuses if s.state == "queued") == list(
        range(sum(s.state == "queued" for s in statuses)))
    finals = [client.wait(j, timeout=30) for j in ids]
    assert all(f.state == "done" for f in finals)
    assert rec.max_running == 1
    spans = sorted(rec.spans.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two runs overlap
    # A queued job is cancelled without ever running.
    blocker = client.submit_segment(image, annotation, {"steps": 100, "delay": 0.02})
    waiting = client.submit_segment(image, annotation, {"steps": 2})
    assert client.status(waiting).state == "queued"
    assert client.cancel(waiting).state == "cancelled"
    client.cancel(blocker)
    assert client.wait(blocker, timeout=10).state == "cancelled"
    assert waiting not in rec.spans


def test_queue_full_is_503(rec, tmp_path):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    with start_test_server(rec, max_queued=1, work_dir=tmp_path) as srv, RadaClient(srv.url, TOKEN) as c:
        running = c.submit_segment(image, annotation, {"steps": 100, "delay": 0.02})
        deadline = time.monotonic() + 10
        while c.status(running).state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        queued = c.submit_segment(image, annotation, {"steps": 1})
        with pytest.raises(ServiceError) as err:
            c.submit_segment(image, annotation, {"steps": 1})
        assert err.value.status_code == 503 and "waiting" in str(err.value)
        for j in (queued, running):
            c.cancel(j)
        assert c.wait(running, timeout=10).state == "cancelled"


def test_missing_or_wrong_token_is_401_everywhere(server, client):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    job = client.submit_segment(image, annotation, {"steps": 1})
    client.wait(job, timeout=10)
    endpoints = [("POST", "/jobs"), ("GET", "/jobs"), ("GET", f"/jobs/{job}"), ("GET", f"/jobs/{job}/events"),
                 ("POST", f"/jobs/{job}/cancel"), ("GET", f"/jobs/{job}/result"), ("GET", f"/jobs/{job}/report"),
                 ("DELETE", f"/jobs/{job}"), ("GET", "/openapi.json")]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer " + TOKEN[:-1]}):
        for method, path in endpoints:
            r = httpx.request(method, server.url + path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(AuthError, match="refused the token"), RadaClient(server.url, "nope") as bad:
        bad.status(job)
    assert client.status(job).state == "done"  # nothing was changed by the refused calls


def test_oversize_upload_is_413_before_reading(server):
    import socket
    from urllib.parse import urlsplit

    # Declared too large: answered from the headers alone, without a byte of the body sent.
    u = urlsplit(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {5 * 2**20}\r\n\r\n".encode())
        reply = b""
        while b"limit of 4 MiB" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"limit of 4 MiB" in reply

    def chunks():  # no Content-Length (chunked): counted while streaming
        yield (b'--b\r\nContent-Disposition: form-data; name="image"; filename="i.nrrd"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(6):
            yield b"y" * 2**20

    try:
        r = httpx.post(server.url + "/jobs", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
                       content=chunks(), timeout=10)
        assert r.status_code == 413
    except (httpx.WriteError, httpx.RemoteProtocolError):  # closed while the client still sends: also fine
        pass
    assert httpx.get(server.url + "/health").status_code == 200  # the server is fine
    assert httpx.get(server.url + "/jobs", headers=AUTH).json() == []
    with RadaClient(server.url, TOKEN) as c:  # the client checks the limit before uploading
        big = ellipsoid_case(shape=(96, 128, 128))[0]  # 4.5 MiB raw with the annotation
        big = big.with_array(np.random.default_rng(0).integers(0, 30000, big.shape).astype(np.int16))
        with pytest.raises(InputError, match="over the server's upload limit"):
            c.submit_segment(big, big.with_array(np.zeros(big.shape, np.uint8)))


def test_volume_over_decoded_limit_is_413(rec, tmp_path):
    image, annotation, _ = ellipsoid_case(shape=(32, 32, 32))
    with start_test_server(rec, max_volume_bytes=16 * 1024, work_dir=tmp_path) as srv:
        r = httpx.post(srv.url + "/jobs", headers=AUTH, files=_files(image, annotation))
    assert r.status_code == 413 and r.json()["detail"].startswith("image: volume of")


@pytest.mark.parametrize("payload, reason", [
    (b"not a nrrd at all", "does not start with 'NRRD'"),
    (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\nendian: little\n\n" + b"\0" * 10,
     "holds less than the 128 bytes"),
    (b"NRRD0004\ntype: short\ndimension: 2\nsizes: 4 4\nencoding: raw\nendian: little\n\n" + b"\0" * 32,
     "expected a 3D NRRD volume"),
    (b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: /etc/passwd\n\n",
     "detached NRRD data"),
    (b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: gzip\n\n" + b"garbage!",
     "gzip data is corrupt"),
])
def test_malformed_nrrd_is_400_with_one_line(server, payload, reason):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    files = _files(image, annotation)
    files["annotation"] = ("annotation.nrrd", payload, "application/octet-stream")
    r = httpx.post(server.url + "/jobs", headers=AUTH, files=files)
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith("annotation: ") and reason in detail and "\n" not in detail
    assert httpx.get(server.url + "/jobs", headers=AUTH).json() == []  # nothing queued, nothing left


def test_bad_form_is_400(server, client):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    files = _files(image, annotation)
    cases = [({"kind": "nope"}, files, "unknown job kind"),
             ({"options": "{not json"}, files, "not valid JSON"),
             ({"options": "[1, 2]"}, files, "JSON object"),
             ({}, {"image": files["image"]}, "needs the NRRD file field(s): annotation")]
    for data, f, reason in cases:
        r = httpx.post(server.url + "/jobs", headers=AUTH, data=data, files=f)
        assert r.status_code == 400 and reason in r.json()["detail"], (data, r.text)
    r = httpx.post(server.url + "/jobs", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=zz"},
                   content=b"--zz\r\ngarbage")
    assert r.status_code == 400
    with pytest.raises(InputError, match="unknown job kind"):
        client.submit("train", None, {})


def test_input_error_in_runner_fails_job_with_its_message(client):
    image, annotation, _ = ellipsoid_case(shape=(12, 12, 12))
    shifted = annotation.labels.__class__(annotation.array, annotation.labels.spacing,
                                          (0.0, 0.0, 0.0), annotation.labels.direction)
    job = client.submit("segment", {"image": image, "annotation": shifted}, {})
    final = client.wait(job, timeout=10)
    assert final.state == "failed" and final.error_type == "input"
    assert final.error.startswith("annotation geometry differs from the image: origin")
    with pytest.raises(InputError, match="geometry differs"):
        client.segment(image, shifted)


def test_internal_error_fails_job_and_worker_survives(client):
    image, annotation, _ = ellipsoid_case(shape=(12, 12, 12))
    job = client.submit_segment(image, annotation, {"explode": True})
    final = client.wait(job, timeout=10)
    assert final.state == "failed" and final.error_type == "internal"
    assert final.error == "RuntimeError: boom second line"
    label, _ = client.segment(image, annotation, {"steps": 1})  # the worker still runs jobs
    assert label.shape == image.shape


def test_unknown_job_404_result_before_done_409_and_delete(client, server, tmp_path):
    with pytest.raises(ServiceError) as err:
        client.status("0" * 32)
    assert err.value.status_code == 404
    r = httpx.get(server.url + "/jobs/../../etc/passwd", headers=AUTH)
    assert r.status_code == 404
    image, annotation, _ = ellipsoid_case(shape=(12, 12, 12))
    job = client.submit_segment(image, annotation, {"steps": 100, "delay": 0.02})
    with pytest.raises(ServiceError) as err:
        client.result(job)
    assert err.value.status_code == 409
    job_dir = tmp_path / "work" / job
    assert job_dir.is_dir()
    client.delete(job)  # cancels it; the job and its folder are dropped as soon as it stops
    deadline = time.monotonic() + 10
    while any(j.id == job for j in client.jobs()):  # one DELETE is enough
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(ServiceError) as err:
        client.status(job)
    assert err.value.status_code == 404
    assert not job_dir.exists()


def test_job_files_live_in_server_dir_and_are_removed(client, server, tmp_path):
    image, annotation, _ = ellipsoid_case(shape=(12, 12, 12))
    job = client.submit_segment(image, annotation, {"steps": 1})
    client.wait(job, timeout=10)
    job_dir = tmp_path / "work" / job
    assert (job_dir / "result.nrrd").exists()
    assert not (job_dir / "image.nrrd").exists()  # inputs are dropped once the job is over
    client.delete(job)
    assert not job_dir.exists()


def test_finished_jobs_expire(rec, tmp_path):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    with start_test_server(rec, result_ttl_s=0.2, work_dir=tmp_path) as srv, RadaClient(srv.url, TOKEN) as c:
        job = c.submit_segment(image, annotation, {"steps": 1})
        c.wait(job, timeout=10)
        time.sleep(0.3)
        with pytest.raises(ServiceError) as err:
            c.status(job)
        assert err.value.status_code == 404 and not (tmp_path / job).exists()


def test_version_skew_is_a_clear_client_error(server, monkeypatch):
    # A server newer than the client.
    def newer_server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"protocol": PROTOCOL_VERSION + 1, "rada_version": "9.0.0"})

    with RadaClient("http://127.0.0.1:1", TOKEN, transport=httpx.MockTransport(newer_server)) as c:
        with pytest.raises(ProtocolMismatchError, match=r"speaks protocol 2.*update the RADA extension"):
            c.health()
        with pytest.raises(ProtocolMismatchError):  # any call checks the protocol first
            c.status("0" * 32)
    # Not a RADA server at all.
    with RadaClient("http://127.0.0.1:1", TOKEN,
                    transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"hello": 1}))) as c:
        with pytest.raises(ServiceError, match="not a RADA server"):
            c.health()
    # A client newer than the real server: caught by /health, and by the server itself.
    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    with RadaClient(server.url, TOKEN) as c:
        with pytest.raises(ProtocolMismatchError, match="update rada on the server"):
            c.health()
    r = httpx.get(server.url + "/jobs", headers={**AUTH, PROTOCOL_HEADER: "99"})
    assert r.status_code == 409 and "protocol skew" in r.json()["detail"]
    with RadaClient(server.url, TOKEN, check_protocol=False) as c:
        c._http.headers[PROTOCOL_HEADER] = "99"
        with pytest.raises(ProtocolMismatchError, match="protocol skew"):
            c.jobs()


def test_unreachable_server_is_a_clear_error():
    from rada.service.app import bind_socket
    from rada.service.client import ServerUnavailableError

    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    with RadaClient(f"http://127.0.0.1:{port}", TOKEN, timeout=2) as c:
        with pytest.raises(ServerUnavailableError, match="cannot reach the RADA server"):
            c.health()


def test_runner_receives_options_and_context(tmp_path):
    seen = {}

    def runner(ctx):
        seen.update(kind=ctx.kind, options=ctx.options, inputs=sorted(ctx.inputs), workdir=ctx.workdir)
        ctx.progress(0.5, "half", "half way")
        return JobOutput(None, {"value": np.float32(1.5), "array": np.arange(3)})

    with start_test_server(runners={"custom": runner}, work_dir=tmp_path) as srv, RadaClient(srv.url, TOKEN) as c:
        job = c.submit("custom", {"extra": ellipsoid_case(shape=(4, 4, 4))[0]}, {"a": [1, 2]})
        final = c.wait(job, timeout=10)
        assert final.state == "done" and final.report == {"value": 1.5, "array": [0, 1, 2]}
        assert seen["options"] == {"a": [1, 2]} and seen["inputs"] == ["extra"]
        assert seen["workdir"].parent == tmp_path
        with pytest.raises(ServiceError) as err:
            c.result(job)
        assert err.value.status_code == 404 and "no volume result" in str(err.value)


def test_openapi_needs_token_and_documents_the_api(server):
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    spec = httpx.get(server.url + "/openapi.json", headers=AUTH).json()
    assert {"/health", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/jobs/{job_id}/cancel",
            "/jobs/{job_id}/result", "/jobs/{job_id}/report"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert json.dumps(spec).count("HTTPBearer") >= 2


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_token_file_is_owner_only_and_written_whole(tmp_path):
    path = write_private_file(tmp_path / "run" / "token", "secret\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "secret\n"
    write_private_file(path, "other\n")  # replaced in one step, still private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "other\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]  # no temporary file left
    with pytest.raises(InputError):
        write_private_file(tmp_path / "run", "x")  # a folder: refused, nothing written
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]

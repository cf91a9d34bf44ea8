"""The job server refuses bad input at submit, with the CLI's checks: invalid segment options
(422), garbage multipart bodies, NaN voxels and annotation values other than 0/1/255 (400).

The last test is a schemathesis run over ``POST /jobs`` whose ``options`` part is generated
as JSON objects: whatever the server accepts (202) must then run without an input error.
"""

from __future__ import annotations

import copy
import json
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from rada.service.app import create_app  # noqa: E402
from rada.service.codec import encode_nrrd  # noqa: E402
from rada.service.manager import JobContext, JobOutput  # noqa: E402
from rada.service.runners import SegmentRunner  # noqa: E402
from rada.service.settings import ServiceSettings  # noqa: E402

from service_helpers import TOKEN, ServerThread, ellipsoid_case  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class CheckOnlySegmentRunner(SegmentRunner):
    """The real segment runner up to the pipeline call: options checked, volumes decoded, the
    SegmentConfig built and resolved. (The pipeline itself is tested elsewhere; here only
    whether submit let through anything the runner then refuses.)"""

    def __call__(self, ctx: JobContext) -> JobOutput:
        image, annotation, config = self.prepare(ctx)
        annotation.validate(image)
        return JobOutput(None, {"preset": config.preset, "propagate": config.propagate})


def _app():
    return create_app(ServiceSettings(token=TOKEN, max_upload_bytes=2**20, max_queued=64, result_ttl_s=30),
                      {"segment": CheckOnlySegmentRunner()})


@pytest.fixture(scope="module")
def server():
    with ServerThread(_app()) as srv:
        yield srv


def _files(image, labels) -> dict:
    return {"image": ("image.nrrd", encode_nrrd(image), "application/octet-stream"),
            "annotation": ("annotation.nrrd", encode_nrrd(labels), "application/octet-stream")}


def _jobs(server) -> list:
    return httpx.get(server.url + "/jobs", headers=AUTH).json()


@pytest.mark.parametrize("options, reason", [
    ({"preset": "bogus"}, "unknown preset 'bogus'; use one of fast, full"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"margin": -3}, "margin must be 0..256"),
    ({"model_weight": 1e9}, "model_weight must be a number in 0..100"),
    ({"model": "../etc/passwd"}, "not a path"),
    ({"presets": "fast"}, "unknown segment option 'presets'"),
    ({"margin": "12"}, "option 'margin' has the wrong type"),
])
def test_invalid_segment_options_are_422_at_submit(server, options, reason):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    before = len(_jobs(server))
    r = httpx.post(server.url + "/jobs", headers=AUTH, data={"options": json.dumps(options)},
                   files=_files(image, annotation.labels))
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert len(_jobs(server)) == before  # nothing queued


def test_valid_options_are_accepted_and_run(server):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    r = httpx.post(server.url + "/jobs", headers=AUTH,
                   data={"options": json.dumps({"preset": "full", "device": "cpu", "margin": 4})},
                   files=_files(image, annotation.labels))
    assert r.status_code == 202, r.text
    assert _wait(server, r.json()["id"])["state"] == "done"


def _wait(server, job_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH).json()
        if status["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


@pytest.mark.parametrize("headers, body", [
    ({"Content-Type": "multipart/form-data"}, b"garbage"),                      # no boundary
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nContent-Disposition: form-data\r\n\r\n"),
])
def test_garbage_multipart_says_what_to_send(server, headers, body):
    r = httpx.post(server.url + "/jobs", headers={**AUTH, **headers}, content=body)
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "HTTPException" not in detail and "\n" not in detail
    assert "multipart" in detail or "needs the NRRD file field" in detail


def test_nan_image_and_wrong_annotation_values_are_400_at_submit(server):
    image, annotation, _ = ellipsoid_case(shape=(8, 8, 8))
    values = image.array.astype(np.float32)
    values[2, 3, 4] = np.nan
    r = httpx.post(server.url + "/jobs", headers=AUTH, files=_files(image.with_array(values), annotation.labels))
    assert r.status_code == 400 and r.json()["detail"].startswith("image: 1 of 512 voxels are NaN"), r.text
    labels = annotation.array.astype(np.int16)
    labels[labels == 255] = 511
    r = httpx.post(server.url + "/jobs", headers=AUTH, files=_files(image, annotation.labels.with_array(labels)))
    assert r.status_code == 400 and r.json()["detail"].startswith("annotation has values 511"), r.text


# --- schemathesis: generated option objects -----------------------------------------------------

SEGMENT_OPTION_SCHEMA = {
    "type": "object",
    "properties": {
        "preset": {"type": "string", "enum": ["fast", "full", "bogus", ""]},
        "device": {"type": "string"},
        "margin": {"type": "integer"},
        "propagate": {"type": ["boolean", "null"]},
        "model_weight": {"type": "number"},
        "model": {"type": ["string", "null"]},
    },
}


def _options_schema(app) -> dict:
    """The app's schema, with the ``options`` part described as the JSON object it holds."""
    spec = copy.deepcopy(app.openapi())
    media = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    media["schema"]["properties"]["options"] = SEGMENT_OPTION_SCHEMA
    media["schema"]["properties"]["kind"] = {"type": "string", "enum": ["segment"]}
    media["encoding"] = {"options": {"contentType": "application/json"}}
    return spec


APP = _app()
SCHEMA = schemathesis.openapi.from_dict(_options_schema(APP)).include(path="/jobs", method="POST")
IMAGE, ANNOTATION, _ = ellipsoid_case(shape=(8, 8, 8))
STATS = {"examples": 0, "accepted": 0, "refused_422": 0, "other_4xx": 0}


@pytest.fixture(scope="module")
def fuzz_server():
    with ServerThread(APP) as srv:
        yield srv
    print(f"\nschemathesis POST /jobs options: {STATS}")


@SCHEMA.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_options_accepted_at_submit_never_fail_later(case, fuzz_server):
    if isinstance(case.body, dict):  # real volumes, so that only the options decide
        case.body["image"] = encode_nrrd(IMAGE)
        case.body["annotation"] = encode_nrrd(ANNOTATION.labels)
    response = case.call(base_url=fuzz_server.url, headers=AUTH, timeout=20)
    STATS["examples"] += 1
    assert response.status_code < 500, response.text[:300]
    if response.status_code == 202:
        STATS["accepted"] += 1
        final = _wait(fuzz_server, response.json()["id"])
        assert final["state"] == "done", (case.body.get("options"), final)
    elif response.status_code == 422:
        STATS["refused_422"] += 1
        detail = response.json()["detail"]
        assert detail and "\n" not in detail
    else:
        STATS["other_4xx"] += 1
        assert response.json()["detail"]


@pytest.mark.parametrize("options, message", [
    ({"iterations": 0}, "iterations must be at least 1"),
    ({"validate_every": 0}, "validate_every must be at least 1"),
    ({"guidance": "always"}, "'guidance' must be auto or off"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"iteration": 3}, "unknown train option 'iteration'"),
    ({"iterations": "10"}, "'iterations' has the wrong type"),
])
def test_train_options_are_refused_at_submit(options, message):
    from rada.errors import InputError
    from rada.service.runners import check_train_options

    with pytest.raises(InputError, match=message):
        check_train_options({"dataset": "la", **options}, None)
    assert check_train_options({"dataset": "la", "iterations": 10, "validate_every": 5, "guidance": "off"},
                               None)["guidance"] == "off"

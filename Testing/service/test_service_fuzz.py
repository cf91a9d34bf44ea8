"""Property-based fuzzing of the job server's OpenAPI (schemathesis): no input gives a 5xx.

Every operation gets a bounded number of generated requests (valid and invalid bodies,
parameters, multipart uploads) sent over loopback to a real server, with the token.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("multipart")

from hypothesis import HealthCheck, settings  # noqa: E402

from rada.service.app import create_app  # noqa: E402
from rada.service.settings import ServiceSettings  # noqa: E402

from service_helpers import TOKEN, Recorder, ServerThread, make_threshold_runner  # noqa: E402

RUNNERS = {"segment": make_threshold_runner(Recorder())}
APP = create_app(ServiceSettings(token=TOKEN, max_upload_bytes=2**20, max_queued=4, result_ttl_s=5),
                 RUNNERS)
schema = schemathesis.openapi.from_dict(APP.openapi())


@pytest.fixture(scope="module")
def base_url():
    with ServerThread(APP) as srv:
        yield srv.url


@schema.parametrize()
@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, base_url):
    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert detail, "errors carry a reason"
    if case.path == "/jobs" and case.method == "POST" and response.status_code == 202:
        pytest.fail("random bytes were accepted as volumes")

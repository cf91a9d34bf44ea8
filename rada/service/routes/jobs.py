"""The job endpoints: submit, list, status, progress events, cancel, delete."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from fastapi import APIRouter, HTTPException, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rada.annotation import check_annotation_values
from rada.errors import InputError
from rada.inputs import check_finite
from rada.service.codec import CodecError, VolumeTooLargeError, decode_nrrd
from rada.service.manager import FINISHED, Job, JobManager
from rada.service.middleware import PayloadTooLarge

FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_FILES = 8
FORM_HINT = ("send multipart/form-data with the fields kind and options (JSON text) and the NRRD "
             "files image and annotation")
MAX_OPTIONS_BYTES = 64 * 1024
SSE_POLL_S = 0.1
SSE_KEEPALIVE_S = 15.0


def find_job(manager: JobManager, job_id: str) -> Job:
    """The job ``job_id``, or 404 (also for ids that cannot be job ids).

    Args:
        manager: the server's job manager.
        job_id: the id from the URL.

    Returns:
        The job.

    Raises:
        HTTPException: 404, saying that finished jobs expire.
    """
    job = manager.get(job_id) if JOB_ID_RE.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job {job_id[:40]!r} on this server (finished jobs expire after "
                                 f"{manager.settings.result_ttl_s:.0f} s)")
    return job


def _upload_schema(kinds: list[str]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": kinds, "default": "segment"},
            "options": {"type": "string", "description": "JSON object with the job's options"},
            "image": {"type": "string", "format": "binary", "description": "image volume, NRRD"},
            "annotation": {"type": "string", "format": "binary",
                           "description": "sparse annotation (0/1/255) on the image grid, NRRD"},
        },
    }}}}}


def _store_uploads(uploads: Mapping[str, Any], workdir: Path, max_volume_bytes: int) -> dict[str, Path]:
    """Check every upload decodes as a volume (else InputError/400) and keep it in the job folder."""
    inputs: dict[str, Path] = {}
    for name, upload in uploads.items():
        upload.file.seek(0)
        data = upload.file.read()
        try:
            volume = decode_nrrd(data, max_volume_bytes)
            # The same value checks as the CLI: finite voxels, annotation values 0/1/255 only.
            check_finite(volume, name)
            if name == "annotation":
                check_annotation_values(volume, name)
        except VolumeTooLargeError as exc:
            raise VolumeTooLargeError(f"{name}: {exc}") from None
        except CodecError as exc:
            raise CodecError(f"{name}: {exc}") from None
        except InputError as exc:
            raise InputError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
        path = workdir / f"{name}.nrrd"
        path.write_bytes(data)
        inputs[name] = path
    return inputs


def jobs_router(manager: JobManager, auth: list[Depends]) -> APIRouter:
    """The job endpoints (all behind the token).

    Args:
        manager: the server's job manager (its settings and runners).
        auth: the token dependency.

    Returns:
        The router.
    """
    settings, runners = manager.settings, manager.runners
    router = APIRouter(dependencies=auth)

    @router.post("/jobs", status_code=202, openapi_extra=_upload_schema(sorted(runners)))
    async def submit(request: Request) -> JSONResponse:
        """Queue a job: multipart form with ``kind``, ``options`` and NRRD files."""
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES, max_part_size=MAX_OPTIONS_BYTES)
        except PayloadTooLarge:
            raise
        except StarletteHTTPException as exc:  # starlette's own (FastAPI's is a subclass)
            raise HTTPException(400, f"bad multipart form: {str(exc.detail).rstrip('.')}; {FORM_HINT}") from None
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several types
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise HTTPException(400, f"bad multipart form ({reason}); {FORM_HINT}") from None
        try:
            return await _submit(form)
        finally:
            await form.close()

    async def _submit(form: Any) -> JSONResponse:
        kind = form.get("kind", "segment")
        if not isinstance(kind, str) or kind not in runners:
            raise HTTPException(400, f"unknown job kind {str(kind)[:40]!r}; this server runs: "
                                     f"{', '.join(sorted(runners))}")
        options_text = form.get("options", "{}") or "{}"
        if not isinstance(options_text, str):
            raise HTTPException(400, "options must be a form field with JSON text, not a file")
        try:
            options = json.loads(options_text)
        except ValueError as exc:
            raise HTTPException(400, f"options are not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise HTTPException(400, "options must be a JSON object")
        check = getattr(runners[kind], "check_options", None)
        if check is not None:  # refuse bad options now (422), not after the job has queued
            try:
                check(options, settings)  # the runner checks (and resolves) them again when it runs
            except InputError as exc:
                raise HTTPException(422, " ".join(str(exc).split())) from None
        uploads: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name in ("kind", "options"):
                continue
            if isinstance(value, str):
                raise HTTPException(400, f"unknown form field {name[:40]!r} (volumes must be file uploads)")
            if not FIELD_RE.match(name) or name in uploads:
                raise HTTPException(400, f"bad or repeated file field {name[:40]!r}")
            uploads[name] = value
        missing = [n for n in getattr(runners[kind], "required_inputs", ()) if n not in uploads]
        if missing:
            raise HTTPException(400, f"a {kind} job needs the NRRD file field(s): {', '.join(missing)}")
        job_id, workdir = manager.new_job_dir()
        try:
            inputs = await run_in_threadpool(_store_uploads, uploads, workdir, settings.max_volume_bytes)
            job = manager.submit(job_id, workdir, kind, options, inputs)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return JSONResponse(manager.status(job), status_code=202,
                            headers={"Location": f"/jobs/{job.id}"})

    @router.get("/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        """Every job kept on the server, newest first (no reports)."""
        with manager.lock:
            jobs = sorted(manager.jobs.values(), key=lambda j: j.created, reverse=True)
            return [{k: v for k, v in manager.status(j).items() if k != "report"} for j in jobs]

    @router.get("/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        """State (queued/running/done/failed/cancelled), stage, fraction, message, error."""
        return manager.status(find_job(manager, job_id))

    @router.get("/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request, after: int = 0) -> StreamingResponse:
        """Server-Sent Events: ``progress`` per change, then ``end`` with the final status."""
        job = find_job(manager, job_id)
        last_id = request.headers.get("last-event-id", "")
        start = max(after, int(last_id) if last_id.isdigit() else 0)
        return StreamingResponse(_sse(job, start), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse(job: Job, last: int) -> AsyncIterator[str]:
        quiet_since = time.monotonic()
        yield "retry: 1000\n\n"
        while True:
            events, finished = manager.events_after(job, last)
            for event in events:
                last = event["seq"]
                yield f"id: {last}\nevent: progress\ndata: {json.dumps(event)}\n\n"
            if finished:
                yield f"id: {last}\nevent: end\ndata: {json.dumps(manager.status(job))}\n\n"
                return
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(SSE_POLL_S)

    @router.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel: a queued job at once, a running one at its next check (state -> cancelled)."""
        job = find_job(manager, job_id)
        manager.cancel(job)
        return manager.status(job)

    @router.delete("/jobs/{job_id}")
    def delete(job_id: str) -> dict[str, Any]:
        """Cancel the job if needed; drop it and its files now, or as soon as it has stopped."""
        job = find_job(manager, job_id)
        manager.delete(job)
        return {"id": job.id, "deleted": job.state in FINISHED, "state": job.state}

    return router

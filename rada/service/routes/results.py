"""A finished job's outputs: ``GET /jobs/{id}/result`` (NRRD) and ``GET /jobs/{id}/report`` (JSON)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.params import Depends
from fastapi.responses import Response

from rada.service.manager import DONE, Job, JobManager
from rada.service.routes.jobs import find_job


def _require_done(job: Job) -> None:
    if job.state != DONE:
        detail = f"job {job.id} is {job.state}"
        if job.error:
            detail += f": {job.error}"
        raise HTTPException(409, detail)


def results_router(manager: JobManager, auth: list[Depends]) -> APIRouter:
    """The result endpoints (behind the token); 409 unless the job is done.

    Args:
        manager: the server's job manager.
        auth: the token dependency.

    Returns:
        The router.
    """
    router = APIRouter(dependencies=auth)

    @router.get("/jobs/{job_id}/result",
                responses={200: {"content": {"application/octet-stream": {}}, "description": "label volume, NRRD"}})
    def result(job_id: str) -> Response:
        """The label volume (NRRD bytes, same geometry as the image); the report is in /report."""
        job = find_job(manager, job_id)
        _require_done(job)
        if job.result_path is None:
            raise HTTPException(404, f"a {job.kind} job has no volume result; see /jobs/{job.id}/report")
        try:
            data = job.result_path.read_bytes()
        except FileNotFoundError:
            raise HTTPException(404, f"job {job.id} expired") from None
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{job.id}-label.nrrd"'})

    @router.get("/jobs/{job_id}/report")
    def report(job_id: str) -> dict[str, Any]:
        """The job's JSON report."""
        job = find_job(manager, job_id)
        _require_done(job)
        return job.report or {}

    return router

"""``GET /health`` (version, protocol, device, models, queue) and ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse

from rada import __version__
from rada.service import PROTOCOL_VERSION
from rada.service.manager import JobManager
from rada.service.runners import list_models

_DEVICE_CACHE: dict[str, Any] = {}


def device_info(device: str) -> dict[str, Any]:
    """What ``/health`` says about the jobs' device: type, name, count and GPU memory.

    It reports what torch sees (cached; torch is imported once, only if the device may be
    CUDA); the jobs themselves select their device when they run.

    Args:
        device: the server's device setting (auto, cpu, cuda).

    Returns:
        ``{"type", "name"[, "count", "memory_total_mb", "memory_free_mb", "note"]}``.
    """
    if device == "cpu":
        return {"type": "cpu", "name": "cpu"}
    if "static" not in _DEVICE_CACHE:
        try:
            import torch  # lazy: /health of a CPU server, and the server's start, need no torch

            if torch.cuda.is_available():
                _DEVICE_CACHE["static"] = {"type": "cuda", "name": torch.cuda.get_device_name(0),
                                           "count": torch.cuda.device_count()}
            else:
                _DEVICE_CACHE["static"] = {"type": "cpu", "name": "cpu",
                                           "note": "no CUDA device visible to torch" if device == "cuda" else None}
        except Exception as exc:  # noqa: BLE001 - a broken torch must not break /health
            _DEVICE_CACHE["static"] = {"type": "cpu", "name": "cpu", "note": f"torch unavailable: {exc}"}
    info = dict(_DEVICE_CACHE["static"])
    if info["type"] == "cuda":
        try:
            import torch  # lazy: see above

            free, total = torch.cuda.mem_get_info(0)
            info["memory_total_mb"] = round(total / 2**20)
            info["memory_free_mb"] = round(free / 2**20)
        except Exception:  # noqa: BLE001
            pass
    return {k: v for k, v in info.items() if v is not None}


def health_router(manager: JobManager, auth: list[Depends]) -> APIRouter:
    """The health and schema endpoints.

    Args:
        manager: the server's job manager (its settings, runners and queue).
        auth: the token dependency; ``/health`` uses it only with ``health_requires_token``.

    Returns:
        The router.
    """
    settings = manager.settings
    router = APIRouter()

    @router.get("/health", dependencies=auth if settings.health_requires_token else [])
    def health() -> dict[str, Any]:
        """Version, protocol, device, models and queue of this server."""
        return {"status": "ok", "rada_version": __version__, "protocol": PROTOCOL_VERSION,
                "device": device_info(settings.device),
                # Models are loaded per job (a segment job reads its checkpoint once): none stays resident.
                "models": {"available": list_models(settings), "loaded": []},
                "kinds": sorted(manager.runners), "queue": manager.counts(),
                "limits": {"max_upload_bytes": settings.max_upload_bytes,
                           "max_volume_bytes": settings.max_volume_bytes},
                "token_required": True}

    @router.get("/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    return router

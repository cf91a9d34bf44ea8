"""The RADA job server and its client.

* :mod:`rada.service.app` - ``create_app(settings, runners)``: the FastAPI app (``rada serve``),
  its endpoints in :mod:`rada.service.routes` (health, jobs, results), its middleware
  (:mod:`~rada.service.middleware`) and token check (:mod:`~rada.service.auth`).
* :mod:`rada.service.manager` - jobs, the bounded queue, worker threads, cancel, expiry.
* :mod:`rada.service.runners` - what segment and train jobs do: option checks, model names.
* :mod:`rada.service.codec` - NRRD bytes <-> :class:`~rada.volume.Volume` with full geometry.
* :mod:`rada.service.client` - :class:`RadaClient` (httpx) and :class:`LocalServer`, used by
  the Slicer modules; they need only httpx, not FastAPI.

``PROTOCOL_VERSION`` changes whenever a request or a response changes incompatibly. The
client refuses a server that speaks another one, with a message saying which side to update.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-RADA-Protocol"

from rada.service.settings import ServiceSettings  # noqa: E402  (light: no FastAPI, no httpx)

__all__ = ["PROTOCOL_VERSION", "PROTOCOL_HEADER", "RadaClient", "LocalServer", "create_app", "ServiceSettings"]


def __getattr__(name: str):  # lazy: importing rada.service must not import FastAPI or httpx
    if name in ("RadaClient", "LocalServer"):
        from rada.service import client

        return getattr(client, name)
    if name == "create_app":
        from rada.service.app import create_app

        return create_app
    raise AttributeError(name)

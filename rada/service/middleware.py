"""ASGI middleware of the job server: the request size limit and the protocol header."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

from rada.service import PROTOCOL_HEADER, PROTOCOL_VERSION


class PayloadTooLarge(HTTPException):
    """413: the request body is over the server's limit."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the server limit of {limit / 2**20:.0f} MiB")


class BodyLimitMiddleware:
    """Reject bodies over ``limit`` bytes with 413: by Content-Length before reading anything,
    and while streaming for chunked uploads (counting bytes as they arrive)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                return await send_json(send, 413, PayloadTooLarge(self.limit).detail, close=True)
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as exc:
            if not started:
                await send_json(send, 413, exc.detail, close=True)


class ProtocolHeaderMiddleware:
    """Add ``X-RADA-Protocol`` to every response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (PROTOCOL_HEADER.lower().encode(), str(PROTOCOL_VERSION).encode())]
            await send(message)

        await self.app(scope, receive, send_with_header)


async def send_json(send: Any, status: int, detail: str, close: bool = False) -> None:
    """Send a whole ``{"detail": ...}`` response from middleware (below FastAPI's handlers).

    Args:
        send: the ASGI send callable.
        status: the HTTP status.
        detail: the one-line reason.
        close: ask the client to close the connection (the rest of the body is not read).
    """
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

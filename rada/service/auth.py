"""The bearer-token check of the job server (every endpoint but ``/health`` by default)."""

from __future__ import annotations

import hmac
from typing import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rada import __version__
from rada.service import PROTOCOL_HEADER, PROTOCOL_VERSION
from rada.service.settings import ServiceSettings


def token_dependency(settings: ServiceSettings) -> Callable[..., None]:
    """The FastAPI dependency that admits a request with the server's token and protocol.

    Args:
        settings: the server's settings, with its token set.

    Returns:
        ``authorize(request, credentials)``: raises 401 for a missing or wrong token
        (compared in constant time) and 409 for a client speaking another protocol.
    """
    bearer = HTTPBearer(auto_error=False, description="the server's token (RADA_TOKEN or the token file)")

    def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), settings.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token" if token else "missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        client_protocol = request.headers.get(PROTOCOL_HEADER)
        if client_protocol is not None and client_protocol.strip() != str(PROTOCOL_VERSION):
            raise HTTPException(409, f"protocol skew: the client speaks RADA protocol {client_protocol.strip()[:10]}, "
                                     f"this server (rada {__version__}) speaks {PROTOCOL_VERSION}")

    return authorize

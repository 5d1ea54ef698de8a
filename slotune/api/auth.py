"""Bearer-token auth. Writes always need `api_token`; reads need it when `protect_reads` is set.
With no token configured, writes are refused (401) rather than open."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="the sidecar's api_token (SLOTUNE_API_TOKEN)")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _check(request: Request, creds: HTTPAuthorizationCredentials | None) -> None:
    token = request.app.state.service.settings.api_token
    if token is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "writes are disabled: no api_token is configured",
                            headers={"WWW-Authenticate": "Bearer"})
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(creds.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def require_write(request: Request, creds: Creds) -> None:
    _check(request, creds)


def require_read(request: Request, creds: Creds) -> None:
    if request.app.state.service.settings.protect_reads:
        _check(request, creds)

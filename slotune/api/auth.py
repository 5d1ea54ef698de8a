"""Bearer-token auth. Writes always need `api_token`; reads need it when `protect_reads` is set.
With no token configured, writes are refused (401) rather than open.

Writes are checked twice on purpose: by a middleware before anything reads the body (so a write
without the token is a 401 whatever its body), and by the routers' dependency (which also puts the
bearer scheme in the OpenAPI spec)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from slotune.settings import Settings

bearer = HTTPBearer(auto_error=False, description="the sidecar's api_token (SLOTUNE_API_TOKEN)")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
OPEN_WRITES = ("/api/v1/alerts/alertmanager",)  # Alertmanager posts without credentials


def _deny(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})


def check(settings: Settings, authorization: str | None) -> None:
    """Raise 401 unless `authorization` is `Bearer <api_token>`."""
    token = settings.api_token
    if token is None:
        raise _deny("writes are disabled: no api_token is configured")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _deny("missing bearer token")
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise _deny("invalid bearer token")


def is_write(method: str, path: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS") and path.startswith("/api/") and path not in OPEN_WRITES


def _header(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return None if creds is None else f"{creds.scheme} {creds.credentials}"


def require_write(request: Request, creds: Creds) -> None:
    check(request.app.state.service.settings, _header(creds))


def require_read(request: Request, creds: Creds) -> None:
    if request.app.state.service.settings.protect_reads:
        check(request.app.state.service.settings, _header(creds))

"""Bearer-token auth. Writes always need `api_token`; reads need it when `protect_reads` is set.
With no token configured, writes are refused (401) rather than open.

The Alertmanager webhook (`ALERT_PATHS`) needs credentials too, since whatever it accepts goes out
signed to every receiver: `alert_token` (what Alertmanager's `http_config` sends, as
`Authorization: Bearer <token>` or basic auth with the token as password), or the `api_token`.

Writes are checked twice on purpose: by a middleware before anything reads the body (so a write
without the token is a 401 whatever its body), and by the routers' dependency (which also puts the
security schemes in the OpenAPI spec)."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from pydantic import SecretStr

from slotune.settings import Settings

bearer = HTTPBearer(auto_error=False, description="the sidecar's api_token (SLOTUNE_API_TOKEN)")
alert_bearer = HTTPBearer(auto_error=False, scheme_name="AlertBearer",
                          description="alert_token (SLOTUNE_ALERT_TOKEN) or api_token")
alert_basic = HTTPBasic(auto_error=False, scheme_name="AlertBasic",
                        description="any user name, alert_token (or api_token) as the password")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ALERT_PATHS = ("/api/v1/alerts/alertmanager",)


def _deny(reason: str, scheme: str = "Bearer") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": scheme})


def _matches(given: str, token: SecretStr | None) -> bool:
    return token is not None and hmac.compare_digest(given.encode(), token.get_secret_value().encode())


def check(settings: Settings, authorization: str | None) -> None:
    """Raise 401 unless `authorization` is `Bearer <api_token>`."""
    token = settings.api_token
    if token is None:
        raise _deny("writes are disabled: no api_token is configured")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _deny("missing bearer token")
    if not _matches(given.strip(), token):
        raise _deny("invalid bearer token")


def check_alert(settings: Settings, authorization: str | None) -> None:
    """Raise 401 unless `authorization` carries `alert_token` or `api_token`, as a bearer token or
    as a basic-auth password (the two forms Alertmanager's webhook `http_config` can send)."""
    if settings.alert_token is None and settings.api_token is None:
        raise _deny("alert intake is disabled: no alert_token (SLOTUNE_ALERT_TOKEN) is configured")
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if scheme.lower() == "basic" and given:
        try:
            _user, sep, given = base64.b64decode(given, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _deny("malformed basic credentials", "Basic") from None
        if not sep:
            raise _deny("malformed basic credentials", "Basic")
    elif scheme.lower() != "bearer" or not given:
        raise _deny("missing credentials: send alert_token as a bearer token or a basic-auth password")
    if not (_matches(given, settings.alert_token) or _matches(given, settings.api_token)):
        raise _deny("invalid alert credentials")


def is_write(method: str, path: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS") and path.startswith("/api/") and path not in ALERT_PATHS


def is_alert(method: str, path: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS") and path in ALERT_PATHS


def _header(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return None if creds is None else f"{creds.scheme} {creds.credentials}"


def require_write(request: Request, creds: Creds) -> None:
    check(request.app.state.service.settings, _header(creds))


def require_read(request: Request, creds: Creds) -> None:
    if request.app.state.service.settings.protect_reads:
        check(request.app.state.service.settings, _header(creds))


def require_alert(request: Request,
                  _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(alert_bearer)],
                  _basic: Annotated[HTTPBasicCredentials | None, Depends(alert_basic)]) -> None:
    check_alert(request.app.state.service.settings, request.headers.get("authorization"))

"""The FastAPI app around a `SidecarService`: health, `/metrics`, the v1 API (OpenAPI at `/docs`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import Message, Receive, Scope, Send

from slotune import __version__
from slotune.api import auth, routes
from slotune.api.service import SidecarService
from slotune.errors import RefusedValueError, SlotuneError, validation_message


def create_app(service: SidecarService) -> FastAPI:
    app = FastAPI(title="slotune sidecar", version=__version__,
                  description="SLO monitoring, diagnosis and tuning beside a vLLM server.")
    app.state.service = service

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The loop runs and the store answers")
    def readyz() -> JSONResponse:
        ok, why = service.ready()
        return JSONResponse({"status": "ready" if ok else "not ready", "reason": why},
                            status_code=200 if ok else status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.get("/metrics", tags=["health"], summary="slotune's own Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        body, ctype = service.metrics_text()
        return Response(body, media_type=ctype)

    @app.middleware("http")
    async def _writes_need_the_token(request: Request, call_next: Any) -> Response:
        path = request.url.path
        checker = auth.check if auth.is_write(request.method, path) else \
            auth.check_alert if auth.is_alert(request.method, path) else None
        if checker is not None:
            try:
                checker(service.settings, request.headers.get("authorization"))
            except HTTPException as exc:
                return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return await call_next(request)  # type: ignore[no-any-return]

    app.include_router(routes.reads)
    app.include_router(routes.writes)
    app.include_router(routes.alerts)
    app.openapi = lambda: _openapi(app, protect_reads=service.settings.protect_reads)  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # 422 with a short reason first, then pydantic's details (inputs dropped: they may be huge).
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()[:20]]
        reason = validation_message(exc.errors())
        return JSONResponse({"detail": reason, "errors": json.loads(json.dumps(errors, default=str))},
                            status_code=422)

    @app.exception_handler(RefusedValueError)
    async def _refused(request: Request, exc: RefusedValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(SlotuneError)
    async def _slotune(request: Request, exc: SlotuneError) -> JSONResponse:
        # A store outage and the like: the request could not be served now, say why.
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    return BodyLimit(app, service.settings.max_alert_bytes)  # type: ignore[return-value]


ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _openapi(app: FastAPI, *, protect_reads: bool) -> dict[str, Any]:
    """FastAPI's document, corrected to what this app does: every error body is `Error` (a one-line
    `detail`, and for 422 pydantic's `errors`), reads need the token only with `protect_reads`, and
    the 401/404/413/503 answers are listed where they happen."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = FastAPI.openapi(app)
    comps = spec.setdefault("components", {}).setdefault("schemas", {})
    comps["Error"] = ErrorBody.model_json_schema()
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)

    def answer(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": ERROR_REF}}}

    for path, ops in spec["paths"].items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = answer("the request does not validate: `detail` says where and why in "
                                          "one line, `errors` lists pydantic's findings (loc, msg, type)")
            tags = op.get("tags", [])
            if "read" in tags:
                op["security"] = [{"HTTPBearer": []}] if protect_reads else [{}]
            if op.get("security") and op["security"] != [{}]:
                responses["401"] = answer("no bearer token, or not the sidecar's api_token")
            if "_id}" in path:
                responses["404"] = answer("no row with that id")
            if path.startswith("/api/"):
                responses["503"] = answer("the database could not be reached or written now")
            if "write" in tags or "alerts" in tags:
                responses["413"] = answer("the body is over the size limit (max_alert_bytes)")
    return spec


class ErrorBody(BaseModel):
    """Every error answer's body."""

    detail: str = Field(description="what was wrong, in one line")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="422 only: pydantic's findings, each {loc, msg, type}; inputs are left out")


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether sized (Content-Length) or chunked."""

    def __init__(self, app: FastAPI, limit: int) -> None:
        self.app, self.limit = app, limit

    def __getattr__(self, name: str) -> Any:  # look like the FastAPI app (tests read .openapi(), .state)
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                await _reply(send, 400, "bad Content-Length header")
                return
            if size > self.limit:
                await _reply(send, 413, f"body of {size} bytes is over the limit of {self.limit} bytes")
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _reply(send, 413, f"body is over the limit of {self.limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reply(send: Send, code: int, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


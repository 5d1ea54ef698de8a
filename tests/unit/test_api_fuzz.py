"""Fuzz every endpoint from the app's own OpenAPI spec (schemathesis): no input may cause a 5xx.

Requests carry the write token, so write endpoints are exercised past auth, except starting a study
(a valid request would launch real vLLM trials); that one is fuzzed without the token. Bounded:
a fixed number of examples per operation, no shrinking to chase."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from slotune.api.app import create_app
from tests.unit.sidecar_helpers import AFTER, UNDER, page
from tests.unit.test_sidecar_loop import make, ticks

TOKEN = "fuzz-token"


def _app(tmp: Path) -> Any:
    sc, clock, _ = make(tmp, [page(UNDER), page(AFTER)], slo="e2e_p95<=1s", api_token=TOKEN,
                        receivers=[{"name": "r", "url": "http://127.0.0.1:9/x"}], webhook_secret="unit-test-hmac-key")
    ticks(sc, clock, 3)
    return create_app(sc)


APP = _app(Path(tempfile.mkdtemp(prefix="slotune-fuzz-")))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
CLIENT = TestClient(APP, raise_server_exceptions=False)


def call(case: schemathesis.Case, headers: dict[str, str] | None = None) -> httpx.Response:
    """Send the case through httpx (schemathesis' own requests-based ASGI client breaks on the
    urllib3-future this venv carries), then let schemathesis judge the response."""
    kw = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    kw.pop("base_url", None)
    url = kw.pop("url")
    method = kw.pop("method")
    body = kw.pop("json", None)
    data = kw.pop("data", None) or kw.pop("content", None)
    return CLIENT.request(method, url, params=kw.get("params"), headers=kw.get("headers"), cookies=kw.get("cookies"),
                          json=body, content=data if isinstance(data, (bytes, str)) else None,
                          data=data if isinstance(data, dict) else None)
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@schema.exclude(path="/api/v1/studies", method="POST").parametrize()
@FUZZ
def test_no_server_errors_with_token(case: schemathesis.Case) -> None:
    response = call(case, {"Authorization": f"Bearer {TOKEN}"})
    case.validate_response(response, checks=[not_a_server_error])


@schema.include(method="POST").parametrize()
@FUZZ
def test_no_server_errors_and_401_without_token(case: schemathesis.Case) -> None:
    response = call(case)
    case.validate_response(response, checks=[not_a_server_error])
    if case.method.upper() == "POST":
        # Auth comes before the body is read: whatever the body, no token is a 401 (alert intake included).
        assert response.status_code == 401, (case.path, response.status_code, response.text)


def test_spec_lists_every_endpoint() -> None:
    paths = set(schema.raw_schema["paths"])
    for p in ("/healthz", "/readyz", "/metrics", "/api/v1/snapshots", "/api/v1/findings", "/api/v1/studies",
              "/api/v1/trials", "/api/v1/recommendations", "/api/v1/changes", "/api/v1/alerts/alertmanager",
              "/api/v1/findings/{finding_id}/acknowledge", "/api/v1/recommendations/{recommendation_id}/approve"):
        assert p in paths, p


pytestmark = pytest.mark.filterwarnings("ignore")


# -- the edges generation does not reach: ids at the integer limits, NUL bytes -------------------------

EDGE_IDS = (0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30)


def id_routes(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path) of every operation with an `{..._id}` path parameter."""
    return [(m.upper(), p) for p, ops in spec["paths"].items() if "_id}" in p for m in ops]


def filter_routes(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, query parameter) of every GET with a string query parameter."""
    out = []
    for p, ops in spec["paths"].items():
        for param in ops.get("get", {}).get("parameters", []):
            types = [s.get("type") for s in param.get("schema", {}).get("anyOf", [param.get("schema", {})])]
            if param["in"] == "query" and "string" in types:
                out.append((p, param["name"]))
    return out


def check_edges(client: TestClient, spec: dict[str, Any], headers: dict[str, str]) -> None:
    """Every id route answers 4xx (or 2xx for a real id) for ids at the integer limits, every string
    filter answers 4xx for a NUL byte; nothing is a 5xx and no body echoes SQL."""
    routes = id_routes(spec)
    assert len(routes) >= 5, routes
    for method, path in routes:
        for row_id in EDGE_IDS:
            url = path.split("{")[0] + str(row_id) + path.split("}")[1]
            body = {"seconds": 60} if path.endswith("/silence") else None
            r = client.request(method, url, headers=headers, json=body)
            assert r.status_code < 500, (method, url, r.status_code, r.text[:300])
            if row_id > 2**31 - 1 or row_id < 1:
                assert r.status_code == 422, (method, url, r.status_code)
            assert "[SQL:" not in r.text and "SELECT" not in r.text and "parameters" not in r.text, r.text[:300]
    filters = filter_routes(spec)
    assert len(filters) >= 4, filters
    for path, name in filters:
        r = client.get(path, params={name: "a\x00b"}, headers=headers)
        assert r.status_code == 422, (path, name, r.status_code, r.text[:300])
        assert "[SQL:" not in r.text and "SELECT" not in r.text, r.text[:300]


def test_ids_at_the_integer_limits_and_nul_bytes_are_4xx() -> None:
    check_edges(CLIENT, schema.raw_schema, {"Authorization": f"Bearer {TOKEN}"})

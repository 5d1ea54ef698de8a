"""The API's edges that generated cases do not reach: ids at the integer limits and NUL bytes in
string filters, checked on every id and filter route the OpenAPI spec lists (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

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

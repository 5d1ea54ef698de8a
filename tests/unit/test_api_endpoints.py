"""The sidecar API through FastAPI's TestClient, on a real SQLite store and a sidecar whose scrape
replays real vLLM 0.32 captures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from slotune.api.app import create_app
from slotune.sidecar.runtime import Sidecar
from slotune.store import OutboxMessage
from tests.support.pages import AFTER, UNDER, page
from tests.support.sidecar import alert_payload, make, ticks

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALERT_TOKEN = "test-alert-token"
AM = {"Authorization": f"Bearer {ALERT_TOKEN}"}  # what Alertmanager's http_config sends


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    sc, clock, _ = make(tmp_path, [page(UNDER), page(AFTER)], slo="e2e_p95<=1s", api_token=TOKEN,
                        receivers=[{"name": "r", "url": "http://127.0.0.1:9/x"}], webhook_secret="unit-test-hmac-key", alert_token=ALERT_TOKEN)
    ticks(sc, clock, 2)  # one window: 40 slow requests, an slo_burn finding
    yield sc


@pytest.fixture
def client(sidecar: Sidecar) -> TestClient:
    return TestClient(create_app(sidecar))


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for name in ("slotune_slo_error_budget_burn_ratio", "slotune_slo_attainment_ratio", "slotune_findings_active",
                 "slotune_scrape_errors_total", "slotune_tuning_trials_finished", "slotune_applied_config_info"):
        assert f"# HELP {name}" in m.text


def test_not_ready_before_start(tmp_path: Path) -> None:
    from slotune.sidecar.config import load_settings

    sc = Sidecar(load_settings(None, target="http://127.0.0.1:9", data_dir=tmp_path))
    r = TestClient(create_app(sc)).get("/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "starting"


def test_reads_are_paginated(client: TestClient) -> None:
    page1 = client.get("/api/v1/findings", params={"limit": 1}).json()
    assert page1["limit"] == 1 and page1["total"] >= 1 and len(page1["items"]) == 1
    assert page1["items"][0]["playbook"]
    snaps = client.get("/api/v1/snapshots").json()
    assert snaps["total"] == 1 and snaps["items"][0]["data"]["slo"][0]["key"] == "e2e_p95"
    one = client.get(f"/api/v1/snapshots/{snaps['items'][0]['id']}")
    assert one.status_code == 200
    assert client.get("/api/v1/snapshots/9999").status_code == 404
    assert client.get("/api/v1/findings", params={"limit": 0}).status_code == 422
    for path in ("/api/v1/recommendations", "/api/v1/changes", "/api/v1/trials", "/api/v1/studies"):
        body = client.get(path).json()
        assert body["total"] == 0 and body["items"] == [], path
    assert client.get("/api/v1/status").json()["mode"] == "observe"


def test_writes_need_the_token(client: TestClient) -> None:
    fid = client.get("/api/v1/findings").json()["items"][0]["id"]
    for path, body in ((f"/api/v1/findings/{fid}/acknowledge", None), (f"/api/v1/findings/{fid}/silence", {}),
                       ("/api/v1/recommendations", {"config": {"max_num_seqs": 8}}),
                       ("/api/v1/recommendations/1/approve", None),
                       ("/api/v1/studies", {"model": "m", "slo": "ttft_p95<=1s", "input_len": 8, "output_len": 8})):
        assert client.post(path, json=body).status_code == 401, path
        assert client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    r = client.post(f"/api/v1/findings/{fid}/acknowledge", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    r = client.post(f"/api/v1/findings/{fid}/silence", json={"seconds": 60}, headers=AUTH)
    assert r.json()["status"] == "silenced" and r.json()["silenced_until"]
    assert client.post("/api/v1/findings/9999/acknowledge", headers=AUTH).status_code == 404


def test_writes_disabled_without_a_configured_token(tmp_path: Path) -> None:
    sc, _, _ = make(tmp_path, [page(UNDER)])
    r = TestClient(create_app(sc)).post("/api/v1/findings/1/acknowledge", headers=AUTH)
    assert r.status_code == 401 and "no api_token" in r.json()["detail"]


def test_protected_reads(tmp_path: Path) -> None:
    sc, _, _ = make(tmp_path, [page(UNDER)], api_token=TOKEN, protect_reads=True)
    c = TestClient(create_app(sc))
    assert c.get("/api/v1/findings").status_code == 401
    assert c.get("/api/v1/findings", headers=AUTH).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


def test_propose_then_approve(client: TestClient) -> None:
    bad = client.post("/api/v1/recommendations", json={"config": {"max_num_seqs": "lots"}}, headers=AUTH)
    assert bad.status_code == 422 and "max_num_seqs" in bad.json()["detail"]
    unknown = client.post("/api/v1/recommendations", json={"config": {"rm -rf": 1}}, headers=AUTH)
    assert unknown.status_code == 422
    rec = client.post("/api/v1/recommendations", json={"config": {"max_num_seqs": 8}, "reason": "test"},
                      headers=AUTH)
    assert rec.status_code == 201 and rec.json()["status"] == "pending"
    rid = rec.json()["id"]
    ok = client.post(f"/api/v1/recommendations/{rid}/approve", headers=AUTH)
    assert ok.status_code == 200 and ok.json()["status"] == "approved" and ok.json()["will_apply"] is False
    assert client.get(f"/api/v1/recommendations/{rid}").json()["status"] == "approved"
    assert client.post("/api/v1/recommendations/999/approve", headers=AUTH).status_code == 404


def test_study_request_is_validated(client: TestClient) -> None:
    r = client.post("/api/v1/studies", json={"model": "m", "slo": "nonsense", "input_len": 8, "output_len": 8},
                    headers=AUTH)
    assert r.status_code == 422 and "slo" in r.json()["detail"].lower()
    r = client.post("/api/v1/studies", json={"model": "m", "slo": "ttft_p95<=1s", "trials": 1000}, headers=AUTH)
    assert r.status_code == 422


def test_study_request_is_checked_when_submitted(client: TestClient, sidecar: Sidecar) -> None:
    """A workload that does not exist is a 422 now, not a study that starts and fails in its thread."""
    r = client.post("/api/v1/studies", json={"model": "m", "slo": "ttft_p95<=1s", "workload": "no-such-workload"},
                    headers=AUTH)
    assert r.status_code == 422 and "no-such-workload" in r.json()["detail"], r.text
    assert sidecar.studies.thread is None  # nothing started


def test_proposals_are_stored_as_their_types(client: TestClient) -> None:
    rec = client.post("/api/v1/recommendations", json={"config": {"max_num_seqs": "64",
                                                                  "enable_prefix_caching": "true"}}, headers=AUTH)
    assert rec.status_code == 201, rec.text
    stored = client.get(f"/api/v1/recommendations/{rec.json()['id']}").json()["config"]
    assert stored == {"max_num_seqs": 64, "enable_prefix_caching": True}


def test_alertmanager_webhook_groups_a_request_into_one_notification(client: TestClient, sidecar: Sidecar) -> None:
    r = client.post("/api/v1/alerts/alertmanager", json=alert_payload(2), headers=AM)
    assert r.status_code == 202, r.text
    body = r.json()
    # Two alerts, one receiver: one notification carrying both, as Alertmanager grouped them.
    assert body["accepted"] == 2 and body["firing"] == 2 and len(body["notifications"]) == 1
    with sidecar.store.session() as s:
        msgs = s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "alert")).all()
        event = msgs[0].payload["event"]
    assert len(msgs) == 1 and len(event["alerts"]) == 2
    assert event["alerts"][0]["labels"]["alertname"] == "VllmSloErrorBudgetBurn"
    assert event["diagnosis"]["target"] == sidecar.controller.target and "status" in event["diagnosis"]
    resolved = client.post("/api/v1/alerts/alertmanager", json=alert_payload(1, "resolved"), headers=AM).json()
    assert resolved["firing"] == 0 and resolved["diagnosis_status"] is None


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(("headers", "code"), [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": f"Token {ALERT_TOKEN}"}, 401),
    (_basic("alertmanager", "wrong"), 401),
    ({"Authorization": "Basic !!!not-base64"}, 401),
    (AM, 202),
    (_basic("alertmanager", ALERT_TOKEN), 202),  # Alertmanager's basic_auth
    (AUTH, 202),  # the operator's api_token may post too
])
def test_alert_intake_needs_credentials(client: TestClient, sidecar: Sidecar, headers: dict[str, str],
                                        code: int) -> None:
    r = client.post("/api/v1/alerts/alertmanager", json=alert_payload(1), headers=headers)
    assert r.status_code == code, r.text
    with sidecar.store.session() as s:
        queued = s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "alert")).all()
    assert len(queued) == (1 if code == 202 else 0)  # a refused request queues nothing


def test_alert_token_is_not_a_write_token(client: TestClient) -> None:
    r = client.post("/api/v1/recommendations", json={"config": {"max_num_seqs": 8}}, headers=AM)
    assert r.status_code == 401


def test_alert_intake_without_any_token_is_closed(tmp_path: Path) -> None:
    sc, _, _ = make(tmp_path, [page(UNDER)])
    r = TestClient(create_app(sc)).post("/api/v1/alerts/alertmanager", json=alert_payload(1),
                                        headers={"Authorization": "Bearer anything"})
    assert r.status_code == 401 and "no alert_token" in r.json()["detail"]


@pytest.mark.parametrize(("payload", "needle"), [
    ({"version": "3", **{k: v for k, v in alert_payload().items() if k != "version"}}, "version"),
    ({k: v for k, v in alert_payload().items() if k != "alerts"}, "alerts"),
    ({**alert_payload(), "alerts": []}, "alerts"),
    ({**alert_payload(), "alerts": [{"status": "burning", "labels": {}}]}, "status"),
    ({**alert_payload(), "alerts": [{"status": "firing", "labels": {"a": 1}}]}, "labels"),
    ([1, 2, 3], "body"),
])
def test_malformed_alertmanager_payloads_get_a_reason(client: TestClient, payload: object, needle: str) -> None:
    r = client.post("/api/v1/alerts/alertmanager", json=payload, headers=AM)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_not_json_and_oversized_alert_payloads(client: TestClient, sidecar: Sidecar) -> None:
    r = client.post("/api/v1/alerts/alertmanager", content=b"{not json",
                    headers={"Content-Type": "application/json", **AM})
    assert r.status_code == 422 and r.json()["detail"]
    big = client.post("/api/v1/alerts/alertmanager", content=b"x" * 1_100_000,
                      headers={"Content-Type": "application/json", **AM})
    assert big.status_code == 413 and "limit" in big.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 100_000

    chunked = client.post("/api/v1/alerts/alertmanager", content=chunks(),
                          headers={"Content-Type": "application/json", **AM})
    assert chunked.status_code == 413
    limit = sidecar.settings.max_alerts_per_request
    too_many = client.post("/api/v1/alerts/alertmanager", json=alert_payload(limit + 1), headers=AM)
    assert too_many.status_code == 413 and "max_alerts_per_request" in too_many.json()["detail"]
    assert client.post("/api/v1/alerts/alertmanager", json=alert_payload(limit), headers=AM).status_code == 202
    with sidecar.store.session() as s:
        assert len(s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "alert")).all()) == 1


def test_filters_apply(client: TestClient, sidecar: Sidecar) -> None:
    everything = client.get("/api/v1/findings").json()
    assert {f["playbook"] for f in everything["items"]} >= {"slo_burn"}
    only = client.get("/api/v1/findings", params={"playbook": "slo_burn"}).json()
    assert only["total"] == 1 and only["items"][0]["playbook"] == "slo_burn"
    assert client.get("/api/v1/findings", params={"playbook": "nope"}).json()["total"] == 0
    assert client.get("/api/v1/findings", params={"status": "resolved"}).json()["total"] == 0
    target = sidecar.controller.target
    assert client.get("/api/v1/snapshots", params={"target": target}).json()["total"] == 1
    assert client.get("/api/v1/snapshots", params={"target": "http://other"}).json()["total"] == 0
    # every list endpoint's filters name real columns (a wrong one would be a 500, not an empty page)
    assert client.get("/api/v1/trials", params={"study": "nope"}).json()["total"] == 0
    assert client.get("/api/v1/recommendations", params={"status": "rejected"}).json()["total"] == 0


def test_snapshots_say_how_precise_their_quantiles_are(client: TestClient) -> None:
    """The API serves the collectors' JSON: each quantile's bucket, and which are coarse."""
    item = client.get("/api/v1/snapshots").json()["items"][0]
    queue = item["data"]["queue_seconds"]
    assert queue["buckets"]["p50"] == [0.0, 0.3] and "p50" in queue["coarse"]  # all queue times in (0, 0.3 s]
    assert item["data"]["e2e_seconds"]["buckets"]["p95"] == [1.0, 1.5]


def test_openapi_says_what_the_api_does(client: TestClient, tmp_path: Path) -> None:
    """The document's 422 shape is the body the app sends, and reads' security matches protect_reads
    (open by default: `security: [{}]`), checked against real answers."""
    import jsonschema

    spec = client.get("/openapi.json").json()
    error = spec["components"]["schemas"]["Error"]
    bad = client.get("/api/v1/findings", params={"limit": "many"})
    assert bad.status_code == 422
    jsonschema.validate(bad.json(), error)
    assert isinstance(bad.json()["detail"], str) and bad.json()["errors"]
    listed = spec["paths"]["/api/v1/findings"]["get"]
    assert listed["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert listed["security"] == [{}] and client.get("/api/v1/findings").status_code == 200
    write = spec["paths"]["/api/v1/findings/{finding_id}/acknowledge"]["post"]
    assert write["security"] == [{"HTTPBearer": []}] and "401" in write["responses"]
    assert client.post("/api/v1/findings/1/acknowledge").status_code == 401
    jsonschema.validate(client.post("/api/v1/findings/1/acknowledge").json(), error)

    (tmp_path / "protected").mkdir()
    sc, _, _ = make(tmp_path / "protected", [page(UNDER)], api_token=TOKEN, protect_reads=True)
    protected = TestClient(create_app(sc))
    read = protected.get("/openapi.json").json()["paths"]["/api/v1/findings"]["get"]
    assert read["security"] == [{"HTTPBearer": []}] and "401" in read["responses"]
    assert protected.get("/api/v1/findings").status_code == 401


def test_diagnosis_serves_the_last_tick_and_never_scrapes(tmp_path: Path) -> None:
    """200 unauthenticated GETs once meant 200 scrapes of vLLM; now they read the last tick's verdict."""
    sc, clock, script = make(tmp_path, [page(UNDER), page(AFTER)], slo="e2e_p95<=1s")
    ticks(sc, clock, 2)
    c = TestClient(create_app(sc))
    before = script.calls
    answers = [c.get("/api/v1/diagnosis").json() for _ in range(20)]
    assert script.calls == before
    assert answers[0] == answers[-1] and answers[0]["as_of"] == sc.controller.last_diagnosis_at
    assert answers[0]["status"] == sc.controller.last_diagnosis["status"]


@pytest.mark.parametrize("config", [{"model": "other"}, {"host": "0.0.0.0"}, {"port": 1},
                                    {"served_model_name": "x"}, {"env": {"CUDA_VISIBLE_DEVICES": "1"}}])
def test_proposals_change_tuning_flags_only(client: TestClient, config: dict[str, object]) -> None:
    r = client.post("/api/v1/recommendations", json={"config": {"max_num_seqs": 8, **config}}, headers=AUTH)
    assert r.status_code == 422 and "tuning flags only" in r.json()["detail"], r.text
    assert client.get("/api/v1/recommendations").json()["total"] == 0


def test_a_study_model_that_looks_like_a_flag_is_refused(client: TestClient) -> None:
    for body in ({"model": "--trust-remote-code"}, {"model": "m", "served_model_name": "--api-key=x"}):
        r = client.post("/api/v1/studies", json={"slo": "ttft_p95<=1s", "input_len": 8, "output_len": 8, **body},
                        headers=AUTH)
        assert r.status_code == 422 and "starts with '-'" in r.json()["detail"], r.text


def test_dead_letters_are_listed_and_retried_on_request(client: TestClient, sidecar: Sidecar) -> None:
    from datetime import datetime, timezone

    budget = sidecar.settings.outbox.max_attempts
    with sidecar.store.session() as s:
        s.add(OutboxMessage(id="dead-1", receiver="r", kind="alert", payload={}, attempts=budget,
                            last_error="HTTP 503", next_attempt_at=datetime.now(timezone.utc)))
        s.add(OutboxMessage(id="live-1", receiver="r", kind="alert", payload={}, attempts=1,
                            next_attempt_at=datetime.now(timezone.utc)))
    dead = client.get("/api/v1/outbox/dead").json()
    assert dead["total"] == 1 and dead["items"][0]["id"] == "dead-1" and dead["items"][0]["last_error"] == "HTTP 503"
    assert "payload" not in dead["items"][0]
    assert client.post("/api/v1/outbox/retry", json={}).status_code == 401
    assert client.post("/api/v1/outbox/retry", json={"receiver": "nope"}, headers=AUTH).json() == {"requeued": 0}
    assert client.post("/api/v1/outbox/retry", json={"receiver": "r"}, headers=AUTH).json() == {"requeued": 1}
    assert client.get("/api/v1/outbox/dead").json()["total"] == 0
    with sidecar.store.session() as s:
        assert s.get(OutboxMessage, "dead-1").attempts == 0  # a fresh budget, due now
    assert "slotune_outbox_dead_letters" in client.get("/metrics").text


def test_alert_intake_deduplicates_on_fingerprint_start_and_status(client: TestClient, sidecar: Sidecar) -> None:
    """Alertmanager retrying a post (or repeating a group) does not notify twice: an alert with the
    fingerprint, startsAt and status already notified is dropped, and the request's receipts and
    notification commit together."""
    def alert_rows() -> list[OutboxMessage]:
        with sidecar.store.session() as s:
            return list(s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "alert")).all())

    first = client.post("/api/v1/alerts/alertmanager", json=alert_payload(3), headers=AM).json()
    assert first["duplicates"] == 0 and len(first["notifications"]) == 1
    again = client.post("/api/v1/alerts/alertmanager", json=alert_payload(3), headers=AM).json()
    assert again["duplicates"] == 3 and again["notifications"] == [] and len(alert_rows()) == 1
    more = client.post("/api/v1/alerts/alertmanager", json=alert_payload(4), headers=AM).json()
    assert more["duplicates"] == 3 and len(more["notifications"]) == 1
    assert [a["fingerprint"] for a in alert_rows()[-1].payload["event"]["alerts"]] == ["abc3"]
    # The same alerts resolved, or firing again from a new start, are news.
    assert client.post("/api/v1/alerts/alertmanager", json=alert_payload(1, "resolved"), headers=AM
                       ).json()["duplicates"] == 0
    restarted = alert_payload(1)
    restarted["alerts"][0]["startsAt"] = "2026-01-02T00:00:00Z"
    assert client.post("/api/v1/alerts/alertmanager", json=restarted, headers=AM).json()["duplicates"] == 0
    # Twice in one request: once.
    twice = alert_payload(1)
    twice["alerts"] = twice["alerts"] * 2
    twice["alerts"][0]["fingerprint"] = twice["alerts"][1]["fingerprint"] = "new"
    out = client.post("/api/v1/alerts/alertmanager", json=twice, headers=AM).json()
    assert out["duplicates"] == 1 and len(alert_rows()[-1].payload["event"]["alerts"]) == 1


def test_alert_intake_commits_a_request_whole(client: TestClient, sidecar: Sidecar,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A store error part-way through a request leaves nothing behind (no receipts, no message), so
    Alertmanager's retry of it is notified in full."""
    from slotune.errors import StoreError
    from slotune.sidecar import outbox

    real = outbox.enqueue

    def failing(session, *args, **kw):  # type: ignore[no-untyped-def]
        real(session, *args, **kw)
        session.flush()
        raise StoreError("disk full")

    monkeypatch.setattr(outbox, "enqueue", failing)
    r = client.post("/api/v1/alerts/alertmanager", json=alert_payload(5), headers=AM)
    assert r.status_code == 503 and r.json()["detail"] == "disk full"
    monkeypatch.setattr(outbox, "enqueue", real)
    retry = client.post("/api/v1/alerts/alertmanager", json=alert_payload(5), headers=AM).json()
    assert retry["duplicates"] == 0 and len(retry["notifications"]) == 1


@pytest.mark.parametrize(("config", "reason"), [
    ({"max_num_seqs": 64, "enable_chunked_prefill": False, "max_num_batched_tokens": 16},
     "max_num_batched_tokens (16) must be >= max_num_seqs (64)"),
    ({"max_num_seqs": 1e20}, "max_num_seqs"),
    ({"max_num_batched_tokens": 2**31}, "max_num_batched_tokens"),
    ({"kv_cache_memory_bytes": 2**64}, "kv_cache_memory_bytes"),
])
def test_proposals_slotune_would_not_launch_are_refused(client: TestClient, config: dict[str, object],
                                                         reason: str) -> None:
    """The same checks as `slotune serve` (VllmConfig and validate_combination): a 422 with the reason, and
    nothing stored that an operator could approve."""
    r = client.post("/api/v1/recommendations", json={"config": config}, headers=AUTH)
    assert r.status_code == 422 and reason in r.json()["detail"], r.text
    assert client.get("/api/v1/recommendations").json()["total"] == 0


@pytest.mark.parametrize("path", ["/api/v1/findings", "/api/v1/recommendations"])
def test_an_unknown_status_filter_is_a_422(client: TestClient, path: str) -> None:
    r = client.get(path, params={"status": "bogus"}, headers=AUTH)
    assert r.status_code == 422 and "status" in r.json()["detail"], r.text
    ok = client.get(path, params={"status": "active" if "findings" in path else "pending"}, headers=AUTH)
    assert ok.status_code == 200, ok.text

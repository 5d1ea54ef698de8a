"""Outbox and signing: real SQLite, a real HTTP receiver on 127.0.0.1; time is injected."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from slotune.settings import Settings
from slotune.sidecar import outbox, signing
from slotune.sidecar.config import load_settings
from slotune.store import OutboxMessage, open_store
from tests.support.http_servers import receiver
from tests.support.paths import REPO
from tests.support.sidecar import Clock

SECRET = "hmac-secret"
EVENT = {"id": 1, "target": "http://127.0.0.1:8000", "playbook": "high_ttft", "severity": "warning",
         "status": "active", "summary": "TTFT p95 1.2 s over 500 ms",
         "evidence": [{"field": "ttft_p95", "value": 1.2, "op": ">", "threshold": 0.5, "description": "slow"}],
         "remedies": [{"action": "raise max_num_batched_tokens", "why": "prefill is starved",
                       "config_delta": {"max_num_batched_tokens": 4096}}]}


def test_signature_roundtrip_and_refusals() -> None:
    body = b'{"a":1}'
    h = signing.headers("id-1", SECRET, body, timestamp=1000)
    assert h["X-Slotune-Signature"].startswith("sha256=") and h["X-Slotune-Id"] == "id-1"
    ts, sig = h["X-Slotune-Timestamp"], h["X-Slotune-Signature"]
    assert signing.verify(SECRET, body, ts, sig, now=1010)
    assert not signing.verify(SECRET, body + b" ", ts, sig, now=1010)  # body changed
    assert not signing.verify("other", body, ts, sig, now=1010)  # wrong key
    assert not signing.verify(SECRET, body, "1001", sig, now=1010)  # timestamp changed
    assert not signing.verify(SECRET, body, ts, sig, now=1000 + 301)  # replayed later
    assert not signing.verify(SECRET, body, None, sig) and not signing.verify(SECRET, body, "x", sig)


def _settings(tmp_path: Path, url: str, **kw: object) -> Settings:
    return load_settings(None, target="http://127.0.0.1:1", data_dir=tmp_path, webhook_secret=SECRET,
                         receivers=[{"name": "json", "url": f"{url}/json"},
                                    {"name": "slack", "url": f"{url}/slack", "format": "slack",
                                     "events": ["finding"]}], **kw)


def test_delivery_is_signed_in_both_formats(tmp_path: Path) -> None:
    with receiver() as rcv:
        settings = _settings(tmp_path, rcv.url)
        store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        clock = Clock()
        with store.session() as s:
            ids = outbox.enqueue(s, settings, "finding", EVENT, clock())
            only_json = outbox.enqueue(s, settings, "recommendation", {"target": "t", "config": {}}, clock())
        assert len(ids) == 2 and len(only_json) == 1  # the slack receiver takes findings only
        d = outbox.Deliverer(settings, store, clock=clock)
        assert d.run_once() == 3 and d.pending() == 0
        assert len(rcv.verified(SECRET)) == 3
        by_path = {p.path: p for p in rcv.posts if p.json.get("kind", "finding") == "finding"}
        generic = by_path["/json"].json
        assert generic["id"] == by_path["/json"].headers["X-Slotune-Id"] and generic["event"] == EVENT
        slack = by_path["/slack"].json
        assert set(slack) == {"text", "mrkdwn", "blocks"} and "high_ttft" in slack["text"]
        assert any("max_num_batched_tokens" in json.dumps(b) or "raise" in json.dumps(b) for b in slack["blocks"])
        assert by_path["/slack"].headers["X-Slotune-Id"] in json.dumps(slack["blocks"])
        d.close()


def test_receiver_outage_backs_off_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    with receiver() as rcv:
        settings = _settings(tmp_path, rcv.url, outbox={"backoff_initial_seconds": 2, "backoff_max_seconds": 60})
        db = f"sqlite:///{tmp_path / 'db.sqlite'}"
        store = open_store(db)
        with store.session() as s:
            ids = outbox.enqueue(s, settings, "finding", EVENT, clock())
        rcv.state.fail_with = 503
        d = outbox.Deliverer(settings, store, clock=clock)
        assert d.run_once() == 0
        assert d.run_once() == 0  # not due yet: nothing is posted again right away
        with store.session() as s:
            rows = s.scalars(select(OutboxMessage)).all()
            assert {r.attempts for r in rows} == {1} and all("503" in (r.last_error or "") for r in rows)
            due = {r.next_attempt_at.replace(tzinfo=timezone.utc).timestamp() - clock() for r in rows}
        assert all(0.99 <= x <= 4.01 for x in due), due  # first backoff (stored to the microsecond)
        d.close()
        store.dispose()

        # "restart": a new store and deliverer on the same database, later, with the receiver back.
        clock.advance(5)
        rcv.state.fail_with = None
        store2 = open_store(db)
        d2 = outbox.Deliverer(settings, store2, clock=clock)
        assert d2.run_once() == 2 and d2.pending() == 0
        got = [p.headers["X-Slotune-Id"] for p in rcv.verified(SECRET)]
        assert sorted(got) == sorted(ids)
        assert d2.run_once() == 0  # delivered once
        d2.close()


def test_backoff_grows_and_is_capped(tmp_path: Path) -> None:
    settings = load_settings(None, target="http://127.0.0.1:1", data_dir=tmp_path,
                             outbox={"backoff_initial_seconds": 1, "backoff_max_seconds": 30})
    d = outbox.Deliverer(settings, open_store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    upper = [max(d.backoff(n) for _ in range(50)) for n in range(1, 10)]
    assert upper[0] <= 1 and upper[3] > 2 and max(upper) <= 30
    d.close()


def test_unknown_receiver_is_kept_not_lost(tmp_path: Path) -> None:
    with receiver() as rcv:
        settings = _settings(tmp_path, rcv.url)
        store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        with store.session() as s:
            s.add(OutboxMessage(id="x", receiver="gone", kind="finding", payload={"a": 1},
                                next_attempt_at=datetime(2000, 1, 1, tzinfo=timezone.utc)))
        d = outbox.Deliverer(settings, store, clock=Clock())
        assert d.run_once() == 0 and d.pending() == 1
        with store.session() as s:
            assert "not configured" in (s.get(OutboxMessage, "x").last_error or "")
        d.close()


@pytest.mark.parametrize("kind", ["alert", "finding", "recommendation", "config_change"])
def test_every_kind_renders_in_both_formats(kind: str) -> None:
    now = datetime.now(timezone.utc)
    event = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "X"}, "annotations": {}}],
             "diagnosis": {"status": "findings", "findings": [EVENT]}} if kind == "alert" else EVENT
    generic = outbox.render("json", "id", kind, event, now)
    slack = outbox.render("slack", "id", kind, event, now)
    assert generic["kind"] == kind and slack["text"] and slack["blocks"]
    json.dumps(generic), json.dumps(slack)


HOSTILE = "<!channel> <@U123> <https://evil.example|click here> *bold* _it_ ~s~ `code` &amp;"


def test_slack_format_neutralises_what_slack_interprets() -> None:
    """Labels and annotations come from whoever posted the alert: in the Slack format no mention,
    disguised link or markdown in them may act. Slack's escapes for & < > are applied, and
    outside text only ever sits in plain_text objects (the fallback text has mrkdwn off)."""
    alert = {"status": "firing", "labels": {"alertname": "X", "instance": HOSTILE},
             "annotations": {"summary": HOSTILE, "description": HOSTILE}}
    event = {"status": "firing", "alerts": [alert, {**alert, "labels": {"alertname": "Y"}}],
             "common_annotations": {"summary": HOSTILE},
             "diagnosis": {"status": "findings", "findings": [{**EVENT, "summary": HOSTILE}]}}
    for kind, ev in (("alert", event), ("finding", {**EVENT, "summary": HOSTILE}),
                     ("recommendation", {"target": HOSTILE, "reason": HOSTILE, "config": {"model": HOSTILE}})):
        msg = outbox.render("slack", "id-1", kind, ev, datetime.now(timezone.utc))
        dumped = json.dumps(msg)
        assert "<" not in dumped and ">" not in dumped, kind  # no <!channel>, <@user>, <url|label> left
        assert "&lt;!channel&gt;" in dumped and "&amp;amp;" in dumped
        assert msg["mrkdwn"] is False
        for block in msg["blocks"]:
            if block["type"] == "context":
                assert block["elements"] == [{"type": "mrkdwn", "text": f"slotune · {kind} · id id-1"}]
            else:
                assert block["text"]["type"] == "plain_text", block
    # The generic JSON format carries the event as data, untouched.
    assert outbox.render("json", "id-1", "alert", event, datetime.now(timezone.utc))["event"] == event


def test_alert_group_headline_counts_like_alertmanager() -> None:
    alerts = [{"status": "firing", "labels": {"alertname": "A"}, "annotations": {"summary": "s"}},
              {"status": "resolved", "labels": {"alertname": "A"}, "annotations": {}}]
    assert outbox.headline("alert", {"status": "firing", "alerts": alerts, "common_labels": {"alertname": "A"}}) \
        == "[firing:1] A"
    assert outbox.headline("alert", {"status": "firing", "alerts": alerts[:1]}) == "[firing:1] A: s"


def test_docs_verify_snippet() -> None:
    """The verification code docs/sidecar.md gives receivers: it accepts what the sidecar signs and
    refuses a missing header, a malformed one, a forged body and a replay past the window."""
    import re
    import time

    doc = (REPO / "docs" / "sidecar.md").read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", doc, re.DOTALL) if "def verify(" in c]
    scope: dict[str, object] = {}
    exec(code, scope)  # the documented snippet itself
    verify = scope["verify"]
    body = b'{"a":1}'
    now = int(time.time())
    h = signing.headers("id-1", SECRET, body, timestamp=now)
    ts, sig = h[signing.TIMESTAMP_HEADER], h[signing.SIGNATURE_HEADER]
    assert verify(SECRET, body, ts, sig)  # type: ignore[operator]
    for args in ((None, sig), (ts, None), ("", sig), ("12x", sig), ("-1", sig), (ts, "sha256=00")):
        assert verify(SECRET, body, *args) is False, args  # type: ignore[operator]
        assert signing.verify(SECRET, body, *args) is False, args
    assert verify(SECRET, body + b" ", ts, sig) is False  # type: ignore[operator]
    old = signing.headers("id-1", SECRET, body, timestamp=now - 301)
    assert verify(SECRET, body, old[signing.TIMESTAMP_HEADER], old[signing.SIGNATURE_HEADER]) is False  # type: ignore[operator]
    # Unsigned (unsigned_delivery): no signature header at all, and the check fails.
    assert signing.SIGNATURE_HEADER not in signing.headers("id-1", "", body)


def test_dead_letters_are_kept_counted_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After max_attempts a message is a dead letter: kept, in the metric and the log, never posted
    again on its own; the receiver answering again (a newer message gets through) or an operator's
    retry puts it back in the queue, and it is delivered."""
    import logging

    from slotune.sidecar.metrics import SidecarMetrics

    clock = Clock()
    with receiver() as rcv:
        settings = _settings(tmp_path, rcv.url, outbox={"max_attempts": 2, "backoff_initial_seconds": 1,
                                                         "backoff_max_seconds": 2})
        store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        metrics = SidecarMetrics()
        d = outbox.Deliverer(settings, store, metrics, clock=clock)
        with store.session() as s:
            (first,) = outbox.enqueue(s, settings, "recommendation", {"target": "t", "config": {}}, clock())
        rcv.state.fail_with = 503
        with caplog.at_level(logging.WARNING, logger="slotune.sidecar.outbox"):
            for _ in range(4):
                d.run_once()
                clock.advance(5)
        assert d.dead() == {"json": 1} and d.pending() == 1  # kept, not dropped
        assert sum(1 for r in caplog.records if "dead letter" in r.getMessage() and first in r.getMessage()) == 1
        assert metrics.outbox_dead.labels("json")._value.get() == 1
        with store.session() as s:
            assert s.get(OutboxMessage, first).attempts == 2  # no third attempt on its own

        # The receiver answers again: a newer message gets through, and the dead letter follows.
        rcv.state.fail_with = None
        with store.session() as s:
            (second,) = outbox.enqueue(s, settings, "recommendation", {"target": "t", "config": {}}, clock())
        assert d.run_once() == 1 and d.dead() == {}
        assert d.run_once() == 1 and d.pending() == 0
        assert [p.headers["X-Slotune-Id"] for p in rcv.posts] == [second, first]
        assert metrics.outbox_dead.labels("json")._value.get() == 0

        # An operator's retry.
        rcv.state.fail_with = 500
        with store.session() as s:
            (third,) = outbox.enqueue(s, settings, "recommendation", {"target": "t", "config": {}}, clock())
        for _ in range(3):
            d.run_once()
            clock.advance(5)
        assert d.dead() == {"json": 1}
        rcv.state.fail_with = None
        assert d.retry_dead("other") == 0 and d.retry_dead() == 1
        assert d.run_once() == 1 and rcv.posts[-1].headers["X-Slotune-Id"] == third
        d.close()


class _Hung:
    """A receiver that accepts connections and never answers."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def test_a_hung_receiver_delays_no_other_and_shutdown_is_bounded(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Each receiver has its own delivery thread: with one receiver hanging for its whole timeout,
    the other gets its notifications, and stop() returns after its grace, leaving the hung message
    queued (delivered again after a restart: at least once)."""
    import logging

    from slotune.sidecar.runtime import Sidecar
    from tests.support.polling import wait_until

    hung = _Hung()
    try:
        with receiver() as rcv:
            settings = load_settings(None, target="http://127.0.0.1:9", data_dir=tmp_path, webhook_secret=SECRET,
                                     interval=3600,
                                     receivers=[{"name": "hung", "url": f"{hung.url}/x", "timeout": 60},
                                                {"name": "ok", "url": f"{rcv.url}/ok"}])
            sc = Sidecar(settings, store=open_store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
            sc.start()
            try:
                for n in range(3):
                    sc.notify("recommendation", {"target": "t", "config": {"n": n}})
                # Sequential delivery would hold every one of these behind 60 s per hung post.
                wait_until(lambda: len(rcv.posts) == 3, 30, "the healthy receiver's notifications")
                wait_until(lambda: sc.deliverer.pending() == 3, 10, "only the hung receiver's to be left queued")
            finally:
                with caplog.at_level(logging.WARNING, logger="slotune.sidecar"):
                    sc.stop(grace=1)
            assert any("slotune-outbox-hung" in r.getMessage() for r in caplog.records)
    finally:
        hung.close()


def test_delivery_backs_off_on_database_errors() -> None:
    from slotune.sidecar.runtime import delivery_wait

    assert delivery_wait(1.0, None, 0) == 1.0 and delivery_wait(1.0, 0.0, 0) == 0.05
    waits = [delivery_wait(1.0, 0.0, n) for n in range(1, 10)]  # a message is due, but the store fails
    assert waits[:3] == [2.0, 4.0, 8.0] and max(waits) == 60.0 and waits == sorted(waits)
    assert delivery_wait(1.0, 0.0, 10**6) == 60.0

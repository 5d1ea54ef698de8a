"""Notifications through an outbox table: at-least-once delivery that survives a receiver outage
and a sidecar restart.

`enqueue()` writes one row per subscribed receiver in the caller's transaction, with the message
body already rendered (generic JSON or Slack-compatible), so what is delivered is exactly what was
decided. `Deliverer.run_once()` posts the due rows, signed (see `signing`), and either marks them
delivered or schedules the next attempt with exponential backoff and jitter (tenacity's
`wait_random_exponential`), persisted in `next_attempt_at`, so a restart resumes the schedule.
Every message keeps its id across retries (`X-Slotune-Id`, and `id` in JSON bodies): receivers drop
duplicates by it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from tenacity import RetryCallState, wait_random_exponential

from slotune.settings import ReceiverSettings, Settings
from slotune.sidecar import signing
from slotune.sidecar.metrics import SidecarMetrics
from slotune.store import OutboxMessage, Store

log = logging.getLogger("slotune.sidecar.outbox")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)  # SQLite drops the zone


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes posted (and signed)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


# -- message formats ---------------------------------------------------------------------------------

def render(fmt: str, message_id: str, kind: str, event: dict[str, Any], created: datetime) -> dict[str, Any]:
    if fmt == "slack":
        return _slack(message_id, kind, event)
    return {"id": message_id, "kind": kind, "created_at": created.isoformat(), "source": "slotune",
            "event": event}


def _alert_name(alert: dict[str, Any]) -> str:
    return str((alert.get("labels") or {}).get("alertname", "alert"))


def headline(kind: str, event: dict[str, Any]) -> str:
    """One line for a human; built from the event as is (the Slack format escapes it)."""
    if kind == "alert":
        alerts = event.get("alerts") or []
        common = event.get("common_labels") or {}
        name = common.get("alertname") or (_alert_name(alerts[0]) if alerts else "alert")
        summary = (event.get("common_annotations") or {}).get("summary") or (
            (alerts[0].get("annotations") or {}).get("summary", "") if len(alerts) == 1 else "")
        firing = sum(1 for a in alerts if a.get("status") == "firing")
        count = f"{event.get('status', 'firing')}:{firing if event.get('status') == 'firing' else len(alerts)}"
        return f"[{count}] {name}" + (f": {summary}" if summary else "")
    if kind == "finding":
        return (f"[{event.get('status', 'active')}] {event.get('severity', '')} finding "
                f"{event.get('playbook')} on {event.get('target')}: {event.get('summary', '')}")
    if kind == "recommendation":
        return f"recommended config for {event.get('target')} ({event.get('source')}): {event.get('reason', '')}"
    if kind == "config_change":
        return f"config change on {event.get('target')}: {event.get('status')}"
    return f"slotune {kind}"


def slack_escape(text: str) -> str:
    """Slack's control characters as the entities Slack asks for: `<!channel>`, `<@U123>` and
    `<https://x|label>` then show as typed instead of pinging or hiding a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_SLACK_HEADER_MAX = 150  # Slack's limit on a header block's text
_SLACK_SECTION_MAX = 2900


def _slack(message_id: str, kind: str, event: dict[str, Any]) -> dict[str, Any]:
    """Everything that comes from outside (alert labels and annotations, summaries, configs) goes in
    `plain_text` objects, escaped, and the fallback `text` has `mrkdwn: false`: no mention, link or
    markdown in an alert can act in the channel. Only slotune's own id line is mrkdwn."""
    text = slack_escape(headline(kind, event))
    details = slack_escape(_details(kind, event))
    header = text if len(text) <= _SLACK_HEADER_MAX else text[:_SLACK_HEADER_MAX - 1] + "…"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": header}}]
    if details:
        blocks.append({"type": "section", "text": {"type": "plain_text", "text": details[:_SLACK_SECTION_MAX]}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"slotune · {kind} · id {message_id}"}]})
    return {"text": text[:3000], "mrkdwn": False, "blocks": blocks}


def _details(kind: str, event: dict[str, Any]) -> str:
    lines: list[str] = []
    if kind == "finding":
        for ev in event.get("evidence", [])[:5]:
            lines.append(f"• {ev.get('description') or ev.get('field')}: {ev.get('value')} {ev.get('op', '')} "
                         f"{ev.get('threshold', '')}")
        for rem in event.get("remedies", [])[:3]:
            lines.append(f"→ {rem.get('action')}: {rem.get('why', '')}")
    if kind == "alert":
        alerts = event.get("alerts") or []
        for alert in alerts[:10]:
            labels = alert.get("labels") or {}
            where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
            summary = (alert.get("annotations") or {}).get("summary", "")
            lines.append(f"• [{alert.get('status')}] {_alert_name(alert)} {{{where}}} {summary}"[:300])
        if len(alerts) > 10:
            lines.append(f"… and {len(alerts) - 10} more")
        diag = event.get("diagnosis") or {}
        lines.append(f"diagnosis: {diag.get('status', 'n/a')}")
        for f in diag.get("findings", [])[:5]:
            lines.append(f"• {f.get('playbook')} ({f.get('severity')}): {f.get('summary', '')}")
    if kind == "recommendation":
        lines.append(f"config: {json.dumps(event.get('config', {}), sort_keys=True)}")
    return "\n".join(lines)


def enqueue(session: Session, settings: Settings, kind: str, event: dict[str, Any], now: float) -> list[str]:
    """One outbox row per receiver subscribed to `kind`; returns the message ids."""
    ids = []
    created = _utc(now)
    for receiver in settings.receivers:
        if kind not in receiver.events:
            continue
        mid = str(uuid.uuid4())
        session.add(OutboxMessage(id=mid, receiver=receiver.name, kind=kind,
                                  payload=render(receiver.format, mid, kind, event, created),
                                  next_attempt_at=created, created_at=created))
        ids.append(mid)
    return ids


# -- delivery ------------------------------------------------------------------------------------------

class Deliverer:
    """Posts due outbox rows. One deliverer per database (it is the only writer of delivery state)."""

    def __init__(self, settings: Settings, store: Store, metrics: SidecarMetrics | None = None, *,
                 clock: Callable[[], float] | None = None, client: httpx.Client | None = None) -> None:
        import time

        self.settings, self.store, self.metrics = settings, store, metrics
        self.clock = clock or time.time
        self.client = client or httpx.Client()
        self.receivers: dict[str, ReceiverSettings] = {r.name: r for r in settings.receivers}
        cfg = settings.outbox
        self._wait = wait_random_exponential(multiplier=cfg.backoff_initial_seconds, max=cfg.backoff_max_seconds)

    def backoff(self, attempts: int) -> float:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempts
        return max(float(self._wait(state)), self.settings.outbox.backoff_initial_seconds / 2)

    def _undelivered(self, receiver: str | None, others: bool) -> Any:
        """Undelivered rows of one receiver; with `others`, of every receiver not configured here."""
        cond = [OutboxMessage.delivered_at.is_(None)]
        if others:
            cond.append(OutboxMessage.receiver.notin_(list(self.receivers)))
        elif receiver is not None:
            cond.append(OutboxMessage.receiver == receiver)
        return cond

    def due(self, session: Session, now: float, receiver: str | None = None,
            others: bool = False) -> Sequence[OutboxMessage]:
        q = (select(OutboxMessage)
             .where(*self._undelivered(receiver, others),
                    OutboxMessage.attempts < self.settings.outbox.max_attempts,
                    OutboxMessage.next_attempt_at <= _utc(now))
             .order_by(OutboxMessage.created_at, OutboxMessage.id)
             .limit(self.settings.outbox.batch))
        return session.scalars(q).all()

    def run_once(self, receiver: str | None = None, *, others: bool = False) -> int:
        """Try every due message (of `receiver`, of the unconfigured ones with `others`, or of all)
        once; returns how many were delivered. A message that fails its `max_attempts`-th attempt is
        kept as a dead letter (logged, counted in `slotune_outbox_dead_letters`); a receiver that
        answers again gets its dead letters retried."""
        now = self.clock()
        with self.store.session() as session:
            messages = [(m.id, m.receiver, m.payload, m.attempts) for m in self.due(session, now, receiver, others)]
        delivered = 0
        answered: set[str] = set()
        max_attempts = self.settings.outbox.max_attempts
        for mid, receiver_name, payload, attempts in messages:
            error = self._post(mid, receiver_name, payload)
            outcome = "delivered" if error is None else "failed"
            if self.metrics is not None:
                self.metrics.notifications.labels(receiver_name, outcome).inc()
            with self.store.session() as session:
                row = session.get(OutboxMessage, mid)
                if row is None:
                    continue
                row.attempts = attempts + 1
                if error is None:
                    row.delivered_at = _utc(self.clock())
                    row.last_error = None
                    delivered += 1
                    answered.add(receiver_name)
                else:
                    row.last_error = error[:2000]
                    row.next_attempt_at = _utc(self.clock() + self.backoff(row.attempts))
                    if row.attempts >= max_attempts:
                        log.error("notification %s (%s) to %s given up after %d attempts, kept as a dead letter "
                                  "(retried when %s answers again, or POST /api/v1/outbox/retry): %s", mid,
                                  row.kind, receiver_name, row.attempts, receiver_name, error)
                    else:
                        log.warning("notification %s to %s failed (attempt %d): %s", mid, receiver_name,
                                    row.attempts, error)
        for name in sorted(answered):
            self.retry_dead(name, why=f"{name} answers again")
        self._gauge()
        return delivered

    def retry_dead(self, receiver: str | None = None, *, why: str = "asked") -> int:
        """Put dead letters (of `receiver`, or all) back in the queue, due now, with a fresh attempt
        budget; returns how many."""
        with self.store.session() as session:
            q = (update(OutboxMessage)
                 .where(*self._undelivered(receiver, False),
                        OutboxMessage.attempts >= self.settings.outbox.max_attempts)
                 .values(attempts=0, next_attempt_at=_utc(self.clock())))
            n = session.execute(q).rowcount or 0
        if n:
            log.warning("%d dead letter(s)%s queued again: %s", n, f" to {receiver}" if receiver else "", why)
            self._gauge()
        return n

    def dead(self) -> dict[str, int]:
        """Dead letters by receiver."""
        with self.store.session() as session:
            rows = session.execute(select(OutboxMessage.receiver, func.count())
                                   .where(OutboxMessage.delivered_at.is_(None),
                                          OutboxMessage.attempts >= self.settings.outbox.max_attempts)
                                   .group_by(OutboxMessage.receiver)).all()
        return {r: int(n) for r, n in rows}

    def _post(self, mid: str, receiver_name: str, payload: dict[str, Any]) -> str | None:
        receiver = self.receivers.get(receiver_name)
        if receiver is None:
            return f"receiver {receiver_name!r} is not configured"
        body = body_bytes(payload)
        hdrs = signing.headers(mid, self.settings.secret_for(receiver), body, int(self.clock()))
        try:
            resp = self.client.post(receiver.url, content=body, headers=hdrs, timeout=receiver.timeout)
        except httpx.HTTPError as exc:
            return f"{exc.__class__.__name__}: {exc}"
        if 200 <= resp.status_code < 300:
            return None
        return f"HTTP {resp.status_code}: {resp.text[:200]}"

    def pending(self) -> int:
        with self.store.session() as session:
            return session.scalar(select(func.count()).select_from(OutboxMessage)
                                  .where(OutboxMessage.delivered_at.is_(None))) or 0

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.outbox_pending.set(self.pending())
            dead = self.dead()
            for name in set(self.receivers) | set(dead):
                self.metrics.outbox_dead.labels(name).set(dead.get(name, 0))

    def next_due_in(self, receiver: str | None = None, *, others: bool = False) -> float | None:
        """Seconds until the earliest undelivered message (of `receiver` / the others) is due (None:
        nothing waiting)."""
        with self.store.session() as session:
            nxt = session.scalar(select(func.min(OutboxMessage.next_attempt_at))
                                 .where(*self._undelivered(receiver, others),
                                        OutboxMessage.attempts < self.settings.outbox.max_attempts))
        return None if nxt is None else max(_aware(nxt).timestamp() - self.clock(), 0.0)

    def close(self) -> None:
        self.client.close()

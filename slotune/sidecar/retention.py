"""Retention: the sidecar's tables do not grow without end. Deletes server snapshots, delivered
notifications and alert receipts older than `settings.retention`; keeps everything an operator may
still need (findings and the snapshots they point to, recommendations, changes, trials and study
snapshots, undelivered messages and dead letters)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select

from slotune.settings import RetentionSettings
from slotune.store import AlertReceipt, Finding, OutboxMessage, Snapshot, Store

log = logging.getLogger("slotune.sidecar.retention")


def prune(store: Store, retention: RetentionSettings, now: float) -> dict[str, int]:
    """Delete what is past its retention, in one transaction; returns rows deleted per table."""
    at = datetime.fromtimestamp(now, tz=timezone.utc)
    with store.session() as s:
        referenced = select(Finding.snapshot_id).where(Finding.snapshot_id.is_not(None))
        snapshots = s.execute(delete(Snapshot).where(
            Snapshot.source == "server", Snapshot.study_name.is_(None),
            Snapshot.window_end < at - timedelta(days=retention.snapshot_days),
            Snapshot.id.not_in(referenced))).rowcount or 0
        delivered = s.execute(delete(OutboxMessage).where(
            OutboxMessage.delivered_at.is_not(None),
            OutboxMessage.delivered_at < at - timedelta(days=retention.delivered_days))).rowcount or 0
        receipts = s.execute(delete(AlertReceipt).where(
            AlertReceipt.created_at < at - timedelta(days=retention.alert_receipt_days))).rowcount or 0
    out = {"snapshots": snapshots, "delivered_messages": delivered, "alert_receipts": receipts}
    if any(out.values()):
        log.info("retention: deleted %s", ", ".join(f"{n} {what}" for what, n in out.items() if n))
    return out

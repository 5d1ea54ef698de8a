"""Retention on a real SQLite store: what is past its time goes, what an operator may still need
stays (findings' snapshots, study snapshots, undelivered messages and dead letters)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import func, select

from slotune.settings import RetentionSettings
from slotune.sidecar import retention
from slotune.store import AlertReceipt, Finding, OutboxMessage, Snapshot, open_store


def test_prune_deletes_only_what_is_past_retention(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    old, recent = now - timedelta(days=30), now - timedelta(days=1)

    def snap(end: datetime, **kw: object) -> Snapshot:
        return Snapshot(target="t", window_start=end, window_end=end, data={}, **kw)

    with store.session() as s:
        s.add_all([snap(old), snap(recent), snap(old, source="client", study_name="st")])
        kept_by_finding = snap(old)
        s.add(kept_by_finding)
        s.flush()
        s.add(Finding(target="t", playbook="p", severity="warning", snapshot_id=kept_by_finding.id, data={}))
        s.add_all([
            OutboxMessage(id="old-delivered", receiver="r", kind="k", payload={}, delivered_at=old, created_at=old),
            OutboxMessage(id="new-delivered", receiver="r", kind="k", payload={}, delivered_at=recent),
            OutboxMessage(id="old-pending", receiver="r", kind="k", payload={}, created_at=old, attempts=3),
            OutboxMessage(id="old-dead", receiver="r", kind="k", payload={}, created_at=old, attempts=999),
            AlertReceipt(key="old", created_at=old), AlertReceipt(key="new", created_at=recent)])
    out = retention.prune(store, RetentionSettings(), now.timestamp())
    assert out == {"snapshots": 1, "delivered_messages": 1, "alert_receipts": 1}
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Snapshot)) == 3
        assert set(s.scalars(select(OutboxMessage.id))) == {"new-delivered", "old-pending", "old-dead"}
        assert set(s.scalars(select(AlertReceipt.key))) == {"new"}
    assert retention.prune(store, RetentionSettings(), now.timestamp()) == \
        {"snapshots": 0, "delivered_messages": 0, "alert_receipts": 0}


def test_the_loop_prunes_on_its_schedule(tmp_path: Path) -> None:
    from tests.support.pages import UNDER, page
    from tests.support.sidecar import make

    sc, clock, _ = make(tmp_path, [page(UNDER)], retention={"snapshot_days": 1, "every_seconds": 3600})
    long_ago = datetime.fromtimestamp(clock() - 3 * 86400, tz=timezone.utc)
    with sc.store.session() as s:
        s.add(Snapshot(target="t", window_start=long_ago, window_end=long_ago, data={}))
    sc.step()
    with sc.store.session() as s:
        assert s.scalar(select(func.count()).select_from(Snapshot).where(Snapshot.window_end < long_ago
                                                                         + timedelta(seconds=1))) == 0

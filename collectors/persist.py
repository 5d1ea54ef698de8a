"""Snapshots into the store, so a diagnosis or a tuning trial can cite the window it read."""

from __future__ import annotations

from datetime import datetime, timezone

from slotune import store as db
from slotune.collectors.snapshot import Snapshot


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def save_snapshot(
    store: db.Store,
    snapshot: Snapshot,
    source: str = "server",
    study_name: str | None = None,
    trial_number: int | None = None,
) -> int:
    """Insert one snapshot (its `to_dict()` as `data`); returns its row id."""
    row = db.Snapshot(
        target=snapshot.target,
        source=source,
        window_start=_utc(snapshot.window_start),
        window_end=_utc(snapshot.window_end),
        study_name=study_name,
        trial_number=trial_number,
        data=snapshot.to_dict(),
    )
    with store.session() as session:
        session.add(row)
        session.flush()
        return row.id


def load_snapshot(store: db.Store, snapshot_id: int) -> Snapshot | None:
    """The snapshot saved under `snapshot_id`, or None."""
    with store.session() as session:
        row = session.get(db.Snapshot, snapshot_id)
        return None if row is None else Snapshot.from_dict(row.data)

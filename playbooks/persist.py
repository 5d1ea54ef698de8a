"""Findings into the store, each linked to the snapshot row it was judged on."""

from __future__ import annotations

from slotune import store as db
from slotune.playbooks.engine import Diagnosis


def save_findings(store: db.Store, diagnosis: Diagnosis, snapshot_id: int | None,
                  target: str | None = None) -> list[int]:
    """Insert one `slotune_findings` row per finding (its `to_dict()` as `data`); returns the row ids.
    A healthy or insufficient-data diagnosis stores nothing: the snapshot row is its record."""
    rows = [
        db.Finding(
            target=target or diagnosis.target or "",
            playbook=f.playbook,
            severity=f.severity,
            summary=f.summary,
            snapshot_id=snapshot_id,
            data=f.to_dict(),
        )
        for f in diagnosis.findings
    ]
    if not rows:
        return []
    with store.session() as session:
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]

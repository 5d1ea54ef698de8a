"""Typed SQLAlchemy 2.x models. JSON columns hold the typed payloads' `to_dict()` forms.

Table names carry the `slotune_` prefix so that Optuna's RDB tables (`studies`, `trials`,
`alembic_version`, ...) can live in the same database without colliding.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Row ids are INTEGER columns: PostgreSQL's int4 ends here (SQLite's at 2**63 - 1). The API refuses
# larger ids in its paths with 422 rather than handing the database a number it cannot compare.
MAX_ID = 2**31 - 1


class _State(str, Enum):
    """A row's state: stored as its plain text value (a String column), compared equal to that text."""

    def __str__(self) -> str:
        return str(self.value)


class FindingStatus(_State):
    """active -> acknowledged | silenced (by an operator) -> resolved (when the condition clears);
    a silence that expires makes the finding active again."""

    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    SILENCED = "silenced"
    RESOLVED = "resolved"


OPEN_FINDING = (FindingStatus.ACTIVE, FindingStatus.ACKNOWLEDGED, FindingStatus.SILENCED)


class RecommendationStatus(_State):
    """pending -> approved (an operator, or apply.auto) -> applied -> rolled_back (its canary failed);
    pending | approved -> rejected (it could not be applied)."""

    PENDING = "pending"
    APPROVED = "approved"
    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"


class TrialRowState(_State):
    """What a `slotune_trials` row records: a trial measured in full (complete), refused or missing
    an SLO by its constraints (infeasible), stopped early (pruned), or one interleaved
    re-measurement of a config for the verdict (remeasure). Rows are written once, never moved."""

    COMPLETE = "complete"
    INFEASIBLE = "infeasible"
    PRUNED = "pruned"
    REMEASURE = "remeasure"


class ChangeStatus(_State):
    """canary (the new config runs and is being judged) -> kept | rolled_back | failed (did not start)."""

    CANARY = "canary"
    KEPT = "kept"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Snapshot(Base):
    """One measured window of one target: server-side (scrape deltas) or client-side (load generator)."""

    __tablename__ = "slotune_snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(500), index=True)
    source: Mapped[str] = mapped_column(String(20), default="server")  # server | client
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    study_name: Mapped[str | None] = mapped_column(String(200), index=True)
    trial_number: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict[str, Any]]


class Finding(Base):
    """A playbook verdict on a window, with its evidence and remedies."""

    __tablename__ = "slotune_findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(500), index=True)
    playbook: Mapped[str] = mapped_column(String(100), index=True)
    severity: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=FindingStatus.ACTIVE.value, index=True)  # FindingStatus
    summary: Mapped[str] = mapped_column(Text, default="")
    snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("slotune_snapshots.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    silenced_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]]


class TrialRecord(Base):
    """What slotune knows of one tuning trial beyond Optuna's own row: config, measurements, log."""

    __tablename__ = "slotune_trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(200), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))  # a TrialRowState
    reason: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    findings: Mapped[list[Any]]
    log_path: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Recommendation(Base):
    """A config the controller recommends for a target (from a study or a playbook remedy)."""

    __tablename__ = "slotune_recommendations"

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(500), index=True)
    status: Mapped[str] = mapped_column(String(20), default=RecommendationStatus.PENDING.value)  # RecommendationStatus
    source: Mapped[str] = mapped_column(String(200), default="")  # study name or playbook id
    reason: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict[str, Any]]
    evidence: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ConfigChange(Base):
    """A config applied to a managed server, with before/after evidence and its outcome."""

    __tablename__ = "slotune_config_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(500), index=True)
    recommendation_id: Mapped[int | None] = mapped_column(ForeignKey("slotune_recommendations.id"))
    status: Mapped[str] = mapped_column(String(20))  # ChangeStatus
    from_config: Mapped[dict[str, Any]]
    to_config: Mapped[dict[str, Any]]
    before: Mapped[dict[str, Any]]
    after: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OutboxMessage(Base):
    """A notification to deliver at least once; `id` travels with it so receivers can de-duplicate."""

    __tablename__ = "slotune_outbox"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    receiver: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AlertReceipt(Base):
    """An Alertmanager alert already turned into a notification: its fingerprint, start time and
    status, hashed. A retried or repeated post of the same alert finds its receipt and is not sent
    again."""

    __tablename__ = "slotune_alert_receipts"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

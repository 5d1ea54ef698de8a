"""Request and response bodies. Reads return pages: `{items, total, limit, offset}`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
Label = str
_SHORT = 1024
_TEXT = 64 * 1024


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class _Row(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SnapshotOut(_Row):
    id: int
    target: str
    source: str
    window_start: datetime
    window_end: datetime
    study_name: str | None
    trial_number: int | None
    data: dict[str, Any]


class FindingOut(_Row):
    id: int
    target: str
    playbook: str
    severity: str
    status: str
    summary: str
    snapshot_id: int | None
    created_at: datetime
    updated_at: datetime
    silenced_until: datetime | None
    data: dict[str, Any]


class TrialOut(_Row):
    id: int
    study_name: str
    trial_number: int
    state: str
    reason: str
    params: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    findings: list[Any]
    log_path: str | None
    created_at: datetime


class RecommendationOut(_Row):
    id: int
    target: str
    status: str
    source: str
    reason: str
    config: dict[str, Any]
    evidence: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ChangeOut(_Row):
    id: int
    target: str
    recommendation_id: int | None
    status: str
    from_config: dict[str, Any]
    to_config: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    created_at: datetime
    decided_at: datetime | None


class OutboxOut(_Row):
    """A notification in the outbox (its rendered payload left out: ask the receiver)."""

    id: str
    receiver: str
    kind: str
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_error: str | None
    created_at: datetime


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    receiver: str | None = Field(default=None, max_length=200, description="only this receiver's (default: all)")


class RetryOut(BaseModel):
    requeued: int


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(default=3600, gt=0, le=90 * 86400, description="how long to silence the finding")


class ProposeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(description="VllmConfig fields to change, e.g. {\"max_num_seqs\": 64}",
                                   min_length=1, max_length=50)
    reason: str = Field(default="proposed through the API", max_length=_SHORT)


class StudyIn(BaseModel):
    """A bounded tuning study (see `slotune tune`): a workload or fixed lengths, and a trial budget."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=_SHORT)
    slo: str = Field(min_length=1, max_length=_SHORT)
    workload: str | None = Field(default=None, max_length=_SHORT)
    input_len: int | None = Field(default=None, ge=1, le=1_000_000)
    output_len: int | None = Field(default=None, ge=1, le=1_000_000)
    trials: int = Field(default=5, ge=1, le=50)
    timeout: float | None = Field(default=None, gt=0, le=86400)
    num_requests: int = Field(default=40, ge=1, le=10_000)
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    rate: float | None = Field(default=None, gt=0, le=10_000)
    study_name: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    served_model_name: str | None = Field(default=None, max_length=200)


# -- Alertmanager webhook (payload version 4) ---------------------------------------------------------

class AmAlert(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[Label, str] = Field(max_length=200)
    annotations: dict[Label, str] = Field(default_factory=dict, max_length=200)
    startsAt: str = Field(default="", max_length=100)
    endsAt: str = Field(default="", max_length=100)
    generatorURL: str = Field(default="", max_length=_TEXT)
    fingerprint: str = Field(default="", max_length=200)


class AlertmanagerPayload(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: Literal["4"]
    groupKey: str = Field(max_length=_TEXT)
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = Field(max_length=_SHORT)
    groupLabels: dict[Label, str] = Field(default_factory=dict, max_length=200)
    commonLabels: dict[Label, str] = Field(default_factory=dict, max_length=200)
    commonAnnotations: dict[Label, str] = Field(default_factory=dict, max_length=200)
    externalURL: str = Field(default="", max_length=_TEXT)
    alerts: list[AmAlert] = Field(min_length=1, max_length=1000)


class AlertsAccepted(BaseModel):
    accepted: int
    firing: int
    notifications: list[str]
    duplicates: int = Field(description="alerts already notified (same fingerprint, startsAt and status)")
    diagnosis_status: str | None

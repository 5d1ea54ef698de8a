"""Read and write endpoints over the store, plus the Alertmanager webhook."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from slotune.api import schemas
from slotune.api.auth import require_alert, require_read, require_write
from slotune.api.service import SidecarService
from slotune.errors import ConfigError, SlotuneError
from slotune.store import (
    MAX_ID,
    ConfigChange,
    Finding,
    FindingStatus,
    OutboxMessage,
    Recommendation,
    RecommendationStatus,
    Snapshot,
    TrialRecord,
)

reads = APIRouter(prefix="/api/v1", dependencies=[Depends(require_read)], tags=["read"])
writes = APIRouter(prefix="/api/v1", dependencies=[Depends(require_write)], tags=["write"])
alerts = APIRouter(prefix="/api/v1", dependencies=[Depends(require_alert)], tags=["alerts"])

M = TypeVar("M")
# Annotated types, not shared Query() defaults: a Query object shared by two parameters is bound
# to the first one's name.
Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip")]
# No NUL byte: PostgreSQL cannot hold one in text, so a filter with one can match nothing.
NO_NUL = r"^[^\x00]*$"
Filter = Annotated[str | None, Query(max_length=500, pattern=NO_NUL)]
# Typed, so `?status=bogus` is a 422 naming the states rather than an empty 200.
FindingStatusFilter = Annotated[FindingStatus | None, Query(alias="status")]
RecommendationStatusFilter = Annotated[RecommendationStatus | None, Query(alias="status")]


def _row_id(what: str) -> Any:
    return Path(ge=1, le=MAX_ID, description=f"the {what}'s id (1 to {MAX_ID})")


SnapshotId = Annotated[int, _row_id("snapshot")]
FindingId = Annotated[int, _row_id("finding")]
RecommendationId = Annotated[int, _row_id("recommendation")]


def service(request: Request) -> SidecarService:
    return request.app.state.service  # type: ignore[no-any-return]


Svc = Annotated[SidecarService, Depends(service)]


def _page(svc: SidecarService, model: Any, out: type[Any], limit: int, offset: int,
          **filters: str | None) -> dict[str, Any]:
    """One page of `model`'s rows, newest first; each filter is a column that must equal the value
    given (None: not filtered)."""
    query = select(model)
    for column, value in filters.items():
        if value:
            query = query.where(getattr(model, column) == value)
    with svc.store.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(model.id.desc()).limit(limit).offset(offset)).all()
        return {"items": [out.model_validate(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def _get(session: Session, model: type[M], row_id: int, what: str) -> M:
    row = session.get(model, row_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {what} with id {row_id}")
    return row


# -- reads ------------------------------------------------------------------------------------------------

@reads.get("/status", summary="What the sidecar watches and how it is doing")
def get_status(svc: Svc) -> dict[str, Any]:
    return svc.status()


@reads.get("/diagnosis", summary="The last tick's diagnosis of the target (`as_of`: when); never scrapes")
def get_diagnosis(svc: Svc) -> dict[str, Any]:
    return svc.diagnosis()


@reads.get("/snapshots", response_model=schemas.Page[schemas.SnapshotOut])
def list_snapshots(svc: Svc, target: Filter = None, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return _page(svc, Snapshot, schemas.SnapshotOut, limit, offset, target=target)


@reads.get("/snapshots/{snapshot_id}", response_model=schemas.SnapshotOut)
def get_snapshot(snapshot_id: SnapshotId, svc: Svc) -> Any:
    with svc.store.session() as s:
        return schemas.SnapshotOut.model_validate(_get(s, Snapshot, snapshot_id, "snapshot"))


@reads.get("/findings", response_model=schemas.Page[schemas.FindingOut])
def list_findings(svc: Svc, status_: FindingStatusFilter = None,
                  playbook: Filter = None, target: Filter = None, limit: Limit = 50,
                  offset: Offset = 0) -> dict[str, Any]:
    return _page(svc, Finding, schemas.FindingOut, limit, offset, status=status_, playbook=playbook, target=target)


@reads.get("/findings/{finding_id}", response_model=schemas.FindingOut)
def get_finding(finding_id: FindingId, svc: Svc) -> Any:
    with svc.store.session() as s:
        return schemas.FindingOut.model_validate(_get(s, Finding, finding_id, "finding"))


@reads.get("/studies", summary="Tuning studies: the ones this sidecar ran and every one with trials stored")
def list_studies(svc: Svc) -> dict[str, Any]:
    items = svc.studies.list()
    return {"items": items, "total": len(items), "limit": len(items), "offset": 0}


@reads.get("/trials", response_model=schemas.Page[schemas.TrialOut])
def list_trials(svc: Svc, study: Filter = None, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return _page(svc, TrialRecord, schemas.TrialOut, limit, offset, study_name=study)


@reads.get("/recommendations", response_model=schemas.Page[schemas.RecommendationOut])
def list_recommendations(svc: Svc, status_: RecommendationStatusFilter = None,
                         limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return _page(svc, Recommendation, schemas.RecommendationOut, limit, offset, status=status_)


@reads.get("/recommendations/{recommendation_id}", response_model=schemas.RecommendationOut)
def get_recommendation(recommendation_id: RecommendationId, svc: Svc) -> Any:
    with svc.store.session() as s:
        return schemas.RecommendationOut.model_validate(_get(s, Recommendation, recommendation_id, "recommendation"))


@reads.get("/changes", response_model=schemas.Page[schemas.ChangeOut], summary="Applied configs, with evidence")
def list_changes(svc: Svc, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return _page(svc, ConfigChange, schemas.ChangeOut, limit, offset)


@reads.get("/outbox/dead", response_model=schemas.Page[schemas.OutboxOut],
           summary="Dead letters: notifications given up after outbox.max_attempts, kept for a retry")
def list_dead_letters(svc: Svc, receiver: Filter = None, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    query = select(OutboxMessage).where(OutboxMessage.delivered_at.is_(None),
                                        OutboxMessage.attempts >= svc.settings.outbox.max_attempts)
    if receiver:
        query = query.where(OutboxMessage.receiver == receiver)
    with svc.store.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(OutboxMessage.created_at.desc()).limit(limit).offset(offset)).all()
        return {"items": [schemas.OutboxOut.model_validate(r) for r in rows], "total": total, "limit": limit,
                "offset": offset}


# -- writes -----------------------------------------------------------------------------------------------

@writes.post("/findings/{finding_id}/acknowledge", response_model=schemas.FindingOut)
def acknowledge(finding_id: FindingId, svc: Svc) -> Any:
    with svc.store.session() as s:
        row = _get(s, Finding, finding_id, "finding")
        if row.status == FindingStatus.RESOLVED:
            raise HTTPException(status.HTTP_409_CONFLICT, f"finding {finding_id} is resolved")
        row.status = FindingStatus.ACKNOWLEDGED
        row.updated_at = datetime.now(timezone.utc)
        s.flush()
        return schemas.FindingOut.model_validate(row)


@writes.post("/findings/{finding_id}/silence", response_model=schemas.FindingOut)
def silence(finding_id: FindingId, body: schemas.SilenceIn, svc: Svc) -> Any:
    with svc.store.session() as s:
        row = _get(s, Finding, finding_id, "finding")
        if row.status == FindingStatus.RESOLVED:
            raise HTTPException(status.HTTP_409_CONFLICT, f"finding {finding_id} is resolved")
        now = datetime.now(timezone.utc)
        row.status, row.silenced_until, row.updated_at = FindingStatus.SILENCED, now + timedelta(seconds=body.seconds), now
        s.flush()
        return schemas.FindingOut.model_validate(row)


@writes.post("/recommendations", response_model=schemas.RecommendationOut, status_code=201,
             summary="Propose a config (a delta on the current one); it waits for approval")
def propose(body: schemas.ProposeIn, svc: Svc) -> Any:
    try:
        rec_id = svc.propose(body.config, body.reason)
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from None
    with svc.store.session() as s:
        return schemas.RecommendationOut.model_validate(_get(s, Recommendation, rec_id, "recommendation"))


@writes.post("/recommendations/{recommendation_id}/approve", summary="Approve; apply mode then applies it")
def approve(recommendation_id: RecommendationId, svc: Svc) -> dict[str, Any]:
    try:
        out = svc.approve(recommendation_id)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if out is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no recommendation with id {recommendation_id}")
    return out


@writes.post("/outbox/retry", response_model=schemas.RetryOut,
             summary="Queue dead letters again (of one receiver, or all), due now")
def retry_dead_letters(svc: Svc, body: schemas.RetryIn | None = None) -> dict[str, Any]:
    return {"requeued": svc.retry_dead(body.receiver if body else None)}


@writes.post("/studies", status_code=202, summary="Start a bounded tuning study in the background")
def start_study(body: schemas.StudyIn, svc: Svc) -> dict[str, Any]:
    try:
        return svc.start_study(body.model_dump(exclude_none=True))
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from None
    except SlotuneError as exc:  # a study already running
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


# -- Alertmanager webhook ------------------------------------------------------------------------------------

@alerts.post("/alerts/alertmanager", response_model=schemas.AlertsAccepted, status_code=202,
             summary="Alertmanager webhook (payload v4): one notification per receiver for the whole group, "
                     "with a fresh diagnosis when an alert fires",
             responses={401: {"description": "no or wrong alert_token"},
                        413: {"description": "more alerts than max_alerts_per_request, or a body over "
                                             "max_alert_bytes"}})
def alertmanager(payload: schemas.AlertmanagerPayload, svc: Svc) -> dict[str, Any]:
    limit = svc.settings.max_alerts_per_request
    if len(payload.alerts) > limit:
        raise HTTPException(413,
                            f"{len(payload.alerts)} alerts in one request, over the limit of {limit} "
                            "(max_alerts_per_request; set max_alerts in Alertmanager's webhook_config)")
    firing = [a for a in payload.alerts if a.status == "firing"]
    diagnosis = svc.diagnosis() if firing else None
    # One notification per receiver for the request, as Alertmanager groups: the group's alerts travel together.
    event = {"status": payload.status, "group_key": payload.groupKey, "receiver": payload.receiver,
             "group_labels": payload.groupLabels, "common_labels": payload.commonLabels,
             "common_annotations": payload.commonAnnotations, "external_url": payload.externalURL,
             "truncated_alerts": payload.truncatedAlerts,
             "alerts": [a.model_dump() for a in payload.alerts], "diagnosis": diagnosis}
    # An alert already notified (same fingerprint, start and status: Alertmanager retrying a post, or
    # repeating a group) is not sent again; the receipts and the notification commit together.
    keys = [hashlib.sha256(f"{a.fingerprint}|{a.startsAt}|{a.status}".encode()).hexdigest() if a.fingerprint
            else None for a in payload.alerts]
    ids, duplicates = svc.notify_alerts(event, keys)
    return {"accepted": len(payload.alerts), "firing": len(firing), "notifications": ids, "duplicates": duplicates,
            "diagnosis_status": None if diagnosis is None else str(diagnosis.get("status"))}

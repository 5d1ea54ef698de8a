"""The control loop, one tick at a time (kopf/Optuna spirit: a small reconcile step, driven from
outside). `Controller.tick()` does: scrape → window vs the previous scrape → SLO figures →
playbooks over the last N windows → persist snapshot and findings → metrics → notify → act on the
mode (recommend: publish a recommended config; apply: hand over to the `Applier`).

The clock and the scrape function are injected, so tests drive ticks without sleeping. A target
that is down or slow is a finding of the sidecar's own (`target_down`), never an exception out of
`tick()`; so is one that answers without vLLM's stats (`no_vllm_stats`: it is up, there is only
nothing to measure) and an SLO whose error budget burns faster than allowed (`slo_burn`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from slotune.collectors.exposition import Scrape
from slotune.collectors.snapshot import Snapshot
from slotune.collectors.vllm_metrics import derive
from slotune.collectors.vllm_metrics import scrape as scrape_page
from slotune.errors import NoStatsError, SlotuneError
from slotune.playbooks.relations import apply_to_dicts
from slotune.settings import Settings
from slotune.sidecar import outbox
from slotune.sidecar.config import slo_of
from slotune.sidecar.metrics import SidecarMetrics
from slotune.sidecar.windows import Rolling, SloFigure, Window, slo_figures
from slotune.slo import SloSpec
from slotune.store import OPEN_FINDING, Finding, FindingStatus, Recommendation, RecommendationStatus, Store
from slotune.store import Snapshot as SnapshotRow
from slotune.vllm_config import VllmConfig

log = logging.getLogger("slotune.sidecar")

TARGET_DOWN = "target_down"
NO_STATS = "no_vllm_stats"
SLO_BURN = "slo_burn"
FAST_BURN = 14.4  # SRE workbook's page threshold; above it an slo_burn finding is critical


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _aware(dt: datetime | None) -> datetime | None:
    return None if dt is None else (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc))


@dataclass
class TickResult:
    ok: bool  # the scrape succeeded
    window: Window | None = None
    diagnosis: dict[str, Any] | None = None
    new_findings: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    recommendations: list[int] = field(default_factory=list)
    error: str | None = None


def load_playbooks(files: list[Any]) -> list[Any] | None:
    """The built-in playbooks plus the settings' files, parsed once (a bad file is a ConfigError at
    start); None when the playbooks package is not there."""
    try:
        from slotune.playbooks.model import load_playbooks as load
    except ImportError as exc:
        log.warning("playbooks not available: %s", exc)
        return None
    return list(load([str(f) for f in files]))


def run_diagnose(windows: list[Snapshot], slo: SloSpec, config: VllmConfig | None,
                 playbooks: list[Any] | None, backend: str | None = None) -> dict[str, Any] | None:
    """The playbooks' verdict over the windows; None when the engine is missing or failed (logged)."""
    if not windows or playbooks is None:
        return None
    try:
        from slotune.playbooks.engine import diagnose
    except ImportError as exc:
        log.warning("playbooks engine not available: %s", exc)
        return None
    try:
        return diagnose(windows, slo=slo, server_config=config, playbooks=playbooks, backend=backend).to_dict()
    except SlotuneError as exc:
        log.warning("diagnosis failed: %s", exc)
        return None


class Controller:
    """One target's loop state. Thread-safe: `tick()` and the API's `fresh_diagnosis()` share a lock."""

    def __init__(self, settings: Settings, store: Store, metrics: SidecarMetrics, *,
                 target: str | None = None, clock: Callable[[], float] = time.time,
                 scrape: Callable[[str], Scrape] | None = None,
                 config: Callable[[], VllmConfig | None] = lambda: None) -> None:
        self.settings, self.store, self.metrics = settings, store, metrics
        self.slo = slo_of(settings)
        self.target = target or settings.target or ""
        self.clock = clock
        self._client = httpx.Client()
        self.scrape = scrape or (lambda url: scrape_page(url, self._client, settings.scrape_timeout))
        self.current_config = config
        self.playbooks = load_playbooks(list(settings.playbook_files))  # parsed once, not per tick
        self.rolling = Rolling(settings.windows)
        self.previous: Scrape | None = None
        self.failures = 0  # scrapes in a row the target did not answer (or answered garbage)
        self.statless = 0  # answers in a row that carried no vLLM stats
        self.last_diagnosis: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.ticks = 0
        self.last_tick_at: float | None = None  # clock time of the last tick
        self.last_diagnosis_at: float | None = None  # ... and of the last tick that diagnosed
        self.scrape_started: float | None = None  # monotonic time a scrape in progress began
        self.lock = threading.RLock()

    # -- one tick -------------------------------------------------------------------------------------

    def tick(self) -> TickResult:
        # The scrape runs outside the lock: the API's reads (status, the last diagnosis) never wait on
        # a slow target. It is bounded (scrape_timeout in all, MAX_PAGE_BYTES) by the scrape function.
        now = self.clock()
        self.scrape_started = time.monotonic()
        started = time.perf_counter()
        statless = False
        try:
            after: Scrape | None = self.scrape(self.target)
            error = None
        except NoStatsError as exc:  # it answered: up, with nothing to measure
            after, error, statless = None, str(exc), True
        except SlotuneError as exc:  # TargetError, or a ConfigError for a garbage page
            after, error = None, str(exc)
        finally:
            self.scrape_started = None
        seconds = time.perf_counter() - started
        with self.lock:
            self.ticks += 1
            self.last_tick_at = now
            self.metrics.last_tick.set(now)
            self.metrics.scrapes.labels(self.target).inc()
            if statless:
                return self._no_stats(error or "no vLLM stats", now)
            if after is None:
                return self._scrape_failed(error or "scrape failed", now)
            self.metrics.scrape_seconds.labels(self.target).observe(seconds)
            self.metrics.target_up.labels(self.target).set(1)
            result = TickResult(ok=True)
            # a target_down or no_vllm_stats may be open (from before a restart, too)
            if self.failures or self.statless or self.ticks == 1:
                with self.store.session() as s:
                    result.resolved += self._resolve(s, TARGET_DOWN, now) + self._resolve(s, NO_STATS, now)
            self.failures, self.statless, self.last_error = 0, 0, None
            before, self.previous = self.previous, after
            if before is None:
                return result  # the first scrape only sets the base of the first window
            snap = derive(before, after, self.target)
            figures = tuple(slo_figures(self.slo, before, after, snap))
            with self.store.session() as s:
                row = SnapshotRow(target=self.target, source="server", window_start=_utc(snap.window_start),
                                  window_end=_utc(snap.window_end),
                                  data={**snap.to_dict(), "slo": [f.to_dict() for f in figures]})
                s.add(row)
                s.flush()
                window = Window(snap, figures, row.id)
            self.rolling.append(window)
            result.window = window
            self.metrics.observe_window(self.target, figures)
            diagnosis = run_diagnose(self.rolling.snapshots(), self.slo, self.current_config(), self.playbooks,
                                     self.settings.backend)
            self.last_diagnosis, self.last_diagnosis_at = diagnosis, now
            result.diagnosis = diagnosis
            found = list((diagnosis or {}).get("findings", []))
            burn = self._burn_finding(window)
            if burn is not None:
                found.append(burn)
            # The engine settled its own findings; a burn may now settle some (underused). A burn in
            # any of the rolling windows counts: one short tick between two waves of a load that burns
            # the SLO can meet it, and "offer more load" there would feed the burn.
            if burn is not None or any(self._burn_finding(w) for w in self.rolling.last()):
                marker = {"playbook": SLO_BURN} if burn is None else None
                found, _ = apply_to_dicts(found + ([marker] if marker else []))
                found = [f for f in found if f is not marker]
            with self.store.session() as s:
                new, resolved = self._reconcile(s, found, window.snapshot_id, now,
                                                playbooks_ran=diagnosis is not None)
                result.new_findings += new
                result.resolved += resolved
                if self.settings.mode in ("recommend", "apply"):
                    result.recommendations += self._recommend(s, now)
                self._finding_metrics(s)
            return result

    def _no_stats(self, cause: str, now: float) -> TickResult:
        """The target answered a page without vLLM's stats: it is up (an open `target_down` ends), and
        after `down_after` such answers in a row a warning `no_vllm_stats` names the cause. No window."""
        self.metrics.target_up.labels(self.target).set(1)
        self.failures, self.last_error = 0, cause
        self.statless += 1
        self.previous = None  # nothing to difference against; the first page with stats is the new base
        log.warning("target answers without vLLM stats (%d in a row): %s", self.statless, cause)
        result = TickResult(ok=True, error=cause)
        with self.store.session() as s:
            result.resolved += self._resolve(s, TARGET_DOWN, now)
            if self.statless >= self.settings.down_after:
                finding = self._streak_finding(
                    NO_STATS, "warning", f"target {self.target} answers its /metrics but exports no vLLM stats "
                    f"({self.statless} scrapes in a row): {cause}", "consecutive_scrapes_without_stats",
                    self.statless, cause, now)
                new, _ = self._reconcile(s, [finding], None, now, only=NO_STATS)
                result.new_findings += new
            self._finding_metrics(s)
        return result

    def _streak_finding(self, playbook: str, severity: str, summary: str, field: str, streak: int, cause: str,
                        now: float) -> dict[str, Any]:
        """The sidecar's own finding after `down_after` scrapes in a row went one way (no answer, no
        stats): evidence is the streak against `down_after`, the window the instant of this tick."""
        return {"playbook": playbook, "severity": severity, "summary": summary,
                "evidence": [{"field": field, "value": float(streak), "op": ">=",
                              "threshold": float(self.settings.down_after), "description": cause}],
                "window": {"start": now, "end": now, "seconds": 0.0}, "remedies": []}

    def _scrape_failed(self, error: str, now: float) -> TickResult:
        self.failures += 1
        self.statless = 0
        self.last_error = error
        self.metrics.scrape_errors.labels(self.target).inc()
        self.metrics.target_up.labels(self.target).set(0)
        self.previous = None  # the next good scrape starts a fresh base (the server may have restarted)
        log.warning("scrape failed (%d in a row): %s", self.failures, error)
        result = TickResult(ok=False, error=error)
        if self.failures >= self.settings.down_after:
            finding = self._streak_finding(
                TARGET_DOWN, "critical", f"target {self.target} did not answer {self.failures} scrapes in a row: {error}",
                "consecutive_scrape_failures", self.failures, error, now)
            with self.store.session() as s:
                new, _ = self._reconcile(s, [finding], None, now, only=TARGET_DOWN)
                result.resolved += self._resolve(s, NO_STATS, now)  # it no longer answers at all
                self._finding_metrics(s)
            result.new_findings += new
        return result

    def _burn_finding(self, window: Window) -> dict[str, Any] | None:
        """The sidecar's own SLO finding: some target's error budget burns faster than allowed."""
        burning = [f for f in window.figures if f.burn is not None and f.burn > 1.0]
        if not burning:
            return None
        worst = max(f.burn or 0.0 for f in burning)
        return {"playbook": SLO_BURN, "severity": "critical" if worst >= FAST_BURN else "warning",
                "summary": "error budget burning: " + ", ".join(
                    f"{f.target} burn {f.burn:.1f}x ({f.bad:g}/{f.total:g} requests over)" for f in burning),
                "evidence": [_burn_evidence(f) for f in burning],
                "window": {"start": window.snapshot.window_start, "end": window.snapshot.window_end,
                           "seconds": window.snapshot.window_seconds},
                "remedies": []}

    # -- findings -------------------------------------------------------------------------------------

    def _open(self, s: Session) -> dict[str, Finding]:
        rows = s.scalars(select(Finding).where(Finding.target == self.target, Finding.status.in_(OPEN_FINDING))).all()
        return {r.playbook: r for r in rows}

    def _reconcile(self, s: Session, found: list[dict[str, Any]], snapshot_id: int | None, now: float, *,
                   only: str | None = None, playbooks_ran: bool = True) -> tuple[list[str], list[str]]:
        """Open new findings, refresh the ones still there, resolve the ones gone. Returns the
        playbooks newly opened (notified) and resolved."""
        open_rows = self._open(s)
        new: list[str] = []
        seen = set()
        for f in found:
            pb = str(f.get("playbook"))
            seen.add(pb)
            row = open_rows.get(pb)
            if row is None:
                row = Finding(target=self.target, playbook=pb, severity=str(f.get("severity", "warning")),
                              status=FindingStatus.ACTIVE, summary=str(f.get("summary", "")), snapshot_id=snapshot_id,
                              created_at=_utc(now), updated_at=_utc(now), data={**f, "windows_seen": 1})
                s.add(row)
                s.flush()
                new.append(pb)
                self._notify(s, "finding", _finding_event(row), now)
                continue
            row.data = {**f, "windows_seen": int(row.data.get("windows_seen", 1)) + 1}
            row.severity, row.summary, row.updated_at = str(f.get("severity", row.severity)), str(
                f.get("summary", row.summary)), _utc(now)
            row.snapshot_id = snapshot_id or row.snapshot_id
            until = _aware(row.silenced_until)
            if row.status == FindingStatus.SILENCED and until is not None and until.timestamp() <= now:
                row.status = FindingStatus.ACTIVE
        resolved: list[str] = []
        for pb, row in open_rows.items():
            if pb in seen or (only is not None and pb != only):
                continue
            if not playbooks_ran and pb not in (TARGET_DOWN, NO_STATS, SLO_BURN):
                continue  # no verdict this tick: keep the playbooks' findings as they were
            resolved += self._resolve_row(s, row, now)
        return new, resolved

    def _resolve(self, s: Session, playbook: str, now: float) -> list[str]:
        row = self._open(s).get(playbook)
        return [] if row is None else self._resolve_row(s, row, now)

    def _resolve_row(self, s: Session, row: Finding, now: float) -> list[str]:
        row.status, row.updated_at = FindingStatus.RESOLVED, _utc(now)
        self._notify(s, "finding", _finding_event(row), now)
        return [row.playbook]

    def _finding_metrics(self, s: Session) -> None:
        counts: dict[tuple[str, str], int] = {}
        s.flush()
        for r in s.scalars(select(Finding).where(Finding.target == self.target, Finding.status == FindingStatus.ACTIVE)):
            counts[(r.playbook, r.severity)] = counts.get((r.playbook, r.severity), 0) + 1
        self.metrics.set_findings(self.target, counts)

    def _notify(self, s: Session, kind: str, event: dict[str, Any], now: float) -> list[str]:
        return outbox.enqueue(s, self.settings, kind, event, now)

    # -- recommend ------------------------------------------------------------------------------------

    def _recommend(self, s: Session, now: float) -> list[int]:
        """For each finding that lasted `persist_windows` windows and names a config remedy: one
        pending recommendation (the remedy's delta on the current config), unless one is open."""
        out = []
        current = self.current_config()
        for pb, row in self._open(s).items():
            if row.status != FindingStatus.ACTIVE or int(row.data.get("windows_seen", 1)) < self.settings.persist_windows:
                continue
            remedy = next((r for r in row.data.get("remedies", []) if r.get("config_delta")), None)
            if remedy is None:
                continue
            exists = s.scalar(select(Recommendation.id).where(
                Recommendation.target == self.target, Recommendation.source == pb,
                Recommendation.status.in_((RecommendationStatus.PENDING, RecommendationStatus.APPROVED))))
            if exists is not None:
                continue
            delta = dict(remedy["config_delta"])
            try:
                config = (current.with_changes(**delta).model_dump(mode="json", exclude_none=True)
                          if current is not None else delta)
            except SlotuneError as exc:
                log.warning("remedy %s of %s does not apply to the current config: %s", remedy, pb, exc)
                continue
            rec = Recommendation(target=self.target, status=RecommendationStatus.PENDING, source=pb,
                                 reason=f"{remedy.get('action')}: {remedy.get('why', '')}", config=config,
                                 evidence={"finding_id": row.id, "finding": row.data, "config_delta": delta,
                                           "base_config": None if current is None else
                                           current.model_dump(mode="json", exclude_none=True)},
                                 created_at=_utc(now), updated_at=_utc(now))
            s.add(rec)
            s.flush()
            self.metrics.recommendations.labels(self.target, pb).inc()
            self._notify(s, "recommendation", recommendation_event(rec), now)
            out.append(rec.id)
        return out

    # -- API helpers ----------------------------------------------------------------------------------

    def fresh_diagnosis(self) -> dict[str, Any]:
        """The last tick's diagnosis, with when it was made (`as_of`, unix seconds). No scrape: an
        API read (unauthenticated by default) never makes the sidecar scrape vLLM. Never raises: a
        target down at the last tick is reported as such."""
        with self.lock:
            last = self.rolling.last(1)
            slo = [f.to_dict() for f in last[0].figures] if last else []
            if self.failures or self.statless:
                return {"status": "target_down" if self.failures else NO_STATS, "target": self.target,
                        "error": self.last_error, "findings": [], "as_of": self.last_tick_at, "slo": slo}
            diagnosis = self.last_diagnosis
            if diagnosis is None:
                diagnosis = {"status": "insufficient_data" if not len(self.rolling) else "unavailable",
                             "findings": []}
            return {**diagnosis, "target": self.target, "slo": slo, "as_of": self.last_diagnosis_at}

    def reset_base(self) -> None:
        """After a restart of the target: forget the previous scrape and the old config's windows."""
        with self.lock:
            self.previous = None
            self.rolling.clear()

    def close(self) -> None:
        self._client.close()


def _burn_evidence(f: SloFigure) -> dict[str, Any]:
    return {"field": f"{f.key}_burn", "value": f.burn, "op": ">", "threshold": 1.0,
            "description": f"{f.target}: {f.bad:g} of {f.total:g} requests over the threshold "
                           f"(budget {f.budget:.2%})"}


def _finding_event(row: Finding) -> dict[str, Any]:
    return {"id": row.id, "target": row.target, "playbook": row.playbook, "severity": row.severity,
            "status": row.status, "summary": row.summary,
            "evidence": row.data.get("evidence", []), "remedies": row.data.get("remedies", []),
            "window": row.data.get("window")}


def recommendation_event(rec: Recommendation) -> dict[str, Any]:
    return {"id": rec.id, "target": rec.target, "status": rec.status, "source": rec.source,
            "reason": rec.reason, "config": rec.config}

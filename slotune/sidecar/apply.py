"""Apply mode: change the config of a server slotune manages, watch the change as a canary, and roll
back automatically when SLO attainment got worse.

Rules: one change in flight at a time; a cool-down between changes; every change is a
`ConfigChange` row with the config before and after and the attainment evidence before (the last
`baseline_windows` windows of the old config) and after (the canary windows). Attainment is
`windows.attainment(...).score`: per SLO target, the share of the windows' requests that met the
threshold; the worst target's share. A change is rolled back when the canary's score is lower than
the baseline's by more than `tolerance`, or when the new config does not start, or when the canary
could not observe the new config serving traffic (its server died or is not the one scraped, its
scrapes fail, or no request finished on it): a canary keeps only what it saw working.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from slotune.errors import SlotuneError
from slotune.server import ManagedServer, StartResult
from slotune.settings import Settings
from slotune.sidecar import outbox
from slotune.sidecar.loop import Controller
from slotune.sidecar.metrics import SidecarMetrics
from slotune.sidecar.windows import attainment
from slotune.slo import SloSpec
from slotune.store import ChangeStatus, ConfigChange, Recommendation, RecommendationStatus, Store
from slotune.vllm_config import VllmConfig, check_tuning_only

log = logging.getLogger("slotune.sidecar.apply")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def config_dict(cfg: VllmConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=True)


class ManagedTarget:
    """The managed vLLM: started from a config, restarted with another on the same port."""

    def __init__(self, config: VllmConfig, log_dir: Path, startup_timeout: float, slo: SloSpec | None = None) -> None:
        self.config, self.log_dir, self.startup_timeout = config, log_dir, startup_timeout
        self.slo = slo  # its thresholds become bucket bounds of every server started here
        self.server: ManagedServer | None = None
        self.port: int | None = None
        self.lock = threading.Lock()

    def start(self, config: VllmConfig | None = None) -> StartResult:
        with self.lock:
            if self.server is not None:
                self.server.stop()
            cfg = config or self.config
            self.server = ManagedServer(cfg, log_dir=self.log_dir, startup_timeout=self.startup_timeout,
                                        port=self.port, slo=self.slo)
            result = self.server.start()
            self.port = self.server.port
            self.config = cfg
            return result

    @property
    def base_url(self) -> str:
        assert self.server is not None, "managed server not started"
        return self.server.base_url

    def serving(self) -> tuple[str | None, bool]:
        """(the URL the server listens on, whether its process still runs); (None, True) before a start."""
        with self.lock:
            if self.server is None:
                return None, True
            return self.server.base_url, self.server.is_running()

    def stop(self) -> None:
        with self.lock:
            if self.server is not None:
                self.server.stop()


class Applier:
    def __init__(self, settings: Settings, store: Store, metrics: SidecarMetrics, controller: Controller,
                 managed: ManagedTarget, *, clock: Callable[[], float]) -> None:
        self.settings, self.store, self.metrics = settings, store, metrics
        self.controller, self.managed, self.clock = controller, managed, clock
        self.canary_started: float | None = None

    # -- the step the loop runs after each tick --------------------------------------------------------

    def step(self) -> str | None:
        """Decide a canary that is due, or start the next approved change. Returns what happened.
        Restarts happen outside any database transaction (they take tens of seconds)."""
        now = self.clock()
        with self.store.session() as s:
            change_id = s.scalar(select(ConfigChange.id).where(ConfigChange.target == self.controller.target,
                                                               ConfigChange.status == ChangeStatus.CANARY))
            if change_id is None:
                if not self._cooled_down(s, now):
                    return None
                statuses = ((RecommendationStatus.APPROVED, RecommendationStatus.PENDING) if self.settings.apply.auto
                            else (RecommendationStatus.APPROVED,))
                rec_id = s.scalar(select(Recommendation.id).where(Recommendation.target == self.controller.target,
                                                                  Recommendation.status.in_(statuses))
                                  .order_by(Recommendation.updated_at, Recommendation.id))
        if change_id is not None:
            return self._judge(change_id, now)
        return None if rec_id is None else self._apply(rec_id, now)

    def _cooled_down(self, s: Session, now: float) -> bool:
        last = s.scalar(select(ConfigChange.decided_at).where(ConfigChange.target == self.controller.target,
                                                              ConfigChange.decided_at.is_not(None))
                        .order_by(ConfigChange.decided_at.desc()))
        if last is None:
            return True
        last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
        return now - last.timestamp() >= self.settings.apply.cooldown_seconds

    def _apply(self, rec_id: int, now: float) -> str:
        old = self.managed.config
        with self.store.session() as s:
            rec = s.get(Recommendation, rec_id)
            assert rec is not None
            try:
                check_tuning_only(old, rec.config, source=f"recommendation {rec.id}")
                new = VllmConfig.from_mapping({**config_dict(old), **rec.config}, source=f"recommendation {rec.id}")
            except SlotuneError as exc:
                rec.status, rec.reason = RecommendationStatus.REJECTED, f"{rec.reason} [rejected: {exc}]"
                return RecommendationStatus.REJECTED
            before = attainment(self.controller.rolling.last(self.settings.apply.baseline_windows))
            change = ConfigChange(target=self.controller.target, recommendation_id=rec.id, status=ChangeStatus.CANARY,
                                  from_config=config_dict(old), to_config=config_dict(new),
                                  before=before.to_dict(), after={}, created_at=_utc(now))
            s.add(change)
            rec.status = RecommendationStatus.APPLIED
            s.flush()
            change_id = change.id
        log.info("applying recommendation %d to %s: %s", rec_id, self.controller.target, new.serve_command())
        result = self.managed.start(new)
        self.controller.reset_base()
        if not result.ok:
            failed = {"start": result.status.value, "message": result.message, "log_lines": list(result.log_lines)}
            self._rollback(change_id, f"new config did not start: {result.status.value}", ChangeStatus.FAILED, failed)
            return ChangeStatus.FAILED
        self.canary_started = self.clock()
        with self.store.session() as s:
            change = s.get(ConfigChange, change_id)
            assert change is not None
            self.metrics.set_applied(self.controller.target, change.id, change.to_config, self.clock())
            outbox.enqueue(s, self.settings, "config_change", change_event(change), self.clock())
        return ChangeStatus.CANARY

    def _judge(self, change_id: int, now: float) -> str | None:
        cfg = self.settings.apply
        with self.store.session() as s:
            change = s.get(ConfigChange, change_id)
            assert change is not None
            created = change.created_at if change.created_at.tzinfo else change.created_at.replace(tzinfo=timezone.utc)
            start = self.canary_started or created.timestamp()
            elapsed = now - start
            if elapsed < cfg.canary_seconds:
                return None
            after = attainment(self.controller.rolling.last())
            unseen = self._not_observed(after.requests)
            if unseen is None and after.requests < cfg.min_requests and elapsed < 3 * cfg.canary_seconds:
                return None  # too little traffic to judge yet: watch longer
            before_score = (change.before or {}).get("score")
            worse = after.score is not None and before_score is not None and after.score < before_score - cfg.tolerance
            if unseen is None and not worse:
                change.after = after.to_dict()
                change.status, change.decided_at = ChangeStatus.KEPT, _utc(self.clock())
                self.canary_started = None
                self._outcome(s, change, ChangeStatus.KEPT)
                return ChangeStatus.KEPT
        why = unseen or f"SLO attainment {after.score:.3f} after < {before_score:.3f} before (tolerance {cfg.tolerance})"
        self._rollback(change_id, why, ChangeStatus.ROLLED_BACK, after.to_dict())
        return ChangeStatus.ROLLED_BACK

    def _not_observed(self, requests: float) -> str | None:
        """Why the canary could not see the new config serving traffic, or None when it did. A canary
        keeps only what it saw working: a server that died after its health check, a server the
        sidecar does not scrape (another port), or no request seen at all is a rollback."""
        url, running = self.managed.serving()
        if url is not None and url.rstrip("/") != self.controller.target.rstrip("/"):
            return f"the sidecar scrapes {self.controller.target}, the new server listens at {url}"
        if not running:
            return "the new server's process exited during the canary"
        if self.controller.failures:
            return f"the new server stopped answering scrapes: {self.controller.last_error}"
        if not requests:
            return f"no request seen on the new config within {self.settings.apply.canary_seconds:g} s of canary"
        return None

    def _rollback(self, change_id: int, why: str, outcome: ChangeStatus, after: dict[str, Any]) -> None:
        with self.store.session() as s:
            change = s.get(ConfigChange, change_id)
            assert change is not None
            old = VllmConfig.from_mapping(change.from_config, source="rollback")
        log.warning("rolling back change %s on %s: %s", change_id, self.controller.target, why)
        result = self.managed.start(old)
        self.controller.reset_base()
        self.canary_started = None
        with self.store.session() as s:
            change = s.get(ConfigChange, change_id)
            assert change is not None
            change.status, change.decided_at = outcome, _utc(self.clock())
            change.after = {**after, "reason": why, "rollback_start": result.status.value}
            if change.recommendation_id is not None:
                rec = s.get(Recommendation, change.recommendation_id)
                if rec is not None:
                    rec.status = RecommendationStatus.ROLLED_BACK
            self.metrics.set_applied(change.target, change.id, change.from_config, self.clock())
            self._outcome(s, change, outcome)
        if not result.ok:
            log.error("the previous config did not start again either: %s %s", result.status.value, result.message)

    def _outcome(self, s: Session, change: ConfigChange, outcome: str) -> None:
        self.metrics.changes.labels(change.target, outcome).inc()
        outbox.enqueue(s, self.settings, "config_change", change_event(change), self.clock())


def change_event(change: ConfigChange) -> dict[str, Any]:
    return {"id": change.id, "target": change.target, "status": change.status,
            "recommendation_id": change.recommendation_id, "from_config": change.from_config,
            "to_config": change.to_config, "before": change.before, "after": change.after}

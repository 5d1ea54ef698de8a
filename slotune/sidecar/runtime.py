"""The running sidecar: the store, the metrics, the controller, the outbox deliverer, the applier
(apply mode) and the tuning studies, with the two background threads that drive them. It is what the
API calls (it satisfies `slotune.api.service.SidecarService`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from slotune.collectors.exposition import Scrape
from slotune.errors import ConfigError, SlotuneError, StoreError
from slotune.settings import Settings
from slotune.sidecar import outbox, retention
from slotune.sidecar.apply import Applier, ManagedTarget
from slotune.sidecar.config import data_dir, database_url, managed_config, slo_of
from slotune.sidecar.lease import Lease
from slotune.sidecar.loop import Controller, recommendation_event
from slotune.sidecar.metrics import SidecarMetrics
from slotune.sidecar.studies import StudyRunner
from slotune.store import AlertReceipt, Recommendation, RecommendationStatus, Store, open_store
from slotune.vllm_config import VllmConfig, check_tuning_only, validate_combination

log = logging.getLogger("slotune.sidecar")


class Sidecar:
    def __init__(self, settings: Settings, *, store: Store | None = None, clock: Callable[[], float] = time.time,
                 scrape: Callable[[str], Scrape] | None = None) -> None:
        self.settings = settings
        self.slo = slo_of(settings)
        self.clock = clock
        self.store = store or open_store(database_url(settings))
        self.metrics = SidecarMetrics()
        self.managed: ManagedTarget | None = None
        if settings.managed is not None:
            self.managed = ManagedTarget(managed_config(settings), data_dir(settings) / "logs" / "managed",
                                         settings.managed.startup_timeout, slo=self.slo)
        self.controller = Controller(settings, self.store, self.metrics, target=settings.target, clock=clock,
                                     scrape=scrape, config=lambda: self.managed.config if self.managed else None)
        self.deliverer = outbox.Deliverer(settings, self.store, self.metrics, clock=clock)
        self.applier: Applier | None = None
        self.studies = StudyRunner(self.store, self.metrics, default_target=lambda: self.controller.target)
        self._stop = threading.Event()
        self._wake_outbox = _Wake()
        self._threads: list[threading.Thread] = []
        self.lease = Lease(self.store)
        self._next_prune = 0.0
        self.started = False
        self.startup_error: str | None = None
        self.store_error: str | None = None  # the last tick's store failure, if it failed to write

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, *, threads: bool = True) -> None:
        """Start the managed server (if any), then the loop and outbox threads. With the threads
        (the sidecar's writers), take the database's writer lease first: ConfigError when another
        sidecar holds it."""
        if threads:
            self.lease.acquire()
        if self.managed is not None:
            result = self.managed.start()
            if not result.ok:
                raise ConfigError(f"the managed vLLM did not start: {result.status.value}: {result.message} "
                                  f"(log: {result.log_path})")
            self.controller.target = self.managed.base_url
            if self.settings.mode == "apply":
                self.applier = Applier(self.settings, self.store, self.metrics, self.controller, self.managed,
                                       clock=self.clock)
        if threads:
            # One delivery thread per receiver (and one for rows of receivers no longer configured),
            # so a hung or slow receiver delays nobody else.
            lanes: list[tuple[str | None, bool]] = [(r.name, False) for r in self.settings.receivers] + [(None, True)]
            self._threads = [threading.Thread(target=self._loop, name="slotune-loop", daemon=True)] + [
                threading.Thread(target=self._deliver, args=(name, others, self._wake_outbox.new()),
                                 name=f"slotune-outbox-{name or 'others'}", daemon=True)
                for name, others in lanes]
            for t in self._threads:
                t.start()
        self.started = True
        if self.settings.unsigned_delivery and any(self.settings.secret_for(r) == "" for r in self.settings.receivers):
            log.warning("unsigned_delivery is on: notifications to receivers without a secret go out unsigned")
        log.info("sidecar watching %s every %gs, mode %s, SLO %s", self.controller.target, self.settings.interval,
                 self.settings.mode, self.slo)
        if self.managed is None:  # a server slotune started has the thresholds as bounds already
            from slotune.slo_buckets import warnings

            for line in warnings(self.slo):
                log.warning("%s", line)

    def stop(self, grace: float = 10.0) -> None:
        """Stop within about `grace` seconds: threads still busy then (a receiver that does not
        answer) are daemons and end with the process; their messages stay queued (at least once)."""
        self._stop.set()
        self._wake_outbox.set()
        deadline = time.monotonic() + grace
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("stopping without waiting for %s (in flight: delivered again after restart)",
                        ", ".join(stuck))
        self.studies.stop()
        if self.managed is not None:
            self.managed.stop()
        self.controller.close()
        self.deliverer.close()
        self.lease.release()
        self.store.dispose()

    def step(self) -> None:
        """One loop iteration: a tick, then the applier, then (every `retention.every_seconds`)
        retention. Errors are logged, never raised."""
        try:
            self.controller.tick()
            self.store_error = None
            if self.applier is not None:
                self.applier.step()
            if self.clock() >= self._next_prune:
                self._next_prune = self.clock() + self.settings.retention.every_seconds
                retention.prune(self.store, self.settings.retention, self.clock())
        except StoreError as exc:
            self.store_error = str(exc)
            self.metrics.tick_errors.inc()
            log.error("loop step failed: %s", exc)
        except SlotuneError as exc:
            self.metrics.tick_errors.inc()
            log.error("loop step failed: %s", exc)
        except Exception:  # the loop must survive anything; the traceback goes to the log
            self.metrics.tick_errors.inc()
            log.exception("loop step failed unexpectedly")
        self._wake_outbox.set()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.step()
            next_at += self.settings.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow tick (a restart): skip the missed ticks rather than burst
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    def _deliver(self, receiver: str | None, others: bool, wake: threading.Event) -> None:
        errors = 0
        while not self._stop.is_set():
            try:
                self.deliverer.run_once(receiver, others=others)
                due = self.deliverer.next_due_in(receiver, others=others)
                errors = 0
            except SlotuneError as exc:  # a database error: back off, never spin re-posting
                errors += 1
                log.error("outbox delivery to %s failed (%d in a row): %s", receiver or "others", errors, exc)
                due = None
            except Exception:
                errors += 1
                log.exception("outbox delivery to %s failed unexpectedly (%d in a row)", receiver or "others", errors)
                due = None
            wait = delivery_wait(self.settings.outbox.poll_seconds, due, errors)
            if errors:
                self._stop.wait(wait)  # while failing, a wake-up does not shorten the back-off
            else:
                wake.wait(wait)
            wake.clear()

    # -- what the API calls ---------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """(ready, why). Ready means: started; the store answers and the last tick could write to it;
        the target answered within its last `down_after` scrapes; no scrape has run past its bound
        (a stuck loop)."""
        if not self.started:
            return False, "starting"
        if self.store_error is not None:
            return False, f"store not writable at the last tick: {self.store_error}"
        try:
            with self.store.session() as s:
                s.execute(select(1))
        except SlotuneError as exc:
            return False, str(exc)
        c = self.controller
        if c.failures >= self.settings.down_after:
            return False, f"target {c.target} failed {c.failures} scrapes in a row: {c.last_error}"
        busy = c.scrape_started
        if busy is not None and time.monotonic() - busy > 2 * self.settings.scrape_timeout + 1:
            took = time.monotonic() - busy
            return False, (f"a scrape of {c.target} has run {took:.0f} s (bound: "
                           f"{self.settings.scrape_timeout:g} s): the loop is stuck")
        return True, "ok"

    def status(self) -> dict[str, Any]:
        c = self.controller
        return {"target": c.target, "mode": self.settings.mode, "slo": str(self.slo), "interval": self.settings.interval,
                "ticks": c.ticks, "target_up": c.failures == 0 and c.ticks > 0, "last_error": c.last_error,
                "windows": len(c.rolling),
                "managed_config": None if self.managed is None else self.managed.config.model_dump(
                    mode="json", exclude_none=True)}

    def metrics_text(self) -> tuple[bytes, str]:
        return self.metrics.render()

    def diagnosis(self) -> dict[str, Any]:
        return self.controller.fresh_diagnosis()

    def retry_dead(self, receiver: str | None = None) -> int:
        n = self.deliverer.retry_dead(receiver, why="an operator asked through the API")
        self._wake_outbox.set()
        return n

    def dead_letters(self) -> dict[str, int]:
        return self.deliverer.dead()

    def notify_alerts(self, event: dict[str, Any], keys: list[str | None]) -> tuple[list[str], int]:
        alerts = list(event.get("alerts") or [])
        with self.store.session() as s:
            known = {k for k in keys if k}
            seen = set(s.scalars(select(AlertReceipt.key).where(AlertReceipt.key.in_(known)))) if known else set()
            keep, new = [], []
            for alert, key in zip(alerts, keys, strict=True):
                if key is None:
                    keep.append(alert)
                elif key not in seen:
                    seen.add(key)
                    new.append(key)
                    keep.append(alert)
            if not keep:
                return [], len(alerts)
            now = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
            s.add_all(AlertReceipt(key=k, created_at=now) for k in new)
            ids = outbox.enqueue(s, self.settings, "alert", {**event, "alerts": keep}, self.clock())
        self._wake_outbox.set()
        return ids, len(alerts) - len(keep)

    def notify(self, kind: str, event: dict[str, Any]) -> list[str]:
        with self.store.session() as s:
            ids = outbox.enqueue(s, self.settings, kind, event, self.clock())
        self._wake_outbox.set()
        return ids

    def propose(self, config: dict[str, Any], reason: str) -> int:
        """A recommendation from outside (an operator, a test): a VllmConfig delta on the current config.
        Stored as validated: `{"max_num_seqs": "64"}` is kept as `{"max_num_seqs": 64}`, so what is
        shown, compared and applied is the typed value. Raises `ConfigError` for a bad delta."""
        base = self.managed.config if self.managed is not None else None
        check_tuning_only(base, config, source="proposal")
        if base is not None:
            checked = VllmConfig.from_mapping({**base.model_dump(mode="json", exclude_none=True), **config},
                                              source="proposal")
        else:
            checked = VllmConfig.from_mapping({"model": "probe", **config}, source="proposal")
        validate_combination(checked)  # what `slotune serve` and the tuner refuse before a launch
        typed = checked.model_dump(mode="json")
        config = {key: typed[key] for key in config}
        now = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
        with self.store.session() as s:
            rec = Recommendation(target=self.controller.target, status=RecommendationStatus.PENDING, source="api", reason=reason,
                                 config=config, evidence={"proposed": True}, created_at=now, updated_at=now)
            s.add(rec)
            s.flush()
            outbox.enqueue(s, self.settings, "recommendation", recommendation_event(rec), self.clock())
            self.metrics.recommendations.labels(self.controller.target, "api").inc()
            return rec.id

    def approve(self, recommendation_id: int) -> dict[str, Any] | None:
        with self.store.session() as s:
            rec = s.get(Recommendation, recommendation_id)
            if rec is None:
                return None
            if rec.status not in (RecommendationStatus.PENDING, RecommendationStatus.APPROVED):
                raise ConfigError(f"recommendation {recommendation_id} is {rec.status}; only a pending one "
                                  "can be approved")
            if self.managed is not None:
                check_tuning_only(self.managed.config, rec.config, source=f"recommendation {recommendation_id}")
            rec.status = RecommendationStatus.APPROVED
            rec.updated_at = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
            return recommendation_event(rec) | {"will_apply": self.applier is not None}

    def start_study(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.studies.start(request)


def delivery_wait(poll: float, due: float | None, errors: int) -> float:
    """Seconds a delivery thread sleeps: until its next message is due (at least 50 ms, at most a
    minute), `poll` when none waits, and after `errors` store failures in a row `poll · 2^errors`
    (at most a minute), so a database outage is not met with a burst of re-posts."""
    if errors:
        return min(poll * 2 ** min(errors, 16), 60.0)
    return poll if due is None else min(max(due, 0.05), 60.0)


class _Wake:
    """Wakes every delivery thread at once (a new message may be for any receiver)."""

    def __init__(self) -> None:
        self.events: list[threading.Event] = []

    def new(self) -> threading.Event:
        event = threading.Event()
        self.events.append(event)
        return event

    def set(self) -> None:
        for event in self.events:
            event.set()

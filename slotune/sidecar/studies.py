"""Tuning studies started through the API: one at a time, in a background thread, bounded by the
request's trial budget or timeout (`tuner.study.run_study` does the work and writes the trials to the
same database the API reads)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select

from slotune.errors import ConfigError, SlotuneError, validation_message
from slotune.sidecar.metrics import SidecarMetrics
from slotune.store import Store, TrialRecord

log = logging.getLogger("slotune.sidecar.studies")
MAX_TRIALS = 50


class StudyRunner:
    def __init__(self, store: Store, metrics: SidecarMetrics, *, default_target: Callable[[], str]) -> None:
        self.store, self.metrics, self.default_target = store, metrics, default_target
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.current: dict[str, Any] | None = None
        self.history: dict[str, dict[str, Any]] = {}

    def start(self, request: dict[str, Any]) -> dict[str, Any]:
        from slotune.tuner.study import TuneSpec, check_spec, run_study

        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                raise ConflictError(f"study {self.current and self.current['name']} is still running")
            req = {"storage": self.store.url, **request}
            try:
                spec = TuneSpec(**req)
            except ValidationError as exc:
                raise ConfigError(f"bad study request: {validation_message(exc.errors())}") from None
            if (spec.trials or 0) > MAX_TRIALS:
                raise ConfigError(f"bad study request: trials: at most {MAX_TRIALS}")
            try:
                check_spec(spec)  # now, not in the thread: a bad request is a 422, not a failed study
            except ConfigError as exc:
                raise ConfigError(f"bad study request: {exc}") from None
            name = spec.name()
            spec = spec.model_copy(update={"study_name": name})
            info = {"name": name, "status": "running", "trials": spec.trials, "timeout": spec.timeout,
                    "started_at": datetime.now(timezone.utc).isoformat(), "error": None, "best": None,
                    "recommendation": None}
            self.current = info
            self.history[name] = info
            if spec.trials:
                self.metrics.trials_planned.labels(name).set(spec.trials)
            self.metrics.studies_running.set(1)

            def work() -> None:
                try:
                    result = run_study(spec, events=lambda n, msg: self._progress(name))
                    info["status"] = "finished"
                    best = getattr(result, "best", None)
                    info["best"] = best if isinstance(best, (dict, type(None))) else str(best)
                    # `best` is the top trial as measured; what to run is the verdict's (it keeps
                    # vLLM's defaults unless a config beats them at 95 % confidence).
                    info["recommendation"] = result.to_dict().get("recommendation")
                except SlotuneError as exc:
                    info["status"], info["error"] = "failed", str(exc)
                except Exception as exc:  # a study thread must never take the sidecar down
                    log.exception("study %s failed", name)
                    info["status"], info["error"] = "failed", f"{exc.__class__.__name__}: {exc}"
                finally:
                    self._progress(name)
                    self.metrics.studies_running.set(0)
                    info["finished_at"] = datetime.now(timezone.utc).isoformat()

            self.thread = threading.Thread(target=work, name=f"study-{name}", daemon=True)
            self.thread.start()
            return dict(info)

    def _progress(self, name: str) -> None:
        with self.store.session() as s:
            n = s.scalar(select(func.count()).select_from(TrialRecord).where(TrialRecord.study_name == name)) or 0
        self.metrics.trials_done.labels(name).set(n)

    def list(self) -> list[dict[str, Any]]:
        """Studies this sidecar ran, and every study with trials in the store."""
        out = {k: dict(v) for k, v in self.history.items()}
        with self.store.session() as s:
            rows = s.execute(select(TrialRecord.study_name, func.count(), func.min(TrialRecord.created_at),
                                    func.max(TrialRecord.created_at)).group_by(TrialRecord.study_name)).all()
        for name, n, first, last in rows:
            entry = out.setdefault(name, {"name": name, "status": "stored"})
            entry.update({"trials_recorded": n, "first_trial_at": first.isoformat() if first else None,
                          "last_trial_at": last.isoformat() if last else None})
        return sorted(out.values(), key=lambda d: d["name"])

    def stop(self) -> None:
        # run_study has no cancel hook; the thread is a daemon and its trial servers die with us.
        pass


class ConflictError(SlotuneError):
    """A request that conflicts with what is running (HTTP 409)."""

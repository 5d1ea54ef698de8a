"""The objective: params → config → (never launched | measured) → Optuna outcome. One place maps a
trial's fate to Optuna's states, the way Optuna's own `_run_trial` splits them:

- measured                       → COMPLETE, value = goodput (and p95 TTFT in Pareto mode), with one
                                   constraint per SLO target (`<= 0` feasible, `trial.set_constraint`)
- infeasible (vLLM rejects the combination, the backend lacks a choice, the server failed to start
  or died under load)            → PRUNED with its reason and violated constraints, so TPE ranks it
                                   below every feasible trial and learns the region; the study goes on
- anything else (a slotune bug)  → propagates: Optuna records FAIL and re-raises

Every trial, whatever its fate, is written to `slotune_trials` and to the trial's user attrs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from slotune.slo import SloSpec
from slotune.store import Store, TrialRecord
from slotune.tuner.constraints import infeasible_constraints, slo_constraints
from slotune.tuner.measure import Measure, Measurement
from slotune.tuner.space import SearchSpace
from slotune.vllm_config import VllmConfig

ORIGIN = "origin"  # user attr: baseline | remedy | enqueued | sampler
BASELINE = "baseline"
REMEDY = "remedy"
TTFT_KEY = "ttft_p95"

# (trial number, stage) → the CLI's progress bar
Events = Callable[[int, str], None]


def jsonable_params(config: VllmConfig) -> dict[str, Any]:
    """The tuned flags of a config as plain JSON (speculative_config as a mapping)."""
    out: dict[str, Any] = {}
    for k, v in config.tuned_params().items():
        out[k] = v.model_dump(exclude_none=True) if hasattr(v, "model_dump") else v
    return out


def ttft_p95(client: dict[str, Any]) -> float | None:
    block = client.get("ttft_seconds")
    value = block.get("p95") if isinstance(block, dict) else None
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


@dataclass
class TrialObjective:
    space: SearchSpace
    base: VllmConfig
    measure: Measure
    slo: SloSpec
    store: Store
    study_name: str
    pareto: bool = False
    events: Events | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        origin = trial.user_attrs.get(ORIGIN) or "sampler"  # every enqueue names its origin
        if ORIGIN not in trial.user_attrs:
            trial.set_user_attr(ORIGIN, origin)
        params = self.space.suggest(trial)
        # The baseline is vLLM's default config exactly: no tuned flag, not even the user's fixes.
        config = self.space.config_for(self.base, params, apply_fixed=origin != BASELINE)
        trial.set_user_attr("params", jsonable_params(config))
        trial.set_user_attr("command", config.serve_command())
        trial.set_user_attr("config", config.model_dump(mode="json", exclude_none=True))

        reason = self.space.infeasible_reason(config)
        if reason is not None:
            self._emit(trial, "infeasible (not launched)")
            self._infeasible(trial, config, Measurement(ok=False, status="invalid_config", reason=reason))

        def say(stage: str) -> None:
            self._emit(trial, stage)

        measured = self.measure(config, say)
        if not measured.ok:
            self._emit(trial, f"infeasible: {measured.status}")
            self._infeasible(trial, config, measured)

        constraints = slo_constraints(self.slo, measured.client)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        feasible = all(v <= 0 for v in constraints.values())
        self._annotate(trial, measured, "complete", feasible)
        self._record(trial.number, "complete", "", config, measured, constraints)
        self._emit(trial, f"done: goodput {measured.goodput:.3g} req/s" + ("" if feasible else " (misses SLO)"))
        if self.pareto:
            ttft = ttft_p95(measured.client)
            return measured.goodput, ttft if ttft is not None else 1e9
        return measured.goodput

    def _infeasible(self, trial: optuna.Trial, config: VllmConfig, measured: Measurement) -> None:
        constraints = infeasible_constraints(self.slo)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        self._annotate(trial, measured, "infeasible", False)
        self._record(trial.number, "infeasible", measured.reason, config, measured, constraints)
        raise optuna.TrialPruned(f"infeasible: {measured.reason}")

    def _annotate(self, trial: optuna.Trial, m: Measurement, state: str, feasible: bool) -> None:
        trial.set_user_attr("state", state)
        trial.set_user_attr("feasible", feasible)
        trial.set_user_attr("reason", m.reason)
        trial.set_user_attr("status", m.status)
        trial.set_user_attr("goodput", m.goodput)
        trial.set_user_attr("rate", m.rate)
        if m.sweep:  # capacity mode: the rates tried, drawn by the report as goodput against rate
            trial.set_user_attr("sweep", m.sweep)
        trial.set_user_attr("slo", [r.to_dict() for r in self.slo.evaluate(m.client)] if m.ok else [])
        trial.set_user_attr("client", {k: m.client.get(k) for k in _CLIENT_KEYS if k in m.client})
        trial.set_user_attr("log_path", m.log_path)
        trial.set_user_attr("findings", [f.get("playbook") for f in m.findings])
        trial.set_user_attr("remedies", m.remedies())
        # Each request's figures: the verdict bootstraps its intervals from them (tuner.confidence).
        trial.set_user_attr("requests", m.requests)

    def _record(self, number: int, state: str, reason: str, config: VllmConfig, m: Measurement,
                constraints: dict[str, float]) -> None:
        metrics = {"goodput": m.goodput, "rate": m.rate, "status": m.status, "seconds": m.seconds,
                   "constraints": constraints, "client": m.client, "server": m.server,
                   "requests": m.requests}
        with self.store.session() as s:
            s.add(TrialRecord(
                study_name=self.study_name, trial_number=number, state=state, reason=reason,
                params=jsonable_params(config), config=config.model_dump(mode="json", exclude_none=True),
                metrics=metrics, findings=m.findings, log_path=m.log_path,
            ))

    def _emit(self, trial: optuna.Trial, stage: str) -> None:
        if self.events is not None:
            self.events(trial.number, stage)


# The client-side figures worth keeping on the Optuna trial (the full JSON is in slotune_trials).
_CLIENT_KEYS = ("ttft_seconds", "tpot_seconds", "itl_seconds", "e2e_seconds", "completed", "failed",
                "error_rate", "duration_seconds", "request_throughput", "output_throughput", "goodput", "warnings")

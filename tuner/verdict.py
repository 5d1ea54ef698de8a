"""Noise: measure the best few configs (and the baseline) again, and only call a winner that beats
the baseline by more than the spread of its own measurements.

Re-measurements are stored on the study (user attr `remeasure:<trial>`: one sample per run, the
trial's own measurement first) and in `slotune_trials` (state `remeasure`), so `slotune report`
reaches the same verdict later. A config that meets the SLOs beats a baseline that misses them
whatever the goodput; without re-measurements the noise is taken as `NOISE_FLOOR` of the baseline.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slotune.slo import SloSpec
from slotune.store import Store, TrialRecord
from slotune.tuner.constraints import slo_constraints
from slotune.tuner.measure import Measure
from slotune.tuner.objective import BASELINE, ORIGIN, Events, jsonable_params
from slotune.tuner.space import SearchSpace
from slotune.vllm_config import VllmConfig

NOISE_FLOOR = 0.05  # relative, when nothing was re-measured
ATTR = "remeasure:"


@dataclass(frozen=True)
class Samples:
    trial: int
    goodputs: tuple[float, ...]
    feasible: tuple[bool, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.goodputs) if self.goodputs else 0.0

    @property
    def spread(self) -> float:
        return max(self.goodputs) - min(self.goodputs) if len(self.goodputs) > 1 else 0.0

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.goodputs) if len(self.goodputs) > 1 else 0.0

    @property
    def mostly_feasible(self) -> bool:
        return sum(self.feasible) * 2 > len(self.feasible)

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "goodputs": list(self.goodputs), "feasible": list(self.feasible),
                "mean": self.mean, "spread": self.spread, "stdev": self.stdev}


@dataclass(frozen=True)
class Verdict:
    recommendation: str  # "tuned" | "baseline" | "none"
    winner: int | None  # the recommended trial's number
    baseline: int | None
    gain: float | None  # mean goodput difference, req/s
    ratio: float | None  # winner mean / baseline mean
    noise: float
    remeasured: bool
    message: str
    samples: dict[int, Samples]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = {str(k): v.to_dict() for k, v in self.samples.items()}
        return d


def samples_of(trial: FrozenTrial, study_attrs: Mapping[str, Any]) -> Samples:
    extra = study_attrs.get(f"{ATTR}{trial.number}") or []
    goodputs = [float(trial.user_attrs.get("goodput") or 0.0)] + [float(s["goodput"]) for s in extra]
    feasible = [bool(trial.user_attrs.get("feasible"))] + [bool(s["feasible"]) for s in extra]
    return Samples(trial.number, tuple(goodputs), tuple(feasible))


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Measured trials, feasible ones first, each group by goodput (highest first)."""
    measured = [t for t in trials if t.state is TrialState.COMPLETE]
    return sorted(measured, key=lambda t: (not t.user_attrs.get("feasible"), -float(t.user_attrs.get("goodput") or 0)))


def decide(trials: list[FrozenTrial], study_attrs: Mapping[str, Any]) -> Verdict:
    base_t = next((t for t in trials if t.user_attrs.get(ORIGIN) == BASELINE and t.state is TrialState.COMPLETE), None)
    base = samples_of(base_t, study_attrs) if base_t else None
    candidates = [samples_of(t, study_attrs) for t in ranked(trials)
                  if t.user_attrs.get("feasible") and t.user_attrs.get(ORIGIN) != BASELINE]
    remeasured = any(len(c.goodputs) > 1 for c in candidates) or bool(base and len(base.goodputs) > 1)
    samples = {c.trial: c for c in candidates if len(c.goodputs) > 1}
    if base:
        samples[base.trial] = base
    if remeasured:  # only a config measured again can be declared the winner
        candidates = [c for c in candidates if len(c.goodputs) > 1]
    # Prefer configs whose re-measurements kept meeting the SLOs, then the highest mean.
    candidates.sort(key=lambda c: (not c.mostly_feasible, -c.mean))
    winner = candidates[0] if candidates and candidates[0].mostly_feasible else None
    base_ok = bool(base and base.mostly_feasible)
    if winner is None:
        if base_ok:
            return Verdict("baseline", base.trial, base.trial, 0.0, 1.0, base.spread, remeasured,
                           "no tuned config beat vLLM's default while meeting every SLO: keep the default", samples)
        return Verdict("none", None, base.trial if base else None, None, None, 0.0, remeasured,
                       "no config met every SLO: relax the targets, lower the load, or widen the space", samples)
    if base is None or not base_ok:
        ratio = winner.mean / base.mean if base and base.mean > 0 else None
        return Verdict("tuned", winner.trial, base.trial if base else None,
                       winner.mean - (base.mean if base else 0.0), ratio, winner.spread, remeasured,
                       f"vLLM's default config misses the SLOs; trial {winner.trial} meets them", samples)
    noise = max(winner.spread, base.spread) if remeasured else NOISE_FLOOR * base.mean
    gain = winner.mean - base.mean
    ratio = winner.mean / base.mean if base.mean > 0 else None
    how = "re-measured" if remeasured else f"not re-measured; noise taken as {NOISE_FLOOR:.0%} of the baseline"
    if gain > noise:
        return Verdict("tuned", winner.trial, base.trial, gain, ratio, noise, remeasured,
                       f"trial {winner.trial} beats the default by {gain:.3g} req/s goodput "
                       f"(x{ratio:.2f}), more than the noise of {noise:.3g} req/s ({how})", samples)
    return Verdict("baseline", base.trial, base.trial, gain, ratio, noise, remeasured,
                   f"the best tuned config (trial {winner.trial}) is within the noise of the default "
                   f"({gain:+.3g} vs {noise:.3g} req/s, {how}): keep the default", samples)


def remeasure(study: optuna.Study, space: SearchSpace, base: VllmConfig, measure: Measure, slo: SloSpec,
              store: Store, *, top: int, repeats: int, events: Events | None = None) -> None:
    """Measure the top feasible configs and the baseline `repeats` more times (idempotent on resume)."""
    trials = study.get_trials(deepcopy=False)
    chosen = [t for t in ranked(trials) if t.user_attrs.get("feasible") and t.user_attrs.get(ORIGIN) != BASELINE][:top]
    base_t = next((t for t in trials if t.user_attrs.get(ORIGIN) == BASELINE and t.state is TrialState.COMPLETE), None)
    if base_t is not None:
        chosen.append(base_t)
    for trial in chosen:
        key = f"{ATTR}{trial.number}"
        done = list(study.user_attrs.get(key) or [])
        is_base = trial.user_attrs.get(ORIGIN) == BASELINE
        config = space.config_for(base, trial.params, apply_fixed=not is_base)
        while len(done) < repeats:
            if events:
                events(trial.number, f"re-measuring ({len(done) + 1}/{repeats})")
            m = measure(config, (lambda stage, n=trial.number: events(n, f"re-measure: {stage}")) if events else None)
            constraints = slo_constraints(slo, m.client) if m.ok else {}
            feasible = m.ok and all(v <= 0 for v in constraints.values())
            done.append({"goodput": m.goodput, "feasible": feasible, "status": m.status, "reason": m.reason})
            study.set_user_attr(key, done)
            with store.session() as s:
                s.add(TrialRecord(
                    study_name=study.study_name, trial_number=trial.number, state="remeasure", reason=m.reason,
                    params=jsonable_params(config), config=config.model_dump(mode="json", exclude_none=True),
                    metrics={"goodput": m.goodput, "feasible": feasible, "constraints": constraints,
                             "client": m.client, "server": m.server},
                    findings=m.findings, log_path=m.log_path,
                ))

"""The verdict: does a tuned config beat vLLM's defaults, at a stated confidence?

Every config in the running (the baseline and the best few feasible ones) is measured again in
interleaved rounds — baseline, candidate 1, candidate 2, baseline, candidate 1, ... — so a drift of
the host (another job, thermal state, a cache warming) falls on both sides alike. Each config's
goodput and SLO figures then come with a `CONFIDENCE` (95 %) interval, from its requests over all
its runs (`tuner.confidence`: a bootstrap over requests, stratified by run, enveloped with a
Student-t interval over the runs), and each SLO is met, missed or inconclusive at that confidence.

A candidate's own run, the one it was picked on, is left out of its samples once it has 2 or more
re-measurements (the winner's curse: the best of several noisy runs is biased upward).

A candidate wins only when it was measured more than once, no SLO it has is confidently missed or
judged worse than the baseline's, and either
- its goodput interval clears the baseline's (its lower bound above the baseline's upper bound) and
  its goodput is at least `MIN_GAIN` (5 %) above the baseline's, or
- the baseline confidently misses an SLO that the candidate confidently meets (or the baseline did
  not run at all and the candidate confidently meets every SLO).
Otherwise the answer is "keep vLLM's defaults", and the message names both intervals. A study
whose candidates were never re-measured ends in "keep vLLM's defaults (not re-measured)".

Re-measurements are stored on the study (user attr `remeasure:<trial>`: one entry per run with its
goodput, feasibility and requests) and in `slotune_trials` (state `remeasure`), so `slotune report`
reaches the same verdict later from storage alone (the bootstrap is seeded).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slotune.errors import ConfigError
from slotune.slo import SloSpec, fmt_figure, fmt_interval
from slotune.store import Store, TrialRowState
from slotune.tuner.confidence import CONFIDENCE, Figure, RunRequests, SloFigure, goodput_figure, judge_slos
from slotune.tuner.constraints import LAUNCH, slo_constraints
from slotune.tuner.measure import Measure, Measurement
from slotune.tuner.objective import BASELINE, ORIGIN, PRUNED, Events, record_trial
from slotune.tuner.space import SearchSpace
from slotune.vllm_config import VllmConfig

ATTR = "remeasure:"
SPEC_ATTR = "slotune_spec"  # the study's identity (tuner.study), where its SLO spec is kept
_RANK = {"missed": 0, "inconclusive": 1, "met": 2}
# The smallest goodput gain worth a restart. Also a guard: at an offered rate that both configs keep
# up with, every request is good on both sides and goodput differs only by when the last request
# ended (a few percent of a short run), with intervals too narrow to hide it.
MIN_GAIN = 0.05
# Re-measurements a candidate needs before its selection run is left out of its samples (samples_of).
SELECTION_FREE_ROUNDS = 2
# Study attr: why the search ended after the baseline, no config being able to win (`nothing_to_win`).
NOTHING_TO_WIN = "nothing_to_win"
# How its verdict says so (the report's load hint reads it, to say nothing twice).
STOPPED_AFTER_BASELINE = "search stopped after the baseline"


def nothing_to_win(rate: float | None, baseline: FrozenTrial, study_attrs: Mapping[str, Any],
                   slo: SloSpec) -> str | None:
    """Why no config can beat the measured baseline at an offered `rate` (req/s), or None.

    At an open-loop rate the last request is due at exactly n / rate (`loadgen.schedule`), so no run
    of n requests lasts less and no config's goodput can exceed the offered rate. A config wins by
    goodput only `MIN_GAIN` above the baseline's, and by rescue only where the baseline confidently
    misses an SLO. So when the baseline's run meets every SLO at 95 % confidence (a rescue would need
    its re-measurements to turn that into a confident miss) and the lower bound of its goodput
    interval is within `MIN_GAIN` of the rate, no config can win, and the study's trials would be
    spent for nothing. None otherwise: a closed loop (no rate, no such ceiling), a failed baseline,
    an SLO missed or inconclusive (a p95 of a few dozen requests is inconclusive: `tuner.confidence`),
    or goodput below that."""
    if rate is None or not rate < float("inf") or baseline.state is not TrialState.COMPLETE:
        return None
    if not baseline.user_attrs.get("feasible"):
        return None
    s = samples_of(baseline, study_attrs, slo)
    if s.goodput.ci is None or not s.slo or any(f.outcome != "met" for f in s.slo.values()):
        return None
    low = s.goodput.ci[0]
    if not low > 0 or rate >= low * (1 + MIN_GAIN):
        return None
    return (f"they serve {s.goodput.estimate:.3g} of the {rate:g} req/s offered, every SLO met at "
            f"{s.confidence:.0%} confidence, and no config's goodput can exceed the offered rate: none can beat "
            f"them by the {MIN_GAIN:.0%} a restart needs at this load ({STOPPED_AFTER_BASELINE}; to "
            f"look for headroom, offer more or use capacity mode)")


@dataclass(frozen=True)
class Samples:
    """One config's runs: goodput (req/s) and SLO feasibility per run, the trial's own first (a
    candidate's own run left out after `SELECTION_FREE_ROUNDS` re-measurements); its goodput interval and each SLO target's figure, interval and outcome at `confidence`."""

    trial: int
    goodputs: tuple[float, ...]
    feasible: tuple[bool, ...]
    goodput: Figure = field(default_factory=lambda: Figure(None, None))
    slo: dict[str, SloFigure] = field(default_factory=dict)
    confidence: float = CONFIDENCE

    @property
    def runs(self) -> int:
        return len(self.goodputs)

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

    def outcome(self, key: str) -> str:
        f = self.slo.get(key)
        return f.outcome if f else "inconclusive"

    def missed(self) -> list[str]:
        return [k for k, f in self.slo.items() if f.outcome == "missed"]

    def ci_text(self) -> str:
        ci = self.goodput.ci
        if ci is None:
            return f"goodput {self.mean:.3g} req/s (no interval)"
        return f"goodput {self.mean:.3g} req/s [{ci[0]:.3g}, {ci[1]:.3g}]"

    def to_dict(self) -> dict[str, Any]:
        ci = self.goodput.ci
        return {"trial": self.trial, "goodputs": list(self.goodputs), "feasible": list(self.feasible),
                "mean": self.mean, "spread": self.spread, "stdev": self.stdev,
                "goodput_ci": None if ci is None else [ci[0], ci[1]], "confidence": self.confidence,
                "slo": {k: f.to_dict() for k, f in self.slo.items()}}


@dataclass(frozen=True)
class Verdict:
    recommendation: str  # "tuned" | "baseline" (keep vLLM's defaults) | "none" (no baseline ran, nothing won)
    winner: int | None  # the recommended trial's number
    baseline: int | None
    gain: float | None  # mean goodput difference, req/s
    ratio: float | None  # winner mean / baseline mean
    noise: float  # half the width of the baseline's goodput interval, req/s (0 without one)
    remeasured: bool
    message: str
    samples: dict[int, Samples]
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return {"recommendation": self.recommendation, "winner": self.winner, "baseline": self.baseline,
                "gain": self.gain, "ratio": self.ratio, "noise": self.noise, "remeasured": self.remeasured,
                "message": self.message, "confidence": self.confidence,
                "samples": {str(k): v.to_dict() for k, v in self.samples.items()}}


def study_slo(study_attrs: Mapping[str, Any]) -> SloSpec | None:
    text = (study_attrs.get(SPEC_ATTR) or {}).get("slo")
    try:
        return SloSpec.parse(text) if text else None
    except ConfigError:
        return None


def samples_of(trial: FrozenTrial, study_attrs: Mapping[str, Any], slo: SloSpec | None = None,
               confidence: float = CONFIDENCE) -> Samples:
    """The trial's runs (its own measurement, then its re-measurements) with their intervals; `slo`
    defaults to the study's. A run stored without its requests has no interval (it cannot win).

    A candidate's own run is the one it was picked on (the best of several noisy measurements), so it
    is biased upward: the winner's curse. Once a candidate has `SELECTION_FREE_ROUNDS` interleaved
    re-measurements, its own run is left out and only those count; with fewer (`slotune demo`'s
    single round) it is pooled, since one run alone is never a verdict. The baseline was not picked,
    so its own run always counts."""
    slo = slo if slo is not None else study_slo(study_attrs)
    extra = study_attrs.get(f"{ATTR}{trial.number}") or []
    own = Measurement.from_attrs(trial.user_attrs)
    goodputs = [own.goodput if own is not None else 0.0] + [float(s["goodput"]) for s in extra]
    feasible = [bool(trial.user_attrs.get("feasible"))] + [bool(s["feasible"]) for s in extra]
    runs = [own.requests if own is not None else None] + [RunRequests.from_dict(s.get("requests")) for s in extra]
    if trial.user_attrs.get(ORIGIN) != BASELINE and len(extra) >= SELECTION_FREE_ROUNDS:
        goodputs, feasible, runs = goodputs[1:], feasible[1:], runs[1:]
    if any(r is None for r in runs):
        return Samples(trial.number, tuple(goodputs), tuple(feasible), confidence=confidence)
    kept = [r for r in runs if r is not None]
    return Samples(trial.number, tuple(goodputs), tuple(feasible), goodput_figure(kept, confidence),
                   judge_slos(kept, slo, confidence) if slo is not None else {}, confidence)


def worst_slo_excess(t: FrozenTrial) -> float:
    """How far the trial's own run missed its worst SLO target, as its constraint (`measured /
    threshold - 1`; <= 0 met; +inf without constraints)."""
    return max((v for k, v in (t.constraints or {}).items() if k != LAUNCH), default=math.inf)


def rank_key(t: FrozenTrial) -> tuple[bool, float, float]:
    """A trial's place in `ranked` (lower ranks first): feasible before infeasible, then goodput, then
    how far it missed its worst SLO target (`worst_slo_excess`: among configs that serve nothing
    within the SLOs, goodput 0 alike, the one closest to them first)."""
    return not t.user_attrs.get("feasible"), -float(t.user_attrs.get("goodput") or 0), worst_slo_excess(t)


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Measured trials, feasible ones first, each group by goodput (highest first), then by how far
    they missed their worst SLO target (least first)."""
    return sorted((t for t in trials if t.state is TrialState.COMPLETE), key=rank_key)


def _fmt_ci(f: SloFigure) -> str:
    """'ttft_p95 800 ms [775 ms, 825 ms]': the figure and its interval in the target's unit."""
    ci, key = f.figure.ci, f.target.key
    if not ci or f.figure.estimate is None:
        return f"{key} (no interval)"
    return f"{key} {fmt_figure(key, f.figure.estimate)} {fmt_interval(key, ci)}"


def why_not(c: Samples, base: Samples | None) -> str | None:
    """None when `c` beats `base` at the confidence; otherwise why it does not (one clause)."""
    if c.runs < 2:
        return f"trial {c.trial} was measured once"
    if c.goodput.ci is None:
        return f"trial {c.trial} has no goodput interval (a run failed or kept no requests)"
    missed = c.missed()
    if missed:
        return f"trial {c.trial} misses {', '.join(_fmt_ci(c.slo[k]) for k in missed)}"
    if base is None:
        unsure = [k for k, f in c.slo.items() if f.outcome != "met"]
        return f"trial {c.trial} does not surely meet {', '.join(unsure)}" if unsure else None
    worse = [k for k in c.slo if _RANK[c.outcome(k)] < _RANK[base.outcome(k)]]
    if worse:
        return (f"trial {c.trial} is less sure than the default to meet "
                f"{', '.join(_fmt_ci(c.slo[k]) for k in worse)}")
    if base.runs < 2:
        return "the default was measured once"
    if base.goodput.ci is None:
        return "the default has no goodput interval (a run failed or kept no requests)"
    rescued = [k for k in base.missed() if c.outcome(k) == "met"]
    if rescued:
        return None
    if c.goodput.ci[0] > base.goodput.ci[1]:
        gain, base_mean = (c.goodput.estimate or 0.0), (base.goodput.estimate or 0.0)
        if gain >= base_mean * (1 + MIN_GAIN):
            return None
        return (f"trial {c.trial}'s {c.ci_text()} clears the default's {base.ci_text()} but by less than "
                f"{MIN_GAIN:.0%}: not worth a restart")
    return (f"trial {c.trial}'s {c.ci_text()} does not clear the default's {base.ci_text()} "
            f"at {c.confidence:.0%} confidence")


def decide(trials: list[FrozenTrial], study_attrs: Mapping[str, Any], slo: SloSpec | None = None) -> Verdict:
    """The study's verdict from its trials and study attrs alone (see the module docstring)."""
    slo = slo if slo is not None else study_slo(study_attrs)
    base_t = next((t for t in trials if t.user_attrs.get(ORIGIN) == BASELINE and t.state is TrialState.COMPLETE), None)
    base = samples_of(base_t, study_attrs, slo) if base_t else None
    cand_t = [t for t in ranked(trials) if t.user_attrs.get("feasible") and t.user_attrs.get(ORIGIN) != BASELINE]
    # Only re-measured configs compete (and get their intervals computed).
    candidates = [samples_of(t, study_attrs, slo) for t in cand_t if study_attrs.get(f"{ATTR}{t.number}")]
    remeasured = bool(candidates)
    samples = {c.trial: c for c in candidates}
    if base:
        samples[base.trial] = base
    noise = (base.goodput.ci[1] - base.goodput.ci[0]) / 2 if base and base.goodput.ci else 0.0
    base_no = base.trial if base else None
    winners = [c for c in candidates if why_not(c, base) is None]
    if winners:
        w = max(winners, key=lambda c: (c.goodput.ci[0] if c.goodput.ci else 0.0, c.mean))
        gain = w.mean - (base.mean if base else 0.0)
        ratio = w.mean / base.mean if base and base.mean > 0 else None
        conf = f"{w.confidence:.0%}"
        if base is None:
            msg = (f"vLLM's default config did not run; trial {w.trial} meets every SLO at {conf} confidence "
                   f"({w.ci_text()})")
        elif w.goodput.ci[0] > base.goodput.ci[1]:
            msg = (f"trial {w.trial} beats vLLM's defaults: {w.ci_text()} against the default's "
                   f"{base.ci_text()}, intervals at {conf} confidence, measured interleaved")
            if ratio is not None:
                msg += f" (x{ratio:.2f})"
        else:
            rescued = [k for k in base.missed() if w.outcome(k) == "met"]
            msg = (f"vLLM's defaults miss {', '.join(_fmt_ci(base.slo[k]) for k in rescued)}; trial {w.trial} "
                   f"meets {', '.join(_fmt_ci(w.slo[k]) for k in rescued)} (thresholds "
                   f"{', '.join(str(w.slo[k].target) for k in rescued)}, {conf} confidence); "
                   f"trial {w.trial}: {w.ci_text()}, default: {base.ci_text()}")
        return Verdict("tuned", w.trial, base_no, gain, ratio, noise, remeasured, msg, samples)
    if base is None:
        return Verdict("none", None, None, None, None, 0.0, remeasured,
                       "vLLM's default config did not run and no tuned config surely meets every SLO: "
                       "relax the targets, lower the load, or widen the space", samples)
    tail = (f"; the defaults also miss {', '.join(_fmt_ci(base.slo[k]) for k in base.missed())}: relax the targets, "
            "lower the load, or widen the space") if base.missed() else ""
    if not remeasured and study_attrs.get(NOTHING_TO_WIN):
        return Verdict("baseline", base.trial, base.trial, None, None, noise, False,
                       f"keep vLLM's defaults: {study_attrs[NOTHING_TO_WIN]} (default: {base.ci_text()})", samples)
    if not remeasured and not cand_t and not tuned_measured(trials):  # a study of the defaults alone
        runs = f"{base.runs} runs" if base.runs > 1 else "one run: not re-measured"
        return Verdict("baseline", base.trial, base.trial, None, None, noise, False,
                       f"keep vLLM's defaults: no tuned config was measured (default, {runs}: {base.ci_text()}){tail}",
                       samples)
    if not remeasured:
        why = "no tuned config was measured again" if cand_t else "no tuned config met the SLOs"
        return Verdict("baseline", base.trial, base.trial, None, None, noise, False,
                       f"keep vLLM's defaults (not re-measured): {why}; a config measured once is never "
                       f"recommended (default: {base.ci_text()}){tail}", samples)
    best = max(candidates, key=lambda c: (c.goodput.ci[0] if c.goodput.ci else float("-inf"), c.mean))
    reason = why_not(best, base)
    gain = best.mean - base.mean
    ratio = best.mean / base.mean if base.mean > 0 else None
    shown = "" if reason and "does not clear" in reason else \
        f" (trial {best.trial}: {best.ci_text()}; default: {base.ci_text()})"
    return Verdict("baseline", base.trial, base.trial, gain, ratio, noise, True,
                   f"keep vLLM's defaults: {reason}{shown}{tail}", samples)


def tuned_measured(trials: list[FrozenTrial]) -> bool:
    """Whether a tuned config was measured: a trial other than the baseline that ran its window
    (COMPLETE) or part of it (stopped early). Not one refused before launch, a duplicate (measured as
    its twin), a failed or a waiting one."""
    return any(t.user_attrs.get(ORIGIN) != BASELINE
               and (t.state is TrialState.COMPLETE or t.user_attrs.get("state") == PRUNED) for t in trials)


def remeasure_order(base: int | None, candidates: list[int], rounds: int) -> list[tuple[int, int]]:
    """(round, trial) in measuring order: each round the baseline first, then each candidate, so
    drift over the re-measurement falls on every config alike. Rounds count from 1."""
    order = []
    for r in range(1, rounds + 1):
        order += [(r, t) for t in ([base] if base is not None else []) + candidates]
    return order


def remeasure(study: optuna.Study, space: SearchSpace, base: VllmConfig, measure: Measure, slo: SloSpec,
              store: Store, *, top: int, repeats: int, events: Events | None = None) -> None:
    """Measure the baseline and the `top` best feasible configs `repeats` more times each, in
    interleaved rounds (`remeasure_order`). Idempotent on resume: a config's round `r` is skipped when
    it already has `r` re-measurements stored. Nothing is measured when tuned configs ran and none met
    the SLOs: the baseline's runs are there to be compared with a candidate's, and without one the
    verdict is "keep vLLM's defaults" whatever they show (a window each for nothing). A study of the
    baseline alone (`slotune demo --trials 1`) still measures it again: its runs are the defaults'
    run-to-run noise, which is what such a study shows."""
    trials = study.get_trials(deepcopy=False)
    chosen = [t for t in ranked(trials) if t.user_attrs.get("feasible") and t.user_attrs.get(ORIGIN) != BASELINE][:top]
    if not chosen and tuned_measured(trials):
        return
    base_t = next((t for t in trials if t.user_attrs.get(ORIGIN) == BASELINE and t.state is TrialState.COMPLETE), None)
    by_number = {t.number: t for t in chosen + ([base_t] if base_t is not None else [])}
    for rnd, number in remeasure_order(base_t.number if base_t else None, [t.number for t in chosen], repeats):
        trial = by_number[number]
        key = f"{ATTR}{number}"
        done = list(study.user_attrs.get(key) or [])
        if len(done) >= rnd:
            continue
        is_base = trial.user_attrs.get(ORIGIN) == BASELINE
        config = space.config_for(base, trial.params, apply_fixed=not is_base)
        if events:
            events(number, f"re-measuring (round {rnd}/{repeats})")
        m = measure(config, (lambda stage, n=number: events(n, f"re-measure: {stage}")) if events else None)
        constraints = slo_constraints(slo, m.client) if m.ok else {}
        feasible = m.ok and all(v <= 0 for v in constraints.values())
        full = m.to_dict()
        done.append({"goodput": m.goodput, "feasible": feasible, "status": m.status, "reason": m.reason,
                     "round": rnd, "requests": full["requests"]})
        study.set_user_attr(key, done)
        record_trial(store, study.study_name, number, TrialRowState.REMEASURE, m.reason, config, m, constraints,
                     feasible=feasible, round=rnd)

"""The objective: params → config → (never launched | measured) → Optuna outcome. One place maps a
trial's fate to Optuna's states, the way Optuna's own `_run_trial` splits them:

- measured                       → COMPLETE, value = goodput (and p95 TTFT in Pareto mode), with one
                                   constraint per SLO target (`<= 0` feasible, `trial.set_constraint`)
- infeasible (vLLM rejects the combination, the backend lacks a choice, the server failed to start
  or died under load)            → PRUNED with its reason and violated constraints, so TPE ranks it
                                   below every feasible trial and learns the region; the study goes on
- stopped early (its window's requests so far already miss an SLO target by far: `SloPruner`)
                                 → PRUNED with state `pruned`, the figures so far and the reason;
                                   the baseline is never stopped early (every verdict compares with it)
- a config already measured in this study → PRUNED, state `duplicate`, not measured, its twin's
                                   constraints (after waiting for the twin when another worker is
                                   measuring it); Optuna's FAQ on duplicated samples (measuring a
                                   config again is the verdict's job)
- anything else (a slotune bug)  → propagates: Optuna records FAIL and re-raises

Every trial, whatever its fate, is written to `slotune_trials` and to the trial's user attrs, with
its wall time (`wall_seconds`: from the objective's start, launch included, to its outcome).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from itertools import chain
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from slotune import platforms
from slotune.loadgen.figures import LoadFigures
from slotune.server import as_served
from slotune.slo import SloSpec
from slotune.store import Store, TrialRecord, TrialRowState
from slotune.tuner import trial_queue
from slotune.tuner.constraints import infeasible_constraints, slo_constraints
from slotune.tuner.labels import trial_label
from slotune.tuner.measure import Measure, Measurement, PartialCheck
from slotune.tuner.space import SearchSpace
from slotune.tuner.storage import uncached
from slotune.vllm_config import VllmConfig

ORIGIN = "origin"  # user attr: baseline | remedy | enqueued | sampler | neighbour | random
BASELINE = "baseline"
REMEDY = "remedy"
# Origins of an unmeasured config queued in place of one the sampler drew again
# (`TrialObjective._queue_instead`): one flag away from it, else drawn at random; user attr
# `instead_of` names the duplicate trial it stands in for.
NEIGHBOUR = "neighbour"
RANDOM = "random"
INSTEAD_OF = "instead_of"
QUEUED_INSTEAD = "queued_instead"  # user attr of a sampler's duplicate: True when a config was queued in its place
RANDOM_DRAWS = 200  # random configs tried for an unmeasured one before the space counts as exhausted
# Study attr: why the search ended before its trial budget (set by `study.TrialBudget` and
# `run_study`; here because the report reads it and must not import the study module).
SEARCH_STOPPED = "search_stopped"
TTFT_KEY = "ttft_p95"
PRUNED = TrialRowState.PRUNED.value  # user attr `state` of a trial stopped early (Optuna state PRUNED, like infeasible ones)
# User attr `state` of a trial whose server an earlier trial of the study already measured (Optuna
# state PRUNED, row state `pruned`: not measured; `duplicate_of` names that trial).
DUPLICATE = "duplicate"
DUPLICATE_OF = "duplicate_of"
# User attr: this trial measures its server (set under `TrialObjective.claims`): a running trial with
# the claim makes a later trial of the same server a duplicate, whichever worker runs it.
CLAIMED = "claimed"
TWIN_POLL_SECONDS = 2.0  # how often a trial waiting for its twin on another worker looks again
WALL = "wall_seconds"  # user attr: one trial's wall time; study attr: the study's, summed over runs
SERVED = "served_config"  # user attr: the config as the server ran it, the platform's flags filled in (as_served)
WAITED = "waited_seconds"  # user attr: of a duplicate's wall time, the wait for another worker's run of its twin
DEFAULT_PRUNE_FACTOR = 2.0

# (trial number, stage) → the CLI's progress bar
Events = Callable[[int, str], None]
# How the last stage a trial's `events` get begins (its outcome): a progress line marks the trial done.
OUTCOME_STAGES = ("done", "infeasible", "stopped early", "duplicate")


def _twin(trial: optuna.Trial, command: str | None) -> FrozenTrial | None:
    """The first other trial that measured `command` (finished) or claimed it (running), duplicates
    aside. Read past Optuna's trial cache (`_CachedStorage` re-reads only trials above the highest
    finished id it has seen, so a twin committed out of id order could stay unseen)."""
    others = uncached(trial.study).get_all_trials(trial.study._study_id, deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return next((t for t in sorted(others, key=lambda t: t.number)
                 if t.number != trial.number and t.user_attrs.get("command") == command
                 and t.user_attrs.get("state") != DUPLICATE
                 and (t.state is not TrialState.RUNNING or t.user_attrs.get(CLAIMED))), None)


def jsonable_params(config: VllmConfig) -> dict[str, Any]:
    """The tuned flags of a config as plain JSON (speculative_config as a mapping)."""
    out: dict[str, Any] = {}
    for k, v in config.tuned_params().items():
        out[k] = v.model_dump(exclude_none=True) if hasattr(v, "model_dump") else v
    # The CPU build's KV-cache size is an environment variable, not a flag: a tuned one shows too.
    plat = platforms.detect()
    if plat.kv_cache_env and plat.kv_cache_env in config.env:
        out[plat.kv_cache_env] = config.env[plat.kv_cache_env]
    return out


def wall_times(trials: list[FrozenTrial], study_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Wall time of the study (every `run_study`, re-measurements included, summed over resumes) and of
    its trials, in seconds: `{"study": s, "trials": sum, "per_trial": {number: s}, "waited": s}`, where
    `waited` is the part of the trials' time duplicates spent waiting for another worker's run of the
    same server (a worker busy, no server of its own)."""
    per = {t.number: float(t.user_attrs[WALL]) for t in trials if isinstance(t.user_attrs.get(WALL), (int, float))}
    waited = sum(float(t.user_attrs[WAITED]) for t in trials if isinstance(t.user_attrs.get(WAITED), (int, float)))
    return {"study": study_attrs.get(WALL), "trials": round(sum(per.values()), 3), "per_trial": per,
            "waited": round(waited, 3)}


def ttft_p95(client: LoadFigures | None) -> float | None:
    """The client's p95 TTFT in seconds (None: not measured)."""
    value = client.ttft.p95 if client is not None and client.ttft is not None else None
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def _takes_check(measure: Any) -> bool:
    """A measure that says it watches its window (`watches = True`) and whose call takes `check`."""
    import inspect

    if not getattr(measure, "watches", False):
        return False
    try:
        return "check" in inspect.signature(measure).parameters
    except (TypeError, ValueError):
        return False


def worst_excess(slo: SloSpec, figures: LoadFigures) -> tuple[str, float, float, float] | None:
    """The SLO target the figures miss by the largest factor: (key, measured / threshold, measured,
    threshold), or None when no target with a positive threshold was measured. Targets of zero
    (error_rate<=0%) are left out: one failed request early in a window is no measure of "how far"."""
    worst = None
    for r in slo.evaluate(figures):
        t = r.target
        if r.value is None or not t.threshold > 0:
            continue
        ratio = float(r.value) / t.threshold
        if worst is None or ratio > worst[1]:
            worst = (t.key, ratio, float(r.value), t.threshold)
    return worst


SO_FAR = "so_far"  # user attr: the worst target of the window so far {requests, target, value, threshold, ratio}


class SloPruner(BasePruner):
    """Optuna pruner over the requests measured so far: a trial whose window so far (user attr
    `so_far`, set before the goodput so far is reported at step = requests finished) misses an SLO
    target by at least `factor` (measured / threshold) stops. A miss by 2x over a tenth of a window
    is not noise; a miss by 10 % may be, so that trial runs on. The reported value is goodput, the
    study's own objective, so the sampler ranks stopped trials the right way round."""

    def __init__(self, factor: float = DEFAULT_PRUNE_FACTOR, min_requests: int = 5) -> None:
        if not factor > 1:
            raise ValueError(f"the prune factor must be above 1, not {factor}")
        self.factor, self.min_requests = factor, min_requests

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        so_far = trial.user_attrs.get(SO_FAR)
        if not isinstance(so_far, dict) or trial.last_step is None or so_far.get("requests") != trial.last_step:
            return False
        ratio = so_far.get("ratio")
        return trial.last_step >= self.min_requests and isinstance(ratio, (int, float)) and ratio >= self.factor


def record_trial(store: Store, study_name: str, number: int, state: TrialRowState, reason: str, config: VllmConfig,
                 m: Measurement, constraints: dict[str, float], **extra: Any) -> None:
    """The one writer of `slotune_trials` rows (a trial, or one re-measurement of it for the verdict):
    its params and config, its figures as `Measurement.to_dict()` gives them (goodput, client, server,
    requests, findings) plus the constraints and `extra` (rate, wall time, round, ...) in `metrics`."""
    full = m.to_dict()
    metrics = {"goodput": m.goodput, "constraints": constraints, "client": full["client"], "server": full["server"],
               "requests": full["requests"], **extra}
    with store.session() as s:
        s.add(TrialRecord(
            study_name=study_name, trial_number=number, state=str(state), reason=reason,
            params=jsonable_params(config), config=config.model_dump(mode="json", exclude_none=True),
            metrics=metrics, findings=full["findings"], log_path=m.log_path,
        ))


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
    # Judge each trial's window as its requests finish; stop the trials this pruner condemns (None: never).
    pruner: SloPruner | None = None
    # A lock every worker of the study shares (`study.setup_lock`): checking for a twin and claiming
    # the server is one step, or two workers drawing the same config at once would both measure it.
    claims: Callable[[], AbstractContextManager[Any]] = nullcontext

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self._started = time.monotonic()
        origin = trial.user_attrs.get(ORIGIN) or "sampler"  # every enqueue names its origin
        if ORIGIN not in trial.user_attrs:
            trial.set_user_attr(ORIGIN, origin)
        params = self.space.suggest(trial)
        # The baseline is vLLM's default config exactly: no tuned flag, not even the user's fixes.
        config = self.space.config_for(self.base, params, apply_fixed=origin != BASELINE)
        trial.set_user_attr("params", jsonable_params(config))
        # The line a user copies: with the platform's flags the server really ran with (--dtype float32
        # on a CPU without native bf16 changes the figures several-fold).
        served = as_served(config)
        trial.set_user_attr("command", served.serve_command())
        trial.set_user_attr("config", config.model_dump(mode="json", exclude_none=True))
        trial.set_user_attr(SERVED, served.model_dump(mode="json", exclude_none=True))  # best.yaml's flags
        self._emit(trial, trial_label(origin, trial.user_attrs, trial.user_attrs["params"]))

        # A config drawn again is a duplicate first, refused or not: it spends no trial of the budget.
        self._skip_duplicate(trial, config, origin)
        reason = self.space.infeasible_reason(config)
        if reason is not None:
            self._infeasible(trial, config, Measurement(ok=False, status="invalid_config", reason=reason),
                             "infeasible (not launched)")

        def say(stage: str) -> None:
            self._emit(trial, stage)

        # The baseline always runs in full: every verdict is drawn against it.
        if self.pruner is not None and origin != BASELINE and _takes_check(self.measure):
            measured = self.measure(config, say, check=self._partial_check(trial))
        else:
            measured = self.measure(config, say)
        if measured.status == PRUNED:
            self._pruned(trial, config, measured)
        if not measured.ok:
            self._infeasible(trial, config, measured, f"infeasible: {measured.status}")

        constraints = slo_constraints(self.slo, measured.client)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        feasible = all(v <= 0 for v in constraints.values())
        self._annotate(trial, measured, "complete", feasible)
        self._record(trial.number, TrialRowState.COMPLETE, "", config, measured, constraints)
        self._emit(trial, f"done: goodput {measured.goodput:.3g} req/s" + ("" if feasible else " (misses SLO)"))
        if self.pareto:
            ttft = ttft_p95(measured.client)
            return measured.goodput, ttft if ttft is not None else 1e9
        return measured.goodput

    def _skip_duplicate(self, trial: optuna.Trial, config: VllmConfig, origin: str) -> None:
        """Prune the trial, unmeasured, when another trial of the study serves the same line and has
        measured it (TPE draws its best config again and again; each draw measured anew cost a server
        start and a load window for nothing new). It takes that trial's constraints, so the sampler
        still reads the config's feasibility; the interleaved re-measurement is where configs run
        again. When another worker is measuring that line now, it waits for that trial's outcome (a
        duplicate without constraints would rank as feasible in TPE); when that trial fails (its
        worker died: stale heartbeat), this one measures. The baseline is always measured: every
        verdict is drawn against it."""
        command = trial.user_attrs.get("command")
        if trial.user_attrs.get(CLAIMED):  # a retry of a dead worker's trial copies its attrs: not its claim
            trial.set_user_attr(CLAIMED, False)
        said = False
        waiting_since = time.monotonic()
        while True:
            with self.claims():
                first = _twin(trial, command)
                if first is None or origin == BASELINE:
                    trial.set_user_attr(CLAIMED, True)
                    return
            if first.state is not TrialState.RUNNING:
                break
            if not said:
                self._emit(trial, f"waiting for trial {first.number}: another worker is measuring the same server")
                said = True
            time.sleep(TWIN_POLL_SECONDS)
            with warnings.catch_warnings():  # experimental since Optuna 2.9, and what its own workers call
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(trial.study)  # a dead worker's twin turns FAIL: then measure
        reason = f"the same server as trial {first.number}, measured already: not measured again"
        constraints = dict(first.constraints or {})
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        trial.set_user_attr("state", DUPLICATE)
        trial.set_user_attr(DUPLICATE_OF, first.number)
        trial.set_user_attr("feasible", False)
        trial.set_user_attr("reason", reason)
        trial.set_user_attr(WALL, self._wall())
        trial.set_user_attr(WAITED, round(time.monotonic() - waiting_since, 3) if said else 0.0)
        if origin == "sampler":
            with self.claims():
                instead = self._queue_instead(trial)
            trial.set_user_attr(QUEUED_INSTEAD, instead is not None)
            if instead is not None:
                reason += f"; {instead}"
                trial.set_user_attr("reason", reason)
        self._record(trial.number, TrialRowState.PRUNED, reason, config,
                     Measurement(ok=False, status=DUPLICATE, reason=reason), constraints)
        self._emit(trial, f"{DUPLICATE}: {reason}")
        raise optuna.TrialPruned(reason)

    def _queue_instead(self, trial: optuna.Trial) -> str | None:
        """Queue an unmeasured config in place of the one the sampler drew again, next in slotune's queue
        (`trial_queue`, handed to Optuna after this trial where the budget has room): one flag away from it
        where one is unmeasured (and launchable), else one drawn at random; say which (None when
        `RANDOM_DRAWS` draws found nothing new: the space is as good as measured). TPE on a small
        discrete space proposes the config it rates best over and over, each draw a duplicate that
        teaches it nothing, so it stays there (issue 16's 12-config grid: 16 of 24 trials). A
        neighbour keeps to where TPE looks and measures something new. Seeded by the study's name and
        the trial's number: a resumed or replayed study draws the same. Known configs are every
        trial's served line (`command`; a queued trial's from its params), read past Optuna's
        cache as `_twin` reads them; a failed trial's config (its worker died) may run again. Call it
        under `claims`, the lock every enqueue of the search takes.

        Where slotune's queue already holds a config (a replacement waiting for budget room, or a
        remedy), nothing more is queued and the redraw says so: it is no sign that the search has
        converged (`TrialBudget` counts redraws with nothing queued), since the next free trial
        measures that config."""
        waiting = trial_queue.pending(trial.study)
        if waiting:
            return f"{len(waiting)} unmeasured config{'' if len(waiting) == 1 else 's'} already queued (slotune's queue)"
        known = set()
        for t in uncached(trial.study).get_all_trials(trial.study._study_id, deepcopy=False):
            if t.state is TrialState.FAIL or t.number == trial.number:
                continue
            params = t.params or t.system_attrs.get("fixed_params") or {}
            line = t.user_attrs.get("command") or (self._served_line(params) if params else None)
            if line:
                known.add(line)
        rng = random.Random(f"{self.study_name}:{trial.number}")
        options = self.space.neighbours(trial.params)
        rng.shuffle(options)
        drawn = ((RANDOM, self.space.random_params(rng)) for _ in range(RANDOM_DRAWS))  # lazily: rarely needed
        for origin, params in chain(((NEIGHBOUR, p) for p in options), drawn):
            config = self.space.config_for(self.base, params)
            if self._served_line(params) in known or self.space.infeasible_reason(config) is not None:
                continue
            # Next in slotune's queue, handed to Optuna's after this trial where the budget has room.
            trial_queue.push(trial.study, [{"params": params, "attrs": {ORIGIN: origin, INSTEAD_OF: trial.number}}],
                             first=True)
            if origin == RANDOM:
                return "an unmeasured config drawn at random is queued instead (every neighbour measured)"
            moved = sorted(k for k in {*params, *trial.params} if params.get(k) != trial.params.get(k))
            shown = ", ".join(f"{k}={'default' if params.get(k) is None else params[k]}" for k in moved)
            return f"an unmeasured neighbour is queued instead ({shown})"
        return None

    def _served_line(self, params: Mapping[str, Any]) -> str:
        return as_served(self.space.config_for(self.base, params)).serve_command()

    def _partial_check(self, trial: optuna.Trial) -> PartialCheck:
        def check(figures: LoadFigures, requests: int) -> str | None:
            worst = worst_excess(self.slo, figures)
            if worst is None:
                return None
            key, ratio, value, threshold = worst
            trial.set_user_attr(SO_FAR, {"requests": requests, "target": key, "value": value, "threshold": threshold,
                                        "ratio": ratio})
            if self.pareto:  # Optuna keeps no intermediate values for several objectives
                stop = requests >= self.pruner.min_requests and ratio >= self.pruner.factor  # type: ignore[union-attr]
            else:
                trial.report(float(figures.goodput or 0.0), step=requests)
                stop = trial.should_prune()
            if not stop:
                return None
            return (f"stopped early: its first {requests} requests measured {key} {value:.3g}, "
                    f"{ratio:.1f}x its target {threshold:.3g}")
        return check

    def _pruned(self, trial: optuna.Trial, config: VllmConfig, measured: Measurement) -> None:
        # The figures so far as constraints: the sampler learns how far this region misses.
        constraints = slo_constraints(self.slo, measured.client)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        self._annotate(trial, measured, PRUNED, False)
        self._record(trial.number, TrialRowState.PRUNED, measured.reason, config, measured, constraints)
        self._emit(trial, measured.reason)
        raise optuna.TrialPruned(measured.reason)

    def _infeasible(self, trial: optuna.Trial, config: VllmConfig, measured: Measurement, stage: str) -> None:
        constraints = infeasible_constraints(self.slo)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        self._annotate(trial, measured, "infeasible", False)
        self._record(trial.number, TrialRowState.INFEASIBLE, measured.reason, config, measured, constraints)
        self._emit(trial, stage)
        raise optuna.TrialPruned(f"infeasible: {measured.reason}")

    def _annotate(self, trial: optuna.Trial, m: Measurement, state: str, feasible: bool) -> None:
        trial.set_user_attr("state", state)
        trial.set_user_attr("feasible", feasible)
        for key, value in m.to_attrs(self.slo).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(WALL, self._wall())

    def _wall(self) -> float:
        return round(time.monotonic() - getattr(self, "_started", time.monotonic()), 3)

    def _record(self, number: int, state: TrialRowState, reason: str, config: VllmConfig, m: Measurement,
                constraints: dict[str, float]) -> None:
        record_trial(self.store, self.study_name, number, state, reason, config, m, constraints,
                     rate=m.rate, status=m.status, seconds=m.seconds, **{WALL: self._wall()})

    def _emit(self, trial: optuna.Trial, stage: str) -> None:
        if self.events is None:
            return
        if stage.startswith(OUTCOME_STAGES):
            # The wall time the trials table shows (recorded just before), not a clock of the caller's.
            wall = trial.user_attrs.get(WALL)
            stage += f" ({wall if isinstance(wall, (int, float)) else self._wall():.0f} s)"
        self.events(trial.number, stage)

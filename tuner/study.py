"""A tuning study: what to tune (`TuneSpec`), and `run_study`, which runs it to the end.

Order of trials: vLLM's default config first (the baseline every result is compared with), then the
remedies the playbooks propose for the baseline's findings, then TPE (seeded, with the SLOs as
constraints). A trial that becomes the study's best (and beats the baseline) is diagnosed in turn:
its findings' remedies are queued on top of its own config (`enqueue_followups`) and run before the
baseline's remaining remedies (slotune's own queue, `tuner.trial_queue`), as an engineer fixes one
bottleneck, measures, and fixes the next. A config the sampler draws again is not
measured again: an unmeasured one is queued in its place (`TrialObjective._queue_instead`), and it
does not count toward the trial budget (`TrialBudget`). A baseline that already serves the offered
rate within the SLOs ends the search there (`verdict.nothing_to_win`: no config's goodput can exceed the offered rate). Every trial but the
baseline is judged as its window's requests finish; one whose requests so far already miss a target
by `prune_factor` (default 2x) stops there, PRUNED with its reason (`objective.SloPruner`), and is
never a candidate for the verdict. The study's wall time (summed
over resumes) and each trial's are stored (`wall_seconds`). After the search, the baseline and the best few configs are measured again in
interleaved rounds; a winner's goodput interval must clear the baseline's (see `tuner.verdict`).

Several workers may run `run_study` on one study (PostgreSQL): the setup (create, enqueue) runs
under a database-wide lock so the baseline is queued once, and each worker starts its own servers on
their own free ports.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slotune import paths
from slotune.errors import ConfigError, StoreError
from slotune.loadgen.schedule import MAX_REQUESTS
from slotune.loadgen.workload import Workload
from slotune.slo import SloSpec
from slotune.store import open_store, sqlite_file
from slotune.tuner import trial_queue
from slotune.tuner.measure import LoadSpec, Measure, Measurement, ServerMeasure
from slotune.tuner.objective import (
    BASELINE,
    DEFAULT_PRUNE_FACTOR,
    DUPLICATE,
    ORIGIN,
    QUEUED_INSTEAD,
    REMEDY,
    SEARCH_STOPPED,
    WALL,
    Events,
    SloPruner,
    TrialObjective,
)
from slotune.tuner.space import SearchSpace, model_max_len
from slotune.tuner.storage import HEARTBEAT_ATTR, HEARTBEAT_INTERVAL, open_storage, storage_url
from slotune.tuner.verdict import NOTHING_TO_WIN, nothing_to_win, rank_key, ranked
from slotune.vllm_config import VllmConfig

if TYPE_CHECKING:
    from slotune.tuner.report import StudyResult

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPEC_ATTR = "slotune_spec"
REMEDIES_DONE = "remedies_enqueued"
FOLLOWED = "remedies_followed"  # study attr: the trials whose findings' remedies are queued on top of them
FOLLOWS = "follows"  # trial attr: the trial a follow-up remedy is applied on top of


class TuneSpec(BaseModel):
    """Everything a study needs; the CLI builds one from flags, tests build one directly."""

    model_config = ConfigDict(extra="forbid")

    model: str
    workload: str | None = None
    input_len: int | None = Field(default=None, ge=1)
    output_len: int | None = Field(default=None, ge=1)
    slo: str
    trials: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    mode: Literal["offered", "capacity"] = "offered"
    rate: float | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, ge=1)
    num_requests: int = Field(default=40, ge=1, le=MAX_REQUESTS)
    warmup_requests: int = Field(default=4, ge=0, le=MAX_REQUESTS)
    space_file: Path | None = None
    fixes: list[str] = Field(default_factory=list)
    storage: str | None = None
    study_name: str | None = None
    out_dir: Path | None = None
    # The machine's price, USD/hour: the report adds cost per 1,000 output tokens (not part of the study).
    cost_per_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    pareto: bool = False
    seed: int = 0
    worker: int = Field(default=0, ge=0, description="this worker's number when several share a study")
    max_remedies: int = Field(default=3, ge=0)
    remeasure_top: int = Field(default=2, ge=0, description="best configs re-measured (0: none)")
    remeasure_repeats: int = Field(default=2, ge=1, description="interleaved re-measurement rounds")
    heartbeat_interval: int = Field(default=HEARTBEAT_INTERVAL, ge=1)
    startup_timeout: float = Field(default=240.0, gt=0)
    server_cpus: tuple[int, ...] | None = Field(
        default=None, description="confine each trial's vLLM to these cores; the load generator uses the rest")
    env: dict[str, str] = Field(default_factory=dict, description="server environment for every trial")
    served_model_name: str | None = None
    # Sampling for every request (None: the workload's own; a workload without one: the server's default).
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    # Stop a trial whose requests so far miss a target by this factor (None: every trial runs in full).
    prune_factor: float | None = Field(default=DEFAULT_PRUNE_FACTOR, gt=1)
    # The KV-cache ceiling in GiB: the KV-cache size is searched up to it (None: not searched).
    kv_cache_max_gib: int | None = Field(default=None, ge=1)
    # Extra configs queued after the baseline (tests use it for a deliberately infeasible trial).
    enqueue: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: str) -> str:
        return str(SloSpec.parse(v))  # a bad spec raises ConfigError: one line, before anything runs

    @model_validator(mode="after")
    def _launchable(self) -> TuneSpec:
        # The model, environment and served name become the server's command line: checked now,
        # when the study is asked for, by the one model that guards command-line values.
        try:
            self.base_config()
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("tune: ")) from None
        return self

    @model_validator(mode="after")
    def _one_workload(self) -> TuneSpec:
        fixed = self.input_len is not None or self.output_len is not None
        if (self.workload is None) == (not fixed):
            raise ValueError("give either a workload (name or file) or --input-len and --output-len")
        if fixed and (self.input_len is None or self.output_len is None):
            raise ValueError("--input-len and --output-len go together")
        if self.trials is None and self.timeout is None:
            self.trials = 10
        if self.rate is not None and self.concurrency is not None:
            raise ValueError("give --rate or --concurrency, not both")
        return self

    def name(self) -> str:
        if self.study_name:
            return self.study_name
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(self.model).name or "model")
        return f"tune-{stem}-{datetime.now():%Y%m%d-%H%M%S}"

    def base_config(self) -> VllmConfig:
        return VllmConfig.from_mapping(
            {"model": self.model, "env": self.env, "served_model_name": self.served_model_name}, source="tune"
        )


def load_spec_workload(spec: TuneSpec) -> Workload:
    from slotune.loadgen.workload import load_workload

    if spec.workload is not None:
        # Real prompts count their tokens with the served model's tokenizer when it is a local directory.
        workload = load_workload(spec.workload)
        if workload.prompts is not None:
            workload = workload.with_tokenizer(spec.model)
    else:
        workload = Workload.fixed(spec.input_len, spec.output_len)
    return workload.with_sampling(spec.temperature, spec.top_p)


def workload_need(workload: Workload) -> int | None:
    """Longest prompt + longest output the workload can send (what max_model_len must hold)."""
    return workload.max_total_tokens()


def build_space(spec: TuneSpec, need: int | None) -> SearchSpace:
    space = SearchSpace.default(min_model_len=need, model_max_len=model_max_len(spec.model),
                                kv_cache_max_gib=spec.kv_cache_max_gib)
    above = space.infeasible_reason(spec.base_config()) if spec.kv_cache_max_gib is not None else None
    if above and "ceiling" in above:
        raise ConfigError(f"the server environment asks for {above.removeprefix('a ')}")
    if spec.space_file is not None:
        space = space.with_file(spec.space_file)
    if spec.fixes:
        space = space.with_fixes(spec.fixes)
    return space


def check_spec(spec: TuneSpec) -> None:
    """Everything about a study that can be checked before a server starts: the workload loads, the
    search space narrows to something, the base config (model, served name) is a valid config.
    Raises `ConfigError` (one line); the API calls it so a bad request is a 422, not a failed study."""
    workload = load_spec_workload(spec)
    build_space(spec, workload_need(workload))
    spec.base_config()


# -- setup under a lock ---------------------------------------------------------------------------


def claims_lock(url: str, study_name: str) -> AbstractContextManager[None]:
    """The lock every enqueue and server claim of a study's search takes (`setup_lock` on one key):
    a worker's check for a twin, its queued replacement for a redraw, and the follow-ups of a new
    best, so none of them queues what another is queueing."""
    return setup_lock(url, f"slotune-claims:{study_name}")


LOCK_FOLDER_SUFFIX = ".slotune-locks"  # beside a SQLite database: its studies' lock files


@contextmanager
def setup_lock(url: str, key: str) -> Iterator[None]:
    """Serialize study setup across workers: an advisory lock on PostgreSQL, a file lock for SQLite (in
    the folder `DB` + `LOCK_FOLDER_SUFFIX`)."""
    if url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
                    conn.commit()
        finally:
            engine.dispose()
        return
    db = sqlite_file(url)  # however the URL is written: `sqlite+pysqlite:///`, `?timeout=30`
    if db is not None:
        # One file per key: a worker re-measuring under the setup lock must not stall others' claims.
        # They live in one folder beside the database (two per study), not beside it. They are never
        # removed: a worker may hold the file open to lock it, and a new file would not be locked.
        folder = db.with_name(db.name + LOCK_FOLDER_SUFFIX)
        try:
            folder.mkdir(exist_ok=True)
        except FileExistsError:
            raise StoreError(f"cannot lock the study: {folder} exists and is not a directory "
                             "(slotune keeps its lock files there)") from None
        except OSError as exc:
            raise StoreError(f"cannot lock the study: cannot create {folder} ({exc.strerror or exc})") from None
        lock_path = folder / hashlib.sha1(key.encode()).hexdigest()[:12]
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    yield


def _sampler_seed(spec: TuneSpec, url: str, name: str) -> int:
    """The user's seed, made distinct per worker when another worker is already at work on the study
    (identical seeds would make two workers propose the same configs), and per resume: a sampler
    seeded as the first run's replays its random start-up draws, so a resumed study measured the
    configs it already had again. The trials already stored move it on (reproducible from storage)."""
    try:
        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except KeyError:
        trials = []
    busy = any(t.state is TrialState.RUNNING for t in trials)
    return spec.seed + 7919 * spec.worker + 104_729 * len(trials) + (os.getpid() % 100_000 if busy else 0)


def open_study(spec: TuneSpec, slo: SloSpec, space: SearchSpace, name: str) -> optuna.Study:
    """Create or resume the study; refuse to resume one created for other SLOs, mode or objectives."""
    url = storage_url(spec.storage)
    storage = open_storage(url, heartbeat_interval=spec.heartbeat_interval)
    directions = ["maximize", "minimize"] if spec.pareto else ["maximize"]
    sampler = TPESampler(seed=_sampler_seed(spec, url, name), n_startup_trials=5, multivariate=False)
    identity = {"slo": str(slo), "mode": spec.mode, "pareto": spec.pareto, "model": spec.model,
                "workload": spec.workload or f"fixed:{spec.input_len}x{spec.output_len}",
                "rate": spec.rate, "concurrency": spec.concurrency, "num_requests": spec.num_requests,
                "kv_cache_max_gib": spec.kv_cache_max_gib}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with setup_lock(url, f"slotune-study:{name}"):
        study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                                    pruner=study_pruner(spec), load_if_exists=True)
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is None:
            study.set_user_attr(SPEC_ATTR, identity)
            study.set_user_attr("space", space.describe())
        else:
            differ = [k for k in identity if stored.get(k) != identity[k]]
            if differ:
                k = differ[0]
                raise ConfigError(
                    f"study {name!r} was created with {k}={stored.get(k)!r}, not {identity[k]!r}: "
                    "resume it with the same settings or pick another --study name"
                )
            changed = space_change(study.user_attrs.get("space"), space.describe())
            if changed:
                raise ConfigError(f"study {name!r} was created with another search space ({changed}): resume it "
                                  "with the same --space or pick another --study name")
        if spec.heartbeat_interval > int(study.user_attrs.get(HEARTBEAT_ATTR) or 0):
            study.set_user_attr(HEARTBEAT_ATTR, spec.heartbeat_interval)  # what a report judges staleness by
        if not any(t.user_attrs.get(ORIGIN) == BASELINE for t in study.get_trials(deepcopy=False)):
            study.enqueue_trial(space.baseline_params(), user_attrs={ORIGIN: BASELINE})
            for extra in spec.enqueue:
                study.enqueue_trial(extra, user_attrs={ORIGIN: "enqueued"}, skip_if_exists=True)
        with claims_lock(url, name):
            enqueue_remedies(study, space, spec.max_remedies)
    return study


def space_change(stored: list[dict[str, Any]] | None, now: list[dict[str, Any]]) -> str | None:
    """The first dimension searched both in a study's stored space (`SearchSpace.describe`, as JSON)
    and in this run's with other choices, in words; None when there is none or an older study stored
    no space. Optuna's samplers refuse a dimension whose choices change under them (TPE: "does not
    support dynamic value space"); a dimension fixed, freed or added is a parameter some trials lack,
    which they take."""
    if stored is None:
        return None

    def choices(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {r["name"]: list(r["choices"]) for r in rows if "fixed" not in r and "choices" in r}

    before, after = choices(stored), choices(json.loads(json.dumps(now)))  # tuples as the stored lists
    for dim, then in before.items():
        if dim in after and after[dim] != then:
            return f"{dim}: choices {then} then, {after[dim]} now"
    return None


def stops_when_nothing_to_win(spec: TuneSpec) -> bool:
    """Whether the study ends after its baseline when no config can win (`verdict.nothing_to_win`):
    in offered mode with one objective and early stopping on (`--no-prune` runs every trial). Not
    with --pareto, where a config may still lower TTFT at the same goodput, nor when the user queued
    configs of their own (`enqueue`): they asked for those to be measured."""
    return spec.mode == "offered" and not spec.pareto and spec.prune_factor is not None and not spec.enqueue


def study_pruner(spec: TuneSpec) -> SloPruner | None:
    """The pruner of a study: none in capacity mode, whose rate search is its own early stop."""
    if spec.prune_factor is None or spec.mode == "capacity":
        return None
    return SloPruner(spec.prune_factor)


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(ORIGIN) == BASELINE and t.state in FINISHED:
            return t
    return None


def enqueue_remedies(study: optuna.Study, space: SearchSpace, limit: int) -> list[dict[str, Any]]:
    """Queue the playbooks' remedies for the baseline's findings, once per study, at the back of
    slotune's queue (`trial_queue`; `feed` hands them to Optuna one at a time). At most `limit`; a
    config the study already holds is not queued again. Returns `[{"params", "why"}]`. Call it under
    the study's claims lock (`claims_lock`)."""
    base = baseline_trial(study)
    if base is None or study.user_attrs.get(REMEDIES_DONE) or study.user_attrs.get(NOTHING_TO_WIN):
        return []
    queued = remedies_of(study, base, space, limit)
    trial_queue.push(study, [{"params": q["params"], "attrs": {ORIGIN: REMEDY, "remedy": q["why"]}} for q in queued],
                      first=False)
    study.set_user_attr(REMEDIES_DONE, True)
    return queued


def remedies_of(study: optuna.Study, trial: FrozenTrial, space: SearchSpace, limit: int) -> list[dict[str, Any]]:
    """The remedies `trial`'s findings propose, on top of its config and snapped to the space's choices:
    at most `limit`, none the study holds already (`trial_queue.known_params`). `[{"params", "why"}]`,
    `why` being "playbook: the remedy's why"."""
    known = trial_queue.known_params(study)
    measured = Measurement.from_attrs(trial.user_attrs)
    queued: list[dict[str, Any]] = []
    for proposed in measured.remedies() if measured is not None else []:
        if len(queued) >= limit:
            break
        params = space.params_for_delta(dict(trial.params), proposed.remedy.config_delta)
        if params is None or params in known:
            continue
        known.append(params)
        queued.append({"params": params, "why": f"{proposed.playbook}: {proposed.remedy.why}".strip(": ")})
    return queued


def enqueue_followups(study: optuna.Study, space: SearchSpace, limit: int) -> list[dict[str, Any]]:
    """Queue the remedies of the study's best trial's own findings on top of its config, where that
    trial is not the baseline and ranks above it (`ranks_above`: feasible first, then goodput, then
    nearer its worst SLO target; a tie is not a win); at most `limit`, at the front of slotune's
    queue (`trial_queue`): depth first, before the baseline's remaining remedies, since they build
    on the better config. Looked at after every finished trial and when a run starts, so a best found
    while another worker still measured the baseline is followed too; once per trial (study attr
    `remedies_followed`). A remedy that fixes the first bottleneck leaves the next one in its window:
    on issue 16's grid (the real model, concurrency 2, `tpot_p95<=60ms`) n-gram drafting cut TPOT p95
    from 159 to 97 ms, and its own findings proposed `max_num_seqs 1` on top, the one config of 12
    that met the target; TPE would have to find that pair by chance. Returns what was queued:
    `[{"params", "why"}]`. Call it under the study's claims lock (`claims_lock`)."""
    base = baseline_trial(study)
    if base is None or study.user_attrs.get(NOTHING_TO_WIN):
        return []
    order = ranked(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    followed = list(study.user_attrs.get(FOLLOWED) or [])
    if not order or order[0].number == base.number or order[0].number in followed:
        return []
    best = order[0]
    if not ranks_above(best, base):
        return []
    queued = [{**q, "why": f"{q['why']} (on top of trial {best.number})"}
              for q in remedies_of(study, best, space, limit)]
    trial_queue.push(study, [{"params": q["params"], "attrs": {ORIGIN: REMEDY, "remedy": q["why"], FOLLOWS: best.number}}
                              for q in queued], first=True)
    study.set_user_attr(FOLLOWED, [*followed, best.number])
    return queued


# How much closer to its worst SLO target than the baseline a trial that serves no more than it (goodput 0
# alike, both missing a target) must come to be built on: a tenth of the threshold, past one run's noise
# on a p95 of a few dozen requests (docs/tuner.md, "Then the best, diagnosed again").
CLOSER_BY = 0.1


def ranks_above(t: FrozenTrial, base: FrozenTrial) -> bool:
    """`t` is worth building on: above the baseline by feasibility or goodput (`verdict.rank_key`; a tie
    is not a win), or, tied on both, nearer its worst SLO target by `CLOSER_BY` of the threshold. A
    fix that shows only together with another (n-gram drafting cuts TPOT p95 from 150 to 97 ms
    against 60 ms, goodput 0 still; `max_num_seqs 1` on top meets it) is built on only so."""
    key, base_key = rank_key(t), rank_key(base)
    if key[:2] != base_key[:2]:
        return key[:2] < base_key[:2]
    return key[2] <= base_key[2] - CLOSER_BY


def room_left(study: optuna.Study, trials: int | None) -> int:
    """Trials the budget has left for new work: `trials` less those that spent it (`measured_count`),
    run now or wait in Optuna's queue. A remedy handed to Optuna past the budget would not run in this
    run and linger in the report as waiting (`trial_queue.feed`). Unbounded (`trials` None): a large
    number."""
    if trials is None:
        return 1 << 30
    busy = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))
    return max(0, trials - measured_count(study) - busy)


def spends_budget(t: FrozenTrial) -> bool:
    """A finished trial spends the budget when measured, stopped early or refused; a duplicate does not
    (a config drawn again starts no server, and `--trials N` means N configs tried)."""
    return t.state in FINISHED and t.user_attrs.get("state") != DUPLICATE


def measured_count(study: optuna.Study) -> int:
    """Finished trials that spent the budget (`spends_budget`)."""
    return sum(map(spends_budget, study.get_trials(deepcopy=False, states=FINISHED)))


# The sampler's duplicates in a row with nothing unmeasured to queue instead
# (`TrialObjective._queue_instead`) after which the search has nowhere new to go: it ends there.
CONVERGED_AFTER = 3


class TrialBudget:
    """Stop the study once `trials` finished trials spent the budget (`measured_count`), every worker's
    together (Optuna's `MaxTrialsCallback` would count the duplicates too; `trials` None: no budget,
    as with `--timeout` alone), or once the sampler drew measured configs `CONVERGED_AFTER` times in
    a row with nothing unmeasured to queue instead (study attr `search_stopped` says so)."""

    def __init__(self, trials: int | None) -> None:
        self.trials = trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)
        if self.trials is not None and sum(map(spends_budget, finished)) >= self.trials:
            study.stop()
            return
        streak = 0
        for t in reversed(finished):
            ua = t.user_attrs
            if ua.get("state") != DUPLICATE or ua.get(ORIGIN) != "sampler" or ua.get(QUEUED_INSTEAD):
                break
            streak += 1
        if streak >= CONVERGED_AFTER:
            study.set_user_attr(SEARCH_STOPPED, f"the sampler drew measured configs {streak} times in a row and "
                                                "no unmeasured config was left to measure instead")
            study.stop()


# -- running --------------------------------------------------------------------------------------


def run_study(spec: TuneSpec, *, measure: Measure | None = None, events: Events | None = None,
              workload: Workload | None = None) -> StudyResult:
    """Run (or resume) a study to its trial budget or timeout; re-measure; write the results."""
    from slotune.tuner.report import summarize, write_outputs
    from slotune.tuner.verdict import remeasure

    started = time.monotonic()
    slo = SloSpec.parse(spec.slo)
    if measure is None or workload is not None:
        workload = workload if workload is not None else load_spec_workload(spec)
    need = workload_need(workload) if workload is not None else None
    space = build_space(spec, need)
    name = spec.name()
    url = storage_url(spec.storage)
    store = open_store(url)
    if measure is None:
        load = LoadSpec(workload=workload, slo=slo, mode=spec.mode, rate=spec.rate, concurrency=spec.concurrency,
                        num_requests=spec.num_requests, warmup_requests=spec.warmup_requests, seed=spec.seed)
        measure = ServerMeasure(load, log_dir=paths.logs_dir() / "tune" / name, startup_timeout=spec.startup_timeout,
                                server_cpus=spec.server_cpus)

    study = open_study(spec, slo, space, name)
    objective = TrialObjective(space, spec.base_config(), measure, slo, store, name, spec.pareto, events,
                               pruner=study_pruner(spec), claims=lambda: claims_lock(url, name))

    def after_trial(st: optuna.Study, trial: FrozenTrial) -> None:
        why = None
        if trial.user_attrs.get(ORIGIN) == BASELINE and stops_when_nothing_to_win(spec):
            why = nothing_to_win(spec.rate, trial, st.user_attrs, slo)
        queue_next(st, nothing_to_win=why)
        if st.user_attrs.get(NOTHING_TO_WIN):  # every worker stops after its trial in hand
            st.stop()

    def queue_next(st: optuna.Study, nothing_to_win: str | None = None) -> None:
        """The baseline's remedies once it is measured (none when nothing can win), the follow-ups of
        a new best, and the first trial in slotune's queue into Optuna's for this worker's next trial."""
        with claims_lock(url, name):  # the lock every enqueue of the search takes (objective's claims)
            if nothing_to_win is not None:  # before any remedy is queued: none would ever run
                st.set_user_attr(NOTHING_TO_WIN, nothing_to_win)
            enqueue_remedies(st, space, spec.max_remedies)
            enqueue_followups(st, space, spec.max_remedies)
            trial_queue.feed(st, room_left(st, spec.trials))

    with setup_lock(url, f"slotune-study:{name}"):
        # A resumed study searches again: a stop recorded by an earlier run (its space or budget may
        # have changed since) is set anew if it still holds.
        if study.user_attrs.get(SEARCH_STOPPED):
            study.set_user_attr(SEARCH_STOPPED, "")
    queue_next(study)  # a resumed study's pending remedies; a best an earlier run did not follow
    callbacks: list[Any] = [after_trial, TrialBudget(spec.trials)]
    remaining = None if spec.trials is None else spec.trials - measured_count(study)
    if (remaining is None or remaining > 0) and not study.user_attrs.get(NOTHING_TO_WIN):
        first = len(study.get_trials(deepcopy=False))
        # Room for as many duplicates as trials left (each costs no server); `TrialBudget` ends it sooner.
        study.optimize(objective, n_trials=None if remaining is None else 2 * remaining, timeout=spec.timeout,
                       callbacks=callbacks, catch=(), gc_after_trial=False)
        timed_out = spec.timeout is not None and time.monotonic() - started >= spec.timeout
        if (spec.trials is not None and measured_count(study) < spec.trials and not timed_out
                and not study.user_attrs.get(NOTHING_TO_WIN) and not study.user_attrs.get(SEARCH_STOPPED)):
            dups = sum(1 for t in study.get_trials(deepcopy=False)[first:] if t.user_attrs.get("state") == DUPLICATE)
            study.set_user_attr(SEARCH_STOPPED, f"the sampler drew measured configs {dups} times in this run, as many "
                                                "as it had trials left")
    if spec.remeasure_top > 0 and not study.user_attrs.get(NOTHING_TO_WIN):
        # One worker at a time: each re-reads what is already measured (so runs are neither lost nor
        # doubled), and two servers measured at once would break the interleaving's fair comparison.
        with setup_lock(url, f"slotune-remeasure:{name}"):
            remeasure(study, space, spec.base_config(), measure, slo, store, top=spec.remeasure_top,
                      repeats=spec.remeasure_repeats, events=events)
    with setup_lock(url, f"slotune-study:{name}"):  # several workers add their own time
        before = float(optuna.load_study(study_name=name, storage=url).user_attrs.get(WALL) or 0.0)
        study.set_user_attr(WALL, round(before + time.monotonic() - started, 3))
    result: StudyResult = summarize(url, name)
    result.cost_per_hour = spec.cost_per_hour
    if spec.out_dir is not None:
        write_outputs(result, study, spec.out_dir)
    store.dispose()
    return result



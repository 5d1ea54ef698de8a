"""A study never measures the same server twice in its search phase: TPE draws the config it rates best
again and again, and each draw measured anew costs a server start and a load window for nothing new.
A trial whose served line an earlier trial of the study already ran is PRUNED unmeasured (state
`duplicate`, `duplicate_of` that trial, its constraints); the report counts it as a duplicate, not as
infeasible; the verdict (which re-measures configs on purpose) is the one a study without duplicates
reaches. A duplicate does not count toward `--trials`; a sampler that draws measured configs three
times in a row, with nothing unmeasured one flag away, ends the search and says so. Real Optuna
storage (SQLite) and the synthetic measurement of tests.support.tuner."""

from __future__ import annotations

import io
import time
from collections import Counter
from itertools import cycle
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from sqlalchemy import select

from slotune.store import TrialRecord, open_store
from slotune.tuner.measure import Measurement
from slotune.tuner.report import render
from slotune.tuner.study import TuneSpec, run_study
from tests.support.tuner import FakeMeasure, client, requests, space_yaml

# Every dimension fixed at vLLM's default but max_num_seqs, searched over {default, 32}: whatever TPE
# draws, the study holds two distinct servers (vLLM's default and --max-num-seqs 32).
TWO_CONFIGS = space_yaml(max_num_seqs="[default, 32]")


def spec(tmp_path: Path, **kw) -> TuneSpec:
    space = tmp_path / "space.yaml"
    space.write_text(TWO_CONFIGS)
    base = {"model": "/models/tiny", "input_len": 32, "output_len": 16, "slo": "ttft_p95<=1s", "trials": 6,
            "storage": f"sqlite:///{tmp_path}/s.db", "study_name": "s", "remeasure_top": 0, "max_remedies": 0,
            "space_file": space}
    return TuneSpec(**{**base, **kw})


def _trials(s: TuneSpec) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=s.storage).get_trials()


def test_each_distinct_server_is_measured_once_and_the_other_draws_are_duplicates(tmp_path):
    fm = FakeMeasure()
    s = spec(tmp_path)
    run_study(s, measure=fm)
    trials = _trials(s)
    # Two servers measured, then three draws of them with no neighbour left: the search has converged.
    assert len(trials) == 5 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    stopped = optuna.load_study(study_name="s", storage=s.storage).user_attrs["search_stopped"]
    assert stopped.startswith("the sampler drew measured configs 3 times in a row"), stopped
    commands = [t.user_attrs["command"] for t in trials]
    assert len(set(commands)) == 2, commands  # the space holds two servers, and TPE drew both
    # One measurement per distinct server, in the order the study first met them.
    assert [c.max_num_seqs for c in fm.calls] == [None, 32]
    first = {cmd: commands.index(cmd) for cmd in commands}
    measured = sorted(first.values())
    for t in trials:
        if t.number in measured:
            assert t.state is TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
            continue
        n = first[t.user_attrs["command"]]
        assert t.state is TrialState.PRUNED and t.user_attrs["state"] == "duplicate"
        assert t.user_attrs["duplicate_of"] == n and t.user_attrs["feasible"] is False
        assert t.user_attrs["reason"] == f"the same server as trial {n}, measured already: not measured again"
        assert t.constraints == trials[n].constraints  # the sampler still reads the config's feasibility
        assert isinstance(t.user_attrs["wall_seconds"], float)
        assert t.user_attrs["waited_seconds"] == 0.0  # its twin had finished: nothing to wait for
        assert "goodput" not in t.user_attrs  # nothing measured, nothing pretends to be
    # slotune's own table: one row per trial, the duplicates as `pruned` (the column's vocabulary) with the reason.
    with open_store(s.storage).session() as sess:
        recs = {r.trial_number: r for r in sess.scalars(select(TrialRecord).where(TrialRecord.study_name == "s"))}
    assert sorted(recs) == list(range(5))
    for t in trials:
        if t.number not in measured:
            r = recs[t.number]
            assert r.state == "pruned" and r.reason == t.user_attrs["reason"]
            assert r.metrics["status"] == "duplicate" and r.metrics["constraints"] == trials[first[t.user_attrs["command"]]].constraints


def test_the_report_counts_duplicates_as_such_not_as_infeasible(tmp_path):
    s = spec(tmp_path, out_dir=tmp_path / "out")
    result = run_study(s, measure=FakeMeasure())
    c = result.counts
    assert (c["complete"], c["duplicate"], c["infeasible"], c["pruned"], c["total"]) == (2, 3, 0, 0, 5), c
    states = Counter(r["state"] for r in result.rows)
    assert states == {"complete": 2, "duplicate": 3}, states
    dup = next(r for r in result.rows if r["state"] == "duplicate")
    assert "the same server as trial" in dup["reason"] and dup["goodput"] is None
    console = Console(width=100, file=io.StringIO(), record=True, color_system=None)
    render(result, console)
    text = " ".join(console.export_text().split())
    assert "2 measured, 0 stopped early, 0 infeasible, 3 duplicates (not measured), 0 failed" in text, text
    assert "search stopped before its trial budget: the sampler drew measured configs 3 times in a row" in text
    page = " ".join((tmp_path / "out" / "report.html").read_text().split())
    assert "2 measured, 0 stopped early, 0 infeasible, 3 duplicates (not measured), 0 failed" in page
    assert "search stopped before its trial budget: the sampler drew measured configs" in page
    assert result.to_dict()["search_stopped"].startswith("the sampler drew measured configs")


def _by_config(base: list[float], tuned: list[float], log: list[str]):
    """A measure that hands out these goodputs in turn, over and over (every request good, TTFT well inside
    the SLO): `base` for vLLM's default config, `tuned` for any other. A duplicate measured anyway would
    take the next figure and shift every later sample."""
    queues = {True: cycle(base), False: cycle(tuned)}

    def measure(config, progress=None):
        is_base = config.tuned_params() == {}
        g = next(queues[is_base])
        log.append("base" if is_base else "tuned")
        return Measurement(ok=True, goodput=g, client=client(0.1, g), requests=requests(g, 0.1, good_share=1.0))

    return measure


def test_the_verdict_is_the_one_a_study_without_duplicates_reaches(tmp_path):
    # The same two servers, trial 0 (vLLM's default) and trial 1 (--max-num-seqs 32): once alone, once
    # followed by sampled trials that can only draw them again (three, then the search has converged).
    figures = ([2.0, 2.1, 1.9, 2.6], [4.0, 4.1, 3.9, 2.2])
    runs = {}
    for trials in (2, 6):
        where = tmp_path / str(trials)
        where.mkdir()
        log: list[str] = []
        s = spec(where, trials=trials, enqueue=[{"max_num_seqs": 32}], remeasure_top=1, remeasure_repeats=2)
        runs[trials] = (run_study(s, measure=_by_config(*figures, log)), log, s)
    alone, with_dups = runs[2][0], runs[6][0]
    assert with_dups.counts["duplicate"] == 3 and alone.counts["duplicate"] == 0
    # The search measured each server once; the re-measurement measured the two again, never a duplicate.
    assert runs[6][1] == runs[2][1] == ["base", "tuned"] + ["base", "tuned"] * 2
    attrs = optuna.load_study(study_name="s", storage=runs[6][2].storage).user_attrs
    assert sorted(k for k in attrs if k.startswith("remeasure:")) == ["remeasure:0", "remeasure:1"]
    assert with_dups.verdict.recommendation == "tuned" and with_dups.verdict.winner == 1, with_dups.verdict.message
    assert with_dups.verdict.to_dict() == alone.verdict.to_dict()


def _served_line_of_32(tmp_path: Path) -> str:
    """The served line of --max-num-seqs 32, as a study of its own records it."""
    where = tmp_path / "probe"
    where.mkdir()
    probe = spec(where, trials=2, enqueue=[{"max_num_seqs": 32}])
    run_study(probe, measure=FakeMeasure())
    command = _trials(probe)[1].user_attrs["command"]
    assert "--max-num-seqs 32" in command
    return command


def _running_elsewhere(s: TuneSpec, command: str, *, claimed: bool,
                       then: TrialState | None = None, after: float = 1.5) -> int:
    """A trial another worker is running now (RUNNING, serving `command`): its number. With `then`,
    that worker ends it `after` seconds after the study's own trial of that server appears (not after
    this call: on a loaded host the baseline before it can take longer than `after`, and the twin
    would be over before the duplicate looked): COMPLETE with goodput 1.0 and a met constraint, or FAIL."""
    import threading

    study = optuna.create_study(study_name="s", storage=s.storage)
    trial = study.ask()
    trial.set_user_attr("command", command)
    if claimed:
        trial.set_user_attr("claimed", True)
    if then is not None:
        def twin_appeared() -> bool:
            return any(t.number != trial.number and t.user_attrs.get("command") == command
                       for t in study.get_trials(deepcopy=False))

        def end() -> None:
            deadline = time.monotonic() + 120
            while not twin_appeared() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(after)
            if then is TrialState.COMPLETE:
                trial.set_constraint("ttft_p95", -0.5)
                study.tell(trial, 1.0)
            else:
                study.tell(trial, state=then)
        threading.Thread(target=end, daemon=True).start()
    return trial.number


def test_a_server_another_worker_is_measuring_is_waited_for_not_measured_again(tmp_path):
    # Two workers drawing one config at once both measured it (the twin was still running, so the
    # check saw no finished trial): CI's threaded two-worker test caught it once in many runs. Here the
    # other worker's trial is a RUNNING trial of the same server that claimed it, made by hand, and
    # ended by "its worker" 1.5 s later: the duplicate waits for it and takes its constraints (without
    # any, TPE would rank the duplicate as feasible).
    command = _served_line_of_32(tmp_path)
    s = spec(tmp_path, trials=3, enqueue=[{"max_num_seqs": 32}])
    other = _running_elsewhere(s, command, claimed=True, then=TrialState.COMPLETE)
    fm = FakeMeasure()
    result = run_study(s, measure=fm)
    assert [c.max_num_seqs for c in fm.calls] == [None], fm.calls  # the baseline only
    dup = next(t for t in _trials(s) if t.number != other and t.user_attrs.get("command") == command)
    assert dup.state is TrialState.PRUNED and dup.user_attrs["state"] == "duplicate"
    assert dup.user_attrs["duplicate_of"] == other and dup.constraints == {"ttft_p95": -0.5}
    assert dup.user_attrs["wall_seconds"] >= dup.user_attrs["waited_seconds"] >= 1.0  # it waited for that outcome
    # The study's wall summary tells the wait apart from measuring.
    assert result.wall["waited"] == dup.user_attrs["waited_seconds"]
    out = io.StringIO()
    render(result, Console(file=out, width=200))
    assert "of it duplicates waiting for another worker's run of their server" in out.getvalue(), out.getvalue()
    assert dup.user_attrs["reason"] == f"the same server as trial {other}, measured already: not measured again"


def test_when_the_twin_fails_the_waiting_trial_measures(tmp_path):
    # The other worker died (its trial FAIL, as a stale heartbeat makes it): nobody measured the server.
    command = _served_line_of_32(tmp_path)
    s = spec(tmp_path, trials=3, enqueue=[{"max_num_seqs": 32}])
    _running_elsewhere(s, command, claimed=True, then=TrialState.FAIL, after=1.0)
    fm = FakeMeasure()
    run_study(s, measure=fm)
    assert [c.max_num_seqs for c in fm.calls][:2] == [None, 32], fm.calls


def test_a_running_trial_that_never_claimed_its_server_is_no_twin(tmp_path):
    # One stored by a slotune before claims, or not yet at its check: it does not stop a measurement.
    command = _served_line_of_32(tmp_path)
    s = spec(tmp_path, trials=2, enqueue=[{"max_num_seqs": 32}])
    _running_elsewhere(s, command, claimed=False)
    fm = FakeMeasure()
    run_study(s, measure=fm)
    assert [c.max_num_seqs for c in fm.calls] == [None, 32]

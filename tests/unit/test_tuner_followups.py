"""Where the search goes after the baseline's remedies: a trial that becomes the study's best is
diagnosed in turn and its findings' remedies are queued on top of its own config (issue 16: n-gram
drafting cut TPOT and left the prefill stalls, whose remedy then has to join it); a config the sampler
draws again queues an unmeasured neighbour in its place, so TPE on a small space does not spend its
trials redrawing the one config it rates best. Real Optuna storage (SQLite), synthetic measurements."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from slotune.tuner import space as space_mod
from slotune.tuner.measure import Measurement
from slotune.tuner.study import TuneSpec, run_study
from slotune.vllm_config import VllmConfig
from tests.support.tuner import client, finding, requests, run_workers, space_yaml, window

SPACE = space_yaml(max_num_seqs="[default, 32, 64]", max_num_batched_tokens="[default, 512, 1024]")

SEQS = ({"max_num_seqs": 32}, "a smaller batch")
BUDGET = ({"max_num_batched_tokens": 512}, "a smaller prefill budget")


def spec(tmp_path: Path, **kw) -> TuneSpec:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    base = {"model": "/models/tiny", "input_len": 32, "output_len": 16, "slo": "ttft_p95<=1s", "trials": 3,
            "storage": f"sqlite:///{tmp_path}/s.db", "study_name": "s", "remeasure_top": 0, "space_file": path}
    return TuneSpec(**{**base, **kw})


BIG_BUDGET = ({"max_num_batched_tokens": 1024}, "a larger prefill budget")


def staged(goodput_of_seqs32: float, log: list[VllmConfig], *, second_remedy: bool = False, pause: float = 0.0):
    """The defaults serve 1 req/s and their finding proposes `max_num_seqs 32` (and, with
    `second_remedy`, a 1,024-token prefill budget besides); `max_num_seqs 32` serves `goodput_of_seqs32`
    and its own finding proposes a 512-token prefill budget on top; both together serve 3 req/s;
    anything else 0.5. Every run meets the SLO and takes `pause` seconds (two workers take turns)."""
    import time

    def measure(config: VllmConfig, progress=None) -> Measurement:
        log.append(config)
        time.sleep(pause)
        tuned = config.tuned_params()
        findings: tuple = ()
        if tuned == {}:
            g, findings = 1.0, (finding("slow_decode", "warning", "slow", SEQS),)
            if second_remedy:
                findings += (finding("prefill_stalls_decode", "warning", "stalls", BIG_BUDGET),)
        elif tuned == {"max_num_seqs": 32}:
            g, findings = goodput_of_seqs32, (finding("prefill_stalls_decode", "warning", "stalls", BUDGET),)
        elif tuned == {"max_num_seqs": 32, "max_num_batched_tokens": 512}:
            g = 3.0
        else:
            g = 0.5
        return Measurement(ok=True, goodput=g, client=client(0.1, g), server=window(kv_cache_usage=0.5),
                           findings=findings, requests=requests(g, 0.1, good_share=1.0))
    return measure


def _trials(s: TuneSpec) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=s.storage).get_trials()


def test_a_remedy_that_beats_the_baseline_is_diagnosed_and_the_next_remedy_goes_on_top(tmp_path):
    log: list[VllmConfig] = []
    s = spec(tmp_path)
    run_study(s, measure=staged(2.0, log))
    trials = _trials(s)
    assert [t.user_attrs["origin"] for t in trials] == ["baseline", "remedy", "remedy"]
    assert trials[1].params["max_num_seqs"] == 32 and "follows" not in trials[1].user_attrs
    follow = trials[2]
    assert (follow.params["max_num_seqs"], follow.params["max_num_batched_tokens"]) == (32, 512)
    assert follow.user_attrs["follows"] == 1
    assert follow.user_attrs["remedy"] == "prefill_stalls_decode: a smaller prefill budget (on top of trial 1)"
    assert log[2].tuned_params() == {"max_num_seqs": 32, "max_num_batched_tokens": 512}
    # Each best is followed once: trial 2 (the new best, no finding) is recorded, nothing queued.
    assert optuna.load_study(study_name="s", storage=s.storage).user_attrs["remedies_followed"] == [1, 2]


def test_a_remedy_that_does_not_beat_the_baseline_is_not_built_on(tmp_path):
    log: list[VllmConfig] = []
    s = spec(tmp_path)
    run_study(s, measure=staged(0.8, log))
    trials = _trials(s)
    assert [t.user_attrs["origin"] for t in trials[:2]] == ["baseline", "remedy"]
    assert all("follows" not in t.user_attrs for t in trials)
    assert 1 not in (optuna.load_study(study_name="s", storage=s.storage).user_attrs.get("remedies_followed") or [])


def test_neighbours_move_one_flag_and_keep_the_dependent_ones_consistent():
    from slotune import platforms

    sp = space_mod.SearchSpace.default(plat=platforms.CPU)
    start = sp.baseline_params()
    near = sp.neighbours(start)
    assert near and start not in near
    plain = [n for n in near if space_mod.SPEC_METHOD not in n or n[space_mod.SPEC_METHOD] is None]
    assert all(sum(n.get(k) != start.get(k) for k in {*n, *start}) == 1 for n in plain)
    # Turning drafting on brings K (and the n-gram window) at their remedy defaults; off drops them.
    on = next(n for n in near if n.get(space_mod.SPEC_METHOD) == "ngram")
    assert on[space_mod.SPEC_TOKENS] is not None and on[space_mod.LOOKUP_MIN] is not None
    off = sp.neighbours(on)
    back = next(n for n in off if n[space_mod.SPEC_METHOD] is None)
    assert space_mod.SPEC_TOKENS not in back and space_mod.LOOKUP_MIN not in back


def test_a_config_the_sampler_draws_again_queues_an_unmeasured_neighbour(tmp_path):
    # No remedies: the search is the sampler's. On this 9-config space TPE's draws repeat; each
    # repeat queues a neighbour of it that nothing has measured (or, with every neighbour measured,
    # an unmeasured config at random), which the next trial measures.
    log: list[VllmConfig] = []
    s = spec(tmp_path, trials=9, max_remedies=0, seed=3)
    run_study(s, measure=staged(2.0, log))
    trials = _trials(s)
    dups = [t for t in trials if t.user_attrs.get("state") == "duplicate"]
    swaps = [t for t in trials if t.user_attrs.get("origin") == "neighbour"]
    drawn = [t for t in trials if t.user_attrs.get("origin") == "random"]
    assert swaps and drawn, [t.user_attrs.get("reason") for t in dups]  # both kinds, with seed 3
    by_number = {t.number: t for t in trials}
    for n in swaps:
        dup = by_number[n.user_attrs["instead_of"]]
        assert dup.user_attrs["state"] == "duplicate" and dup.user_attrs["origin"] == "sampler"
        assert "an unmeasured neighbour is queued instead" in dup.user_attrs["reason"]
        moved = [k for k in dup.params if dup.params[k] != n.params.get(k)]
        assert len(moved) == 1, (dup.params, n.params)
        assert n.state is optuna.trial.TrialState.COMPLETE  # measured, not a duplicate itself
    for n in drawn:
        dup = by_number[n.user_attrs["instead_of"]]
        assert "an unmeasured config drawn at random is queued instead (every neighbour measured)" in \
            dup.user_attrs["reason"]
    commands = [c.serve_command() for c in log]
    assert len(commands) == len(set(commands))  # each server measured once
    assert len(log) == 9  # the budget counts measured configs: duplicates aside, 9 of 9 measured



def test_no_follow_up_is_queued_past_the_trial_budget(tmp_path):
    # Two trials: the baseline and its remedy spend the budget. Trial 1's follow-up stays in slotune's
    # own queue: handed to Optuna it would never run and would linger in the report as a waiting trial.
    # The report names it as not run instead.
    import io

    from rich.console import Console

    from slotune.tuner.report import render

    log: list[VllmConfig] = []
    s = spec(tmp_path, trials=2, out_dir=tmp_path / "out")
    result = run_study(s, measure=staged(2.0, log))
    trials = _trials(s)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert result.counts["waiting"] == 0 and all("follows" not in t.user_attrs for t in trials)
    assert result.to_dict()["pending_remedies"] == [{
        "params": {"max_num_seqs": 32, "max_num_batched_tokens": 512},
        "why_tried": "remedy of prefill_stalls_decode, on top of trial 1",
        "label": "remedy of prefill_stalls_decode, on top of trial 1: max_num_seqs=32 max_num_batched_tokens=512"}]
    out = io.StringIO()
    render(result, Console(file=out, width=80))
    assert ("queued, not run (a resume with more trials runs it): remedy of prefill_stalls_decode, on top of "
            "trial 1: max_num_seqs=32 max_num_batched_tokens=512") in out.getvalue()
    page = " ".join((tmp_path / "out" / "report.html").read_text().split())
    assert ("queued, not run (a resume with more trials runs them): remedy of prefill_stalls_decode, on top of "
            "trial 1: max_num_seqs=32 max_num_batched_tokens=512") in page


def test_a_follow_up_on_a_new_best_runs_before_the_baselines_other_remedies(tmp_path):
    # Depth first: the baseline's first remedy beats it, so the fix its own finding proposes on top
    # runs next, before the baseline's second remedy (an alternative to the first fix). First in,
    # first out (Optuna's queue) ran that second remedy first: issue 16's grid reached its best a
    # trial later so.
    log: list[VllmConfig] = []
    s = spec(tmp_path, trials=4)
    run_study(s, measure=staged(2.0, log, second_remedy=True))
    assert [c.tuned_params() for c in log] == [
        {}, {"max_num_seqs": 32}, {"max_num_seqs": 32, "max_num_batched_tokens": 512}, {"max_num_batched_tokens": 1024}]
    trials = _trials(s)
    assert [t.user_attrs.get("follows") for t in trials] == [None, None, 1, None]
    assert trials[3].user_attrs["remedy"] == "prefill_stalls_decode: a larger prefill budget"
    assert optuna.load_study(study_name="s", storage=s.storage).user_attrs["pending_trials"] == []


def test_the_trial_queue_feeds_optuna_one_trial_at_a_time(tmp_path):
    # `feed` hands over the first pending entry only when Optuna's queue is empty and the budget has
    # room, and drops an entry whose config the study has tried meanwhile.
    from slotune.tuner import trial_queue

    study = optuna.create_study(study_name="q", storage=f"sqlite:///{tmp_path}/q.db")
    entry = lambda n: {"params": {"max_num_seqs": n}, "attrs": {"origin": "remedy", "remedy": f"r{n}"}}  # noqa: E731
    trial_queue.push(study, [entry(1), entry(2)], first=False)
    trial_queue.push(study, [entry(3)], first=True)
    assert [e["params"]["max_num_seqs"] for e in trial_queue.pending(study)] == [3, 1, 2]
    assert trial_queue.feed(study, room=0) is None  # no room: nothing handed over
    assert trial_queue.feed(study, room=5) == entry(3)
    assert trial_queue.feed(study, room=5) is None  # trial 3 still waits in Optuna's queue
    trial = study.ask()  # the next trial pops it
    assert trial.suggest_int("max_num_seqs", 1, 3) == 3 and trial.user_attrs["remedy"] == "r3"
    study.tell(trial, 1.0)
    study.enqueue_trial({"max_num_seqs": 1})  # config 1 queued by another path meanwhile
    t = study.ask()
    assert t.suggest_int("max_num_seqs", 1, 3) == 1
    study.tell(t, 1.0)
    assert trial_queue.feed(study, room=5) == entry(2)  # 1 is tried already: dropped, not run twice
    assert trial_queue.pending(study) == []
    assert trial_queue.known_params(study) == [{"max_num_seqs": 3}, {"max_num_seqs": 1}, {"max_num_seqs": 2}]


def test_two_workers_run_each_remedy_once_and_leave_none_waiting(tmp_path):
    # Two workers (threads; real SQLite with slotune's file locks) share the remedy queue: every
    # remedy and follow-up runs once, no config twice, and nothing is left in either queue.
    log: list[VllmConfig] = []
    run_workers([spec(tmp_path, trials=6, worker=n) for n in (0, 1)], staged(2.0, log, second_remedy=True, pause=0.2))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    trials = study.get_trials()
    # Each remedy's config is measured (by its remedy trial, or by the other worker's sampler first:
    # then the remedy is dropped, not run again).
    tuned = [c.tuned_params() for c in log]
    for config in ({"max_num_seqs": 32}, {"max_num_batched_tokens": 1024},
                   {"max_num_seqs": 32, "max_num_batched_tokens": 512}):
        assert config in tuned, tuned
    texts = {re.sub(r"trial \d+", "trial N", str(t.user_attrs["remedy"]))
             for t in trials if t.user_attrs.get("origin") == "remedy"}
    assert texts <= {"slow_decode: a smaller batch", "prefill_stalls_decode: a larger prefill budget",
                     "prefill_stalls_decode: a smaller prefill budget (on top of trial N)"}, texts
    served = [c.serve_command() for c in log]
    assert len(served) == len(set(served)), served
    # What the queue keeps is a redraw's replacement the budget had no room for, never a remedy.
    assert {e["attrs"]["origin"] for e in study.user_attrs["pending_trials"]} <= {"neighbour", "random"}
    left = [(t.number, t.state.name, t.user_attrs) for t in trials if t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)]
    assert not left, left


def test_follow_ups_cut_by_the_budget_are_queued_when_a_resume_has_room(tmp_path):
    log: list[VllmConfig] = []
    run_study(spec(tmp_path, trials=2), measure=staged(2.0, log))  # no room for trial 1's follow-up
    run_study(spec(tmp_path, trials=3), measure=staged(2.0, log))
    trials = _trials(spec(tmp_path))
    assert len(trials) == 3 and trials[2].user_attrs.get("follows") == 1
    assert log[2].tuned_params() == {"max_num_seqs": 32, "max_num_batched_tokens": 512}


def test_with_a_timeout_alone_the_search_still_ends_when_nothing_is_left_to_measure(tmp_path):
    log: list[VllmConfig] = []
    s = spec(tmp_path, trials=None, timeout=600, max_remedies=0, seed=3)
    run_study(s, measure=staged(2.0, log))
    study = optuna.load_study(study_name="s", storage=s.storage)
    assert len(log) == 9  # the whole space, each config once
    assert study.user_attrs["search_stopped"].startswith("the sampler drew measured configs 3 times in a row")
    assert sum(t.user_attrs.get("state") == "duplicate" for t in study.trials) < 9


def test_a_resumed_study_judges_its_stop_anew(tmp_path):
    # Two configs: the search converges. Resumed, it searches again (a stop is not kept from an
    # earlier run: its budget may have grown) and, its draw measured already like the three before
    # it, stops again, saying so; nothing is measured twice.
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(space_yaml(max_num_seqs="[default, 32]"))
    log: list[VllmConfig] = []
    s = spec(tmp_path, trials=5, max_remedies=0, space_file=narrow)
    run_study(s, measure=staged(2.0, log))
    before = len(_trials(s))
    result = run_study(s, measure=staged(2.0, log))
    assert len(log) == 2 and len(_trials(s)) == before + 1
    assert result.search_stopped.startswith("the sampler drew measured configs 4 times in a row")


def test_the_report_says_why_each_queued_trial_ran(tmp_path):
    # A follow-up reads as its playbook's remedy on top of the trial it builds on, in the terminal,
    # report.html and the JSON (it read as a bare "remedy" before, its parent in the JSON only).
    import io

    from rich.console import Console

    from slotune.tuner.report import render

    log: list[VllmConfig] = []
    result = run_study(spec(tmp_path, out_dir=tmp_path / "out"), measure=staged(2.0, log))
    out = io.StringIO()
    render(result, Console(file=out, width=80))
    text = " ".join(out.getvalue().split())
    assert "(remedy of slow_decode)" in text and "(remedy of prefill_stalls_decode, on top of trial 1)" in text
    page = " ".join((tmp_path / "out" / "report.html").read_text().split())
    assert "(remedy of prefill_stalls_decode, on top of trial 1)" in page
    row = next(r for r in result.to_dict()["rows"] if r["trial"] == 2)
    assert row["follows"] == 1 and row["why_tried"] == "remedy of prefill_stalls_decode, on top of trial 1"


def test_the_progress_lines_name_each_trials_origin_and_its_duplicates(tmp_path):
    # A new user could not tell from the progress lines why a trial ran or that a line was a duplicate.
    events: list[tuple[int, str]] = []
    s = spec(tmp_path, trials=9, max_remedies=0, seed=3)
    run_study(s, measure=staged(2.0, []), events=lambda n, stage: events.append((n, stage)))
    first = {}
    for n, stage in events:
        first.setdefault(n, stage)
    trials = {t.number: t for t in _trials(s)}
    assert first[0] == "baseline: (vLLM defaults)"
    for n, t in trials.items():
        if t.user_attrs.get("instead_of") is not None:
            assert first[n].startswith(f"{t.user_attrs['origin']}, instead of trial {t.user_attrs['instead_of']}'s "
                                       "redraw: "), first[n]
        if t.user_attrs.get("state") == "duplicate":
            last = [stage for m, stage in events if m == n][-1]
            assert last.startswith(f"duplicate: the same server as trial {t.user_attrs['duplicate_of']}"), last
    assert any(t.user_attrs.get("state") == "duplicate" for t in trials.values())
    assert any(t.user_attrs.get("instead_of") is not None for t in trials.values())
    # Each outcome line ends with the wall time the trials table shows (the two clocks once differed by 1 s).
    for n, t in trials.items():
        last = [stage for m, stage in events if m == n][-1]
        assert last.endswith(f" ({t.user_attrs['wall_seconds']:.0f} s)"), (last, t.user_attrs["wall_seconds"])


def test_a_remedy_that_only_comes_closer_to_the_slo_is_built_on(tmp_path):
    """Goodput under an SLO is a threshold: a first fix may serve nothing within it yet (the baseline's
    TTFT p95 2.5 s, the remedy's 1.6 s, against 1 s: goodput 0 both) while its own finding points at the
    second fix that meets it. Ranked by goodput alone the two tied, and the pair was never queued."""
    def measure_with(ttft_of_remedy: float):
        def measure(config: VllmConfig, progress=None) -> Measurement:
            tuned = config.tuned_params()
            findings = ()
            if tuned == {}:
                g, ttft, findings = 0.0, 2.5, (finding("slow", "warning", "slow", SEQS),)
            elif tuned == {"max_num_seqs": 32}:
                g, ttft, findings = 0.0, ttft_of_remedy, (finding("stalls", "warning", "stalls", BUDGET),)
            elif tuned == {"max_num_seqs": 32, "max_num_batched_tokens": 512}:
                g, ttft = 3.0, 0.5
            else:
                g, ttft = 0.0, 3.0
            return Measurement(ok=True, goodput=g, client=client(ttft, g), server=window(kv_cache_usage=0.5),
                               findings=findings, requests=requests(g, ttft, good_share=1.0 if g else 0.0))
        return measure

    for ttft_of_remedy, followed in ((1.6, True), (2.45, False)):  # 0.9 of the threshold closer; 0.05: noise
        s = spec(tmp_path, study_name=f"closer-{followed}", trials=3)
        run_study(s, measure=measure_with(ttft_of_remedy))
        trials = optuna.load_study(study_name=s.study_name, storage=s.storage).get_trials()
        follows = [t for t in trials if t.user_attrs.get("follows") == 1]
        assert bool(follows) is followed, [t.user_attrs.get("origin") for t in trials]
        if followed:
            assert follows[0].user_attrs["goodput"] == 3.0  # the pair, queued as trial 2, meets the SLO


@pytest.mark.parametrize("seed", [1, 4, 5, 6])
def test_two_workers_measure_the_whole_small_space_and_leave_nothing_waiting(tmp_path, seed):
    # Redraws only (9 configs, no remedies), two workers. A replacement waiting in slotune's queue for
    # budget room (the other worker's running draw might spend it) once made the redraws that followed
    # queue nothing and count as "nothing unmeasured left": the search stopped at 8 of 9 with the
    # replacement left waiting (about 1 run in 3 on these seeds). A redraw with a config queued already
    # says so and does not count.
    log: list[VllmConfig] = []
    run_workers([spec(tmp_path, trials=9, max_remedies=0, seed=seed, worker=n) for n in (0, 1)],
                staged(2.0, log, pause=0.05))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    served = {c.serve_command() for c in log}
    assert len(served) == len(log) == 9, [c.tuned_params() for c in log]
    assert not study.user_attrs.get("search_stopped"), study.user_attrs["search_stopped"]
    assert not [t.number for t in study.get_trials() if t.state is optuna.trial.TrialState.WAITING]

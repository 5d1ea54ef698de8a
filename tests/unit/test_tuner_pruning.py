"""Spending trials where they matter: a trial whose requests so far miss an SLO target by far stops
early (PRUNED, with its reason, never crowned); one near the threshold runs in full; the baseline
always runs in full; wall time per trial and per study lands in the result; capacity mode is never
stopped early (its rate search is its own)."""

from __future__ import annotations

import json
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from slotune.slo import SloSpec
from slotune.tuner.measure import look_points
from slotune.tuner.objective import SloPruner, worst_excess
from slotune.tuner.study import TuneSpec, run_study
from tests.support.tuner import FakeMeasure, client

MODEL = "/models/tiny"


def spec(tmp_path, **kw) -> TuneSpec:
    base = {"model": MODEL, "input_len": 32, "output_len": 16, "slo": "ttft_p95<=500ms", "trials": 4,
            "storage": f"sqlite:///{tmp_path}/s.db", "study_name": "s", "remeasure_top": 0, "max_remedies": 0,
            "fixes": ["max_num_batched_tokens=default", "speculative_method=default"]}
    return TuneSpec(**{**base, **kw})


def _trials(tmp_path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db").get_trials()


def test_a_trial_that_misses_by_far_is_pruned_with_its_reason_and_never_crowned(tmp_path):
    # max_num_seqs 16: TTFT 2 s against 500 ms (4x); and the best goodput of the two, were it measured.
    fm = FakeMeasure(ttft_by_seqs={16: 2.0})
    result = run_study(spec(tmp_path, trials=2, enqueue=[{"max_num_seqs": 16, "enable_chunked_prefill": True}]),
                       measure=fm)
    t = _trials(tmp_path)[1]
    assert t.state is TrialState.PRUNED and t.user_attrs["state"] == "pruned"
    assert "stopped early" in t.user_attrs["reason"] and "ttft_p95" in t.user_attrs["reason"]
    assert "4.0x" in t.user_attrs["reason"]
    assert t.user_attrs["so_far"] == {"requests": 8, "target": "ttft_p95", "value": 2.0, "threshold": 0.5,
                                     "ratio": 4.0}
    assert t.intermediate_values == {8: t.user_attrs["goodput"]}  # the objective's own figure, for TPE
    assert result.verdict.winner != 1 and (result.best or {}).get("trial") != 1
    assert result.counts["pruned"] == 1 and result.counts["infeasible"] == 0
    assert [r["state"] for r in result.rows] == ["complete", "pruned"]


def test_a_trial_near_the_threshold_runs_in_full(tmp_path):
    fm = FakeMeasure(ttft_by_seqs={16: 0.6})  # 1.2x the target: a miss, but not by far
    run_study(spec(tmp_path, trials=2, enqueue=[{"max_num_seqs": 16, "enable_chunked_prefill": True}]), measure=fm)
    t = _trials(tmp_path)[1]
    assert t.state is TrialState.COMPLETE and t.user_attrs["feasible"] is False
    assert len(fm.watched) == 1  # it was watched, and went on


def test_the_baseline_is_never_watched_nor_pruned(tmp_path):
    fm = FakeMeasure(ttft_by_seqs={0: 5.0})  # vLLM's default misses by 10x
    run_study(spec(tmp_path, trials=1), measure=fm)
    t = _trials(tmp_path)[0]
    assert t.user_attrs["origin"] == "baseline" and t.state is TrialState.COMPLETE and fm.watched == []


def test_no_pruning_when_switched_off_or_in_capacity_mode(tmp_path):
    fm = FakeMeasure(ttft_by_seqs={16: 2.0})
    run_study(spec(tmp_path, trials=2, prune_factor=None,
                   enqueue=[{"max_num_seqs": 16, "enable_chunked_prefill": True}]), measure=fm)
    assert _trials(tmp_path)[1].state is TrialState.COMPLETE and fm.watched == []
    fm = FakeMeasure(ttft_by_seqs={16: 2.0})
    run_study(spec(tmp_path, trials=2, mode="capacity", study_name="c",
                   enqueue=[{"max_num_seqs": 16, "enable_chunked_prefill": True}]), measure=fm)
    assert fm.watched == []


def test_wall_time_per_trial_and_per_study_in_the_result(tmp_path):
    result = run_study(spec(tmp_path, trials=3), measure=FakeMeasure())
    d = result.to_dict()
    per = d["wall_seconds"]["per_trial"]
    assert sorted(per) == [0, 1, 2] and all(v >= 0 for v in per.values())
    assert all(r["wall_seconds"] is not None for r in d["rows"])
    assert d["wall_seconds"]["study"] >= d["wall_seconds"]["trials"] > 0
    first = d["wall_seconds"]["study"]
    result = run_study(spec(tmp_path, trials=4), measure=FakeMeasure())  # a resume adds its own time
    assert result.to_dict()["wall_seconds"]["study"] > first


def test_the_pruning_decision():
    slo = SloSpec.parse("ttft_p95<=500ms,tpot_p95<=50ms,error_rate<=0%")
    key, ratio, *_ = worst_excess(slo, client(0.4, 1.0, tpot_p95=0.2))
    assert key == "tpot_p95" and ratio == pytest.approx(4.0)
    failed = replace(client(0.1, 1.0), error_rate=0.5)
    assert worst_excess(slo, failed)[0] != "error_rate"  # a zero target says nothing about "how far"

    study = optuna.create_study(pruner=SloPruner(2.0), direction="maximize")
    for ratio, step, pruned in ((2.5, 8, True), (2.0, 8, True), (1.9, 8, False), (9.0, 3, False)):
        t = study.ask()
        t.set_user_attr("so_far", {"requests": step, "ratio": ratio})
        t.report(1.0, step)
        assert t.should_prune() is pruned, (ratio, step)
        study.tell(t, 0.0)
    t = study.ask()
    t.report(1.0, 8)  # no figures so far: nothing to judge
    assert t.should_prune() is False
    with pytest.raises(ValueError):
        SloPruner(1.0)


@pytest.mark.parametrize(("n", "points"), [(400, (40, 20)), (40, (5, 2)), (12, (5, 1)), (3, (5, 1)),
                                           (None, (5, 20))])
def test_a_window_is_first_judged_after_a_tenth_of_its_requests(n, points):
    assert look_points(n) == points


# -- a study with nothing to win stops after its baseline ---------------------------------------------


def test_a_baseline_that_serves_the_offered_rate_within_the_slos_ends_the_search(tmp_path):
    # FakeMeasure: vLLM's defaults serve 3.0 req/s, all 1000 requests good (Wilson's 95 % bound on
    # that share: 99.6 %), TTFT p95 0.8 s against a 1 s target (met at 95 % confidence). Offered
    # 3.1 req/s, no config can exceed 3.1: none can beat 3.0 by the 5 % a restart needs. Its findings
    # would queue remedies: none is left waiting.
    fm = FakeMeasure(good_share=1.0, n_requests=1000)
    result = run_study(spec(tmp_path, trials=4, rate=3.1, slo="ttft_p95<=1s", remeasure_top=1, max_remedies=2),
                       measure=fm)
    assert len(fm.calls) == 1  # the baseline; no trial, no re-measurement after it
    assert [(t.number, t.state) for t in _trials(tmp_path)] == [(0, TrialState.COMPLETE)]
    assert result.verdict.recommendation == "baseline"
    msg = result.verdict.message
    assert msg.startswith("keep vLLM's defaults: they serve 3 of the 3.1 req/s offered, every SLO met at 95% "
                          "confidence"), msg
    assert "search stopped after the baseline" in msg and "default: goodput 3 req/s" in msg
    again = run_study(spec(tmp_path, trials=6, rate=3.1, slo="ttft_p95<=1s", remeasure_top=1, max_remedies=2),
                      measure=fm)  # a resume does not start the search again
    assert len(fm.calls) == 1 and again.verdict.message == msg


@pytest.mark.parametrize("kw", [
    {"rate": 3.2},  # 3.2 >= 3.0 x 1.05: a config could still win
    {"rate": None, "concurrency": 4},  # a closed loop has no such ceiling
    {"rate": 3.1, "slo": "ttft_p95<=500ms"},  # the defaults miss TTFT (0.8 s): a config may rescue it
    {"rate": 3.1, "prune_factor": None},  # --no-prune: every trial runs
    {"rate": 3.1, "pareto": True},  # a config may still lower TTFT at the same goodput
    {"rate": 3.1, "enqueue": [{"max_num_seqs": 16}]},  # the user asked for that config to be measured
    {"rate": 3.1, "n_requests": 20},  # a p95 of 20 requests is no confident "met": a rescue stays possible
    {"rate": 3.1, "n_requests": 100},  # 100 good of 100: the share may be 96 % (Wilson), goodput 2.89 < 3.1 / 1.05
    {"rate": 3.1, "good_share": 0.9},  # 10 % of requests late: goodput's lower bound leaves room for a win
])
def test_the_search_goes_on_where_a_config_could_still_win(tmp_path, kw):
    measured = {k: kw.pop(k) for k in ("n_requests", "good_share") if k in kw}
    fm = FakeMeasure(**{"good_share": 1.0, "n_requests": 1000, **measured})
    run_study(spec(tmp_path, trials=3, remeasure_top=0, **{"slo": "ttft_p95<=1s", **kw}), measure=fm)
    assert len(_trials(tmp_path)) == 3


@pytest.mark.parametrize(("rate", "n_requests", "hinted"), [
    (3.1, 100, True),  # the defaults keep up with 3.1 (3.0 served): the search could find nothing; say so
    (3.2, 100, False),  # 3.2 >= 3.0 x 1.05: a config could still have won
    (3.1, 1000, False),  # the search stopped after the baseline: its verdict already says why
])
def test_a_load_the_defaults_keep_up_with_is_named_in_a_hint(tmp_path, rate, n_requests, hinted):
    from slotune.tuner.report import load_hint

    out = tmp_path / "out"
    result = run_study(spec(tmp_path, trials=3, rate=rate, slo="ttft_p95<=1s", remeasure_top=0, out_dir=out),
                       measure=FakeMeasure(good_share=1.0, n_requests=n_requests))
    hint = load_hint(result)
    assert (hint is not None) == hinted, (hint, result.verdict.message)
    # The same hint in every output, not in the terminal only (a reader of report.html or the JSON
    # would take the verdict as a judgement on the flags).
    summary = json.loads((out / "summary.json").read_text())
    page = " ".join((out / "report.html").read_text().split())
    assert summary["hint"] == hint
    assert ("hint: the defaults served" in page) == hinted
    if hinted:
        assert hint == ("the defaults served 3 of the 3.1 req/s offered: at this load no config can beat them by "
                        "the 5% a restart needs; to look for headroom, offer more (--rate) or use --mode capacity")

"""The verdict (tuner.verdict.decide) on stored runs: a config wins only when its goodput interval
clears the baseline's or it surely meets an SLO the baseline surely misses; noise, a single sample
and a never re-measured study keep vLLM's defaults; the re-measurement is interleaved."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from slotune.slo import SloSpec
from slotune.tuner.confidence import run_interval
from slotune.tuner.verdict import ATTR, decide, remeasure_order
from tests.support.tuner import requests

SLO = "ttft_p95<=500ms"


def _runs(goodputs, ttft=0.2, good_share=1.0):
    """Runs as a study stores them (`RunRequests.to_dict()`)."""
    return [requests(g, ttft, good_share=good_share).to_dict() for g in goodputs]


def _study(base: list[dict], cands: list[list[dict]], slo: str = SLO, selection: list[dict | None] | None = None):
    """Trial 0 is the baseline, trials 1.. the candidates. The baseline's first run is its trial, the
    rest its re-measurements (stored as `remeasure:<n>`). A candidate's listed runs are the runs its
    verdict counts: with two or more, they are its re-measurements and its trial's own (selection) run
    is `selection[i]` (default: a copy of its first), which the verdict leaves out; with one, that run
    is its trial."""
    study = optuna.create_study(direction="maximize")
    attrs = {"slotune_spec": {"slo": slo}}
    selection = selection or [None] * len(cands)
    cands = [runs if len(runs) < 2 else [sel or runs[0], *runs] for runs, sel in zip(cands, selection, strict=True)]
    for n, runs in enumerate([base, *cands]):
        first = runs[0]
        g = sum(first["good"]) / first["duration"]
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=g, params={"max_num_seqs": 64 * (n + 1)},
            distributions={"max_num_seqs": IntDistribution(1, 1024)},
            user_attrs={"origin": "baseline" if n == 0 else "sampler", "goodput": g, "feasible": True,
                        "requests": first}))
        if len(runs) > 1:
            attrs[f"{ATTR}{n}"] = [{"goodput": sum(r["good"]) / r["duration"], "feasible": True, "requests": r}
                                   for r in runs[1:]]
    return study.get_trials(), attrs


BASE = (2.0, 2.1, 1.9)  # every request good: the goodput interval is the runs' t interval, 2.0 +- 0.248
HALF = run_interval(BASE)[1] - 2.0


@pytest.mark.parametrize(("shift", "use"), [
    (2 * HALF - 0.05, "baseline"),  # gain +0.45 req/s, but the intervals overlap: noise
    (2 * HALF + 0.05, "tuned"),  # just outside: the candidate's lower bound clears the baseline's upper
])
def test_a_gain_wins_only_when_the_intervals_separate(shift, use):
    trials, attrs = _study(_runs(BASE), [_runs([g + shift for g in BASE])])
    v = decide(trials, attrs)
    assert v.gain == pytest.approx(shift) and v.gain > 0
    assert v.recommendation == use, v.message
    base, cand = v.samples[0].goodput.ci, v.samples[1].goodput.ci
    assert (cand[0] > base[1]) is (use == "tuned")
    if use == "baseline":
        assert v.message.startswith("keep vLLM's defaults") and "does not clear" in v.message
        # the message names both intervals
        assert f"[{base[0]:.3g}, {base[1]:.3g}]" in v.message and f"[{cand[0]:.3g}, {cand[1]:.3g}]" in v.message
    else:
        assert v.winner == 1 and "beats vLLM's defaults" in v.message


def test_a_single_sample_never_wins_however_large():
    trials, attrs = _study(_runs(BASE), [_runs([20.0])])
    v = decide(trials, attrs)
    assert v.recommendation == "baseline" and not v.remeasured
    assert v.message.startswith("keep vLLM's defaults (not re-measured)"), v.message


def test_a_candidate_measured_once_beside_a_remeasured_one_is_not_chosen():
    trials, attrs = _study(_runs(BASE), [_runs([2.0, 2.1, 1.9]), _runs([50.0])])
    v = decide(trials, attrs)
    assert v.recommendation == "baseline" and 2 not in v.samples


def test_a_baseline_that_surely_misses_an_slo_the_candidate_surely_meets_loses():
    slow = [requests(g, 0.9, good_share=1.0).to_dict() for g in BASE]  # TTFT p95 ~0.9 s against 0.5 s
    fast = [requests(g - 0.5, 0.2, good_share=1.0).to_dict() for g in BASE]  # less goodput, but meets the SLO
    v = decide(*_study(slow, [fast]))
    assert v.samples[0].slo["ttft_p95"].outcome == "missed" and v.samples[1].slo["ttft_p95"].outcome == "met"
    assert v.recommendation == "tuned" and v.winner == 1 and "miss ttft_p95" in v.message
    # In the target's unit, as the tables show it (it once read "ttft_p95 0.9 [0.875, 0.925]").
    import re

    assert len(re.findall(r"ttft_p95 \d+ ms \[\d+ ms, \d+ ms\]", v.message)) == 2, v.message


def test_an_inconclusive_slo_does_not_rescue_a_missing_baseline():
    slow = [requests(g, 0.9).to_dict() for g in BASE]
    edge = [requests(g, 0.5).to_dict() for g in BASE]  # TTFT p95 right at the threshold: inconclusive
    v = decide(*_study(slow, [edge]))
    assert v.samples[1].slo["ttft_p95"].outcome == "inconclusive"
    assert v.recommendation == "baseline", v.message
    assert "the defaults also miss ttft_p95" in v.message


def test_more_goodput_does_not_win_by_trading_away_an_slo_the_baseline_meets():
    fast = [requests(g, 0.2).to_dict() for g in BASE]
    greedy = [requests(g * 3, 0.9).to_dict() for g in BASE]  # x3 goodput, TTFT missed
    v = decide(*_study(fast, [greedy]))
    assert v.recommendation == "baseline" and "misses ttft_p95" in v.message


def test_the_verdict_carries_intervals_and_slo_outcomes_in_its_dict():
    trials, attrs = _study(_runs(BASE), [_runs([5.0, 5.1, 4.9])])
    d = decide(trials, attrs).to_dict()
    assert d["confidence"] == 0.95 and d["recommendation"] == "tuned"
    s = d["samples"]["1"]
    assert set(s) >= {"trial", "goodputs", "feasible", "mean", "spread", "stdev", "goodput_ci", "confidence", "slo"}
    lo, hi = s["goodput_ci"]
    assert lo <= s["mean"] <= hi and s["confidence"] == 0.95
    assert set(s["slo"]["ttft_p95"]) == {"estimate", "ci", "threshold", "outcome"}
    assert s["slo"]["ttft_p95"]["threshold"] == 0.5 and s["slo"]["ttft_p95"]["outcome"] == "met"


def test_the_slo_comes_from_the_study_unless_given():
    trials, attrs = _study(_runs(BASE), [_runs([5.0, 5.1, 4.9])])
    v = decide(trials, attrs, SloSpec.parse("ttft_p95<=100ms"))
    assert v.samples[1].slo["ttft_p95"].outcome == "missed" and v.recommendation == "baseline"


def test_remeasurement_is_interleaved_baseline_first_each_round():
    assert remeasure_order(0, [3, 5], 2) == [(1, 0), (1, 3), (1, 5), (2, 0), (2, 3), (2, 5)]
    assert remeasure_order(None, [3], 2) == [(1, 3), (2, 3)]


def test_a_candidate_whose_remeasurement_failed_does_not_win():
    trials, attrs = _study(_runs(BASE), [_runs([9.0, 9.1, 8.9])])
    attrs[f"{ATTR}1"][1] = {"goodput": 0.0, "feasible": False, "status": "load_failed", "requests": None}
    v = decide(trials, attrs)
    assert v.recommendation == "baseline" and "no goodput interval" in v.message, v.message


@pytest.mark.parametrize(("gain", "use"), [(0.02, "baseline"), (0.10, "tuned")])
def test_a_gain_that_clears_the_intervals_must_still_be_worth_a_restart(gain, use):
    # Every request good on both sides and steady runs: intervals narrow enough to clear on a 2 % gain,
    # which at an offered rate is only when the last request ended (a review's reproduction).
    base = (2.0, 2.001, 1.999)
    trials, attrs = _study(_runs(base), [_runs([g * (1 + gain) for g in base])])
    v = decide(trials, attrs)
    assert v.samples[1].goodput.ci[0] > v.samples[0].goodput.ci[1]  # the intervals do clear
    assert v.recommendation == use, v.message
    if use == "baseline":
        assert "by less than 5%" in v.message


def test_a_candidates_lucky_selection_run_is_left_out():
    """The winner's curse: a config is picked on its best run, so that run is biased upward. Its
    verdict is drawn on its interleaved re-measurements only: a lucky 9 req/s pick that re-measures
    like the default keeps the default, and its 9 appears nowhere in its samples."""
    remeasured = [2.05, 2.15, 1.95]
    trials, attrs = _study(_runs(BASE), [_runs(remeasured)], selection=[_runs([9.0])[0]])
    v = decide(trials, attrs)
    assert v.samples[1].goodputs == pytest.approx(tuple(remeasured))
    assert v.samples[0].goodputs == pytest.approx(BASE)  # the baseline was not picked: its own run counts
    assert v.recommendation == "baseline" and "does not clear" in v.message, v.message


def test_with_a_single_remeasurement_the_selection_run_is_pooled():
    """`slotune demo` re-measures once: one run alone is never a verdict, so the pick's own run stays."""
    study = optuna.create_study(direction="maximize")
    base_runs, cand_runs = _runs(BASE), _runs([4.0, 4.1])
    attrs: dict = {"slotune_spec": {"slo": SLO}}
    for n, runs in enumerate([base_runs, cand_runs]):
        g = sum(runs[0]["good"]) / runs[0]["duration"]
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=g, params={"max_num_seqs": 64 * (n + 1)},
            distributions={"max_num_seqs": IntDistribution(1, 1024)},
            user_attrs={"origin": "baseline" if n == 0 else "sampler", "goodput": g, "feasible": True,
                        "requests": runs[0]}))
        attrs[f"{ATTR}{n}"] = [{"goodput": sum(r["good"]) / r["duration"], "feasible": True, "requests": r}
                               for r in runs[1:]]
    v = decide(study.get_trials(), attrs)
    assert v.samples[1].goodputs == pytest.approx((4.0, 4.1))

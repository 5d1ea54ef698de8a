"""The statistics behind the verdict (tuner.confidence): intervals cover known truths near their
nominal level, resampling stays within each run, and an SLO is met, missed or inconclusive."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slotune.loadgen.goodput import RequestLatencies
from slotune.slo import SloSpec
from slotune.tuner.confidence import (
    CONFIDENCE,
    RunRequests,
    error_rate_figure,
    goodput_figure,
    judge_slos,
    quantile_interval,
    run_interval,
    stratified_interval,
)

SEEDS = 200  # binomial standard error of a 95 % coverage over 200 seeds: 1.5 points


def _mean(cols):
    return np.mean(np.concatenate(cols, axis=-1), axis=-1)


def _p95(cols):
    return np.percentile(np.concatenate(cols, axis=-1), 95, axis=-1)


def _coverage(draw, statistic, truth: float) -> float:
    hits = 0
    for seed in range(SEEDS):
        ci = stratified_interval(draw(np.random.default_rng(10_000 + seed)), statistic, seed=seed)
        hits += ci[0] <= truth <= ci[1]
    return hits / SEEDS


def test_interval_of_an_exponential_mean_covers_it_near_the_nominal_level():
    # Tolerance: +-0.04 around 0.95 (about 2.5 standard errors of the coverage estimate).
    cov = _coverage(lambda rng: [rng.exponential(1.0, 100)], _mean, 1.0)
    assert abs(cov - CONFIDENCE) <= 0.04, cov


def test_interval_of_a_p95_covers_it_near_the_nominal_level_across_runs():
    # Three runs of 60 latencies from one exponential (a latency-like tail), resampled within each
    # run. A percentile bootstrap of a tail quantile is known to cover a little under its nominal
    # level; the tolerance is -0.07 / +0.04 (measured here: 0.95 for 3x60, 0.885 for one run of 200).
    truth = -math.log(0.05)
    cov = _coverage(lambda rng: [rng.exponential(1.0, 60) for _ in range(3)], _p95, truth)
    assert CONFIDENCE - 0.07 <= cov <= CONFIDENCE + 0.04, cov


def test_resampling_stays_within_each_run():
    # One run all good, one all bad: each run's goodput is fixed under resampling within the run,
    # so the interval of the mean of the two is a point. Pooling the runs would give it a width.
    good, bad = np.ones(50), np.zeros(50)

    def mean_of_runs(cols):
        return np.mean([c.mean(axis=-1) for c in cols], axis=0)

    assert stratified_interval([good, bad], mean_of_runs) == (0.5, 0.5)


def test_the_interval_is_reproducible_from_the_same_data():
    x = [np.random.default_rng(1).exponential(1.0, 50)]
    assert stratified_interval(x, _p95) == stratified_interval(x, _p95)


def test_run_interval_is_student_t_and_needs_two_runs():
    assert run_interval([2.0]) is None
    lo, hi = run_interval([1.9, 2.0, 2.1])
    assert (lo + hi) / 2 == pytest.approx(2.0) and (hi - lo) / 2 == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-3)


def _run(ttfts, *, duration=10.0, good=None, ok=None):
    n = len(ttfts)
    ok = ok or [True] * n
    lat = [RequestLatencies(ok=o, ttft=t if o else None, tpot=0.01, itl_mean=0.01, e2e=(t + 0.5) if o else None)
           for t, o in zip(ttfts, ok, strict=True)]
    run = RunRequests.from_latencies(lat, {"ttft": 0.5}, duration)
    if good is not None:
        run = RunRequests(run.duration, run.ok, tuple(good), run.ttft, run.tpot, run.itl, run.e2e)
    return run


def test_goodput_is_good_requests_per_second_with_an_interval_around_it():
    run = _run([0.1] * 40 + [0.9] * 10, duration=20.0)  # 40 good of 50 in 20 s
    fig = goodput_figure([run])
    assert fig.estimate == pytest.approx(2.0)
    lo, hi = fig.ci
    assert lo < 2.0 < hi and hi - lo > 0.2


def test_a_run_with_every_request_good_is_not_a_sure_goodput():
    # 100 good of 100 in 50 s: the bootstrap resamples nothing but good requests (a zero-width
    # interval, "2.0 req/s for sure"); Wilson's bound on the share (96.3 %) says it may be 1.93.
    fig = goodput_figure([_run([0.1] * 100, duration=50.0)])
    assert fig.estimate == pytest.approx(2.0)
    lo, hi = fig.ci
    assert lo == pytest.approx(2.0 * 0.963, abs=0.002) and hi == pytest.approx(2.0)
    # Many good requests pin the share close to 1: the bound tightens toward the estimate.
    assert goodput_figure([_run([0.1] * 2000, duration=1000.0)]).ci[0] > 2.0 * 0.997


def test_requests_survive_storage_and_old_runs_without_them_read_as_none():
    run = _run([0.1, 0.2, 0.3], ok=[True, False, True])
    back = RunRequests.from_dict(run.to_dict())
    assert back == run and back.good == (True, False, True)
    assert RunRequests.from_dict(None) is None and RunRequests.from_dict({"ok": [1]}) is None


@pytest.mark.parametrize(("ttfts", "outcome"), [
    ([0.10 + 0.001 * i for i in range(100)], "met"),  # p95 ~0.195, interval wholly under 0.5
    ([0.80 + 0.001 * i for i in range(100)], "missed"),  # wholly over
    ([0.1] * 90 + [0.45, 0.48, 0.49, 0.5, 0.5, 0.51, 0.52, 0.55, 0.6, 0.7], "inconclusive"),  # p95 ~0.5
])
def test_an_slo_is_met_missed_or_inconclusive_at_the_confidence(ttfts, outcome):
    fig = judge_slos([_run(ttfts)], SloSpec.parse("ttft_p95<=500ms"))["ttft_p95"]
    assert fig.outcome == outcome, fig
    lo, hi = fig.figure.ci
    assert fig.to_dict()["ci"] == [lo, hi] and fig.to_dict()["threshold"] == 0.5
    assert {"met": hi <= 0.5, "missed": lo > 0.5, "inconclusive": lo <= 0.5 < hi}[outcome]


def test_judge_reads_the_interval_not_the_estimate():
    t = SloSpec.parse("ttft_p95<=500ms").targets[0]
    assert t.judge((0.1, 0.5)) == "met"  # at the threshold is within it
    assert t.judge((0.5001, 0.9)) == "missed"
    assert t.judge((0.4, 0.6)) == "inconclusive"
    assert t.judge(None) == "inconclusive"


def test_no_failure_among_a_few_requests_is_not_a_sure_zero_error_rate():
    fig = error_rate_figure([_run([0.1] * 100)])
    assert fig.estimate == 0.0 and 0.01 < fig.ci[1] < 0.05  # Wilson: up to ~3.7 % after 100 clean requests
    assert SloSpec.parse("error_rate<=1%").targets[0].judge(fig.ci) == "inconclusive"
    assert SloSpec.parse("error_rate<=5%").targets[0].judge(fig.ci) == "met"


def test_a_load_result_kept_as_requests_gives_the_load_generators_own_figures():
    # What ServerMeasure keeps of a real run: the estimates from the kept requests are the figures
    # the load generator reports (goodput, TTFT p95, TPOT p95, error rate).
    from slotune.loadgen.runner import LoadResult, RequestRecord
    from slotune.tuner.measure import run_requests

    rng = np.random.default_rng(3)
    records = []
    for i in range(60):
        ok = i % 20 != 7
        ttft = float(rng.exponential(0.2))
        records.append(RequestRecord(index=i, prompt_len=32, output_len=16, ok=ok, ttft=ttft if ok else None,
                                     e2e=ttft + 0.3 if ok else None, itl=[0.02] * 15 if ok else [],
                                     output_tokens=16 if ok else None, error=None if ok else "boom"))
    slo = SloSpec.parse("ttft_p95<=300ms,tpot_p95<=50ms,error_rate<=10%")
    result = LoadResult(records, duration=12.0, workload="fixed", slo=slo)
    figures = result.figures()
    run = run_requests(result, slo)
    assert run is not None and RunRequests.from_dict(run.to_dict()) == run
    assert goodput_figure([run]).estimate == pytest.approx(figures.goodput)
    judged = judge_slos([run], slo)
    assert judged["ttft_p95"].figure.estimate == pytest.approx(figures.ttft.p95, abs=1e-6)
    assert judged["tpot_p95"].figure.estimate == pytest.approx(figures.tpot.p95, abs=1e-6)
    assert judged["error_rate"].figure.estimate == pytest.approx(figures.error_rate)


def test_the_quantile_interval_covers_the_true_p95_and_has_no_upper_bound_with_few_requests():
    # Distribution-free: at least 95 % coverage on a skewed distribution, where the bootstrap alone
    # fell short (a bound can never pass the largest latency seen).
    true_p95 = math.exp(1.6448536)  # lognormal(0, 1)
    hits = 0
    for seed in range(SEEDS):
        x = np.random.default_rng(seed).lognormal(0.0, 1.0, 200)
        lo, hi = quantile_interval(x, 0.95)
        hits += lo <= true_p95 <= hi
    assert hits / SEEDS >= 0.93, hits / SEEDS  # nominal >= 0.95, 1.5 points of Monte Carlo error
    lo, hi = quantile_interval(np.linspace(0.1, 0.4, 40), 0.95)
    assert hi == math.inf and lo > 0  # 40 requests cannot bound a p95 from above
    assert quantile_interval(np.linspace(0.1, 0.4, 73), 0.95)[1] == pytest.approx(0.4)


def test_an_slo_on_a_p95_of_few_requests_is_never_met():
    lat = [RequestLatencies(ok=True, ttft=0.01 * (i + 1), tpot=0.01, itl_mean=0.01, e2e=1.0) for i in range(30)]
    run = RunRequests.from_latencies(lat, {"ttft": 5.0}, 10.0)
    fig = judge_slos([run], SloSpec.parse("ttft_p95<=5s"))["ttft_p95"]  # every TTFT far under 5 s, but 30
    assert fig.figure.ci is not None and fig.figure.ci[1] == math.inf
    assert fig.outcome == "inconclusive"

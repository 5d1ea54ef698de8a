"""Confidence intervals for what a config measured: goodput and every SLO figure, from its requests.

A config is measured in one or more *runs* (its trial, then its interleaved re-measurements); each
run keeps its requests as `RunRequests` (columns: ok, good, TTFT, TPOT, mean ITL, end-to-end
latency, in seconds; and the run's measured duration). From them, for each figure:

- the **estimate**: goodput is the mean over runs of each run's good requests per second of its
  measured time (vLLM's `--goodput`); an SLO figure (`ttft_p95`, `e2e_mean`, `error_rate`, ...) is
  computed on the requests of all runs pooled;
- the **interval** at `CONFIDENCE` (95 %) is the wider envelope of two intervals (for `error_rate`,
  a proportion, a Wilson score interval takes the bootstrap's place: see `error_rate_figure`; goodput
  is widened to the Wilson interval of its share of good requests, for the same reason: a run with
  every request good has no spread a bootstrap can resample):
  (a) a percentile bootstrap over requests (`scipy.stats.bootstrap`), stratified by run: each run's
      requests are resampled within that run, so one long run cannot stand in for another and the
      run-to-run difference stays in the statistic; for a quantile (p95, p99) widened to the
      distribution-free order-statistic interval (`quantile_interval`), since a bootstrap never
      reaches past the largest value seen and so understates a tail with few requests;
  (b) a Student-t interval over the runs' own estimates (`scipy.stats.t`), when there are two or
      more runs: per-request resampling cannot see what moves a whole run (the host's load, drift,
      a run whose every request was good has no per-request spread in its goodput at all).
  One run has only (a); the verdict never crowns a config measured once.

Why the percentile method and not BCa: goodput often sits on a boundary (every request good, or
none), where BCa's acceleration is undefined, and its jackknife costs a pass per request; the
percentile interval is defined everywhere and its coverage on the distributions we see is checked in
tests/unit/test_tuner_confidence.py. The resampling is seeded (`SEED`), so `slotune report` reaches
the same intervals, and therefore the same verdict, from storage alone.

Whether an SLO is met, missed or inconclusive at that confidence is `SloTarget.judge` (slotune.slo).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slotune.loadgen.goodput import RequestLatencies, is_good
from slotune.slo import RATIO_METRICS, Outcome, SloSpec, SloTarget

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0
_COLUMNS = ("ttft", "tpot", "itl", "e2e")
_DIGITS = 6  # stored latencies rounded to the microsecond: compact JSON, far below any SLO's resolution


@dataclass(frozen=True)
class RunRequests:
    """One run's requests as columns (stored as JSON with the trial or re-measurement).

    `ok`: the request finished; `good`: it met every per-request SLO threshold (goodput's test);
    `ttft`/`tpot`/`itl`/`e2e`: seconds, None where undefined (a failed request, one output token);
    `itl` is the request's mean inter-token latency. `duration`: the run's measured seconds."""

    duration: float
    ok: tuple[bool, ...]
    good: tuple[bool, ...]
    ttft: tuple[float | None, ...]
    tpot: tuple[float | None, ...]
    itl: tuple[float | None, ...]
    e2e: tuple[float | None, ...]

    def __len__(self) -> int:
        return len(self.ok)

    @classmethod
    def from_latencies(cls, requests: Iterable[RequestLatencies], thresholds: Mapping[str, float],
                       duration: float) -> RunRequests:
        reqs = list(requests)

        def col(values: Iterable[float | None]) -> tuple[float | None, ...]:
            return tuple(None if v is None else round(float(v), _DIGITS) for v in values)

        return cls(duration=float(duration), ok=tuple(r.ok for r in reqs),
                   good=tuple(is_good(r, thresholds) for r in reqs),
                   ttft=col(r.ttft for r in reqs), tpot=col(r.tpot for r in reqs),
                   itl=col(r.itl_mean for r in reqs), e2e=col(r.e2e for r in reqs))

    def to_dict(self) -> dict[str, Any]:
        return {"duration": self.duration, "ok": [int(x) for x in self.ok], "good": [int(x) for x in self.good],
                **{c: list(getattr(self, c)) for c in _COLUMNS}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RunRequests | None:
        """None for a run stored without its requests (before they were kept) or malformed."""
        if not isinstance(d, Mapping):
            return None
        try:
            n = len(d["ok"])
            cols = {c: tuple(None if v is None else float(v) for v in (d.get(c) or [None] * n)) for c in _COLUMNS}
            run = cls(duration=float(d["duration"]), ok=tuple(bool(x) for x in d["ok"]),
                      good=tuple(bool(x) for x in d["good"]), **cols)
        except (KeyError, TypeError, ValueError):
            return None
        if any(len(getattr(run, c)) != n for c in ("good", *_COLUMNS)):
            return None
        return run

    def column(self, name: str) -> np.ndarray:
        """A column as floats (NaN where undefined); `ok`/`good` as 0/1."""
        return np.array([np.nan if v is None else float(v) for v in getattr(self, name)], dtype=float)


@dataclass(frozen=True)
class Figure:
    """A figure with its interval; `ci` is None when it cannot be had (no data, a run of < 2 requests)."""

    estimate: float | None
    ci: tuple[float, float] | None


# A statistic over per-run arrays (each shaped (..., n_run)) → shape (...): vectorised for the bootstrap.
Statistic = Callable[[Sequence[np.ndarray]], np.ndarray]


def stratified_interval(columns: Sequence[np.ndarray], statistic: Statistic, *,
                        confidence: float = CONFIDENCE, seed: int = SEED) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of `statistic`, each run's values resampled within the run.
    None when a run has fewer than 2 values or the statistic is undefined on the data."""
    if not columns or any(len(c) < 2 for c in columns):
        return None
    from scipy import stats  # scipy.stats takes ~1 s to import: only when a verdict is computed

    index = tuple(np.arange(len(c)) for c in columns)

    def on_indices(*idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic([c[i] for c, i in zip(columns, idx, strict=True)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples (few ok requests): NaN, checked below
        res = stats.bootstrap(index, on_indices, n_resamples=N_RESAMPLES, vectorized=True, axis=-1,
                              confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def run_interval(estimates: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of the mean of per-run estimates; None with fewer than two."""
    xs = [x for x in estimates if not math.isnan(x)]
    if len(xs) < 2:
        return None
    from scipy import stats

    mean, sem = float(np.mean(xs)), float(stats.sem(xs))
    if sem == 0:
        return mean, mean
    lo, hi = stats.t.interval(confidence, len(xs) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def _envelope(*cis: tuple[float, float] | None) -> tuple[float, float] | None:
    got = [c for c in cis if c is not None]
    if not got:
        return None
    return min(c[0] for c in got), max(c[1] for c in got)


def _figure(columns: Sequence[np.ndarray], pooled: Statistic, *, confidence: float,
            low: float = 0.0, high: float = math.inf,
            widen: Callable[[np.ndarray], tuple[float, float]] | None = None) -> Figure:
    """`pooled` on all runs is the estimate; on each run alone, that run's estimate (for the t part).
    `widen`, given all runs' values pooled, gives an interval the figure's is widened to (enveloped)."""
    columns = [c for c in columns if len(c)]
    if not columns:
        return Figure(None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        estimate = float(pooled(columns))
        runs = [float(pooled([c])) for c in columns]
    if math.isnan(estimate):
        return Figure(None, None)
    ci = _envelope(stratified_interval(columns, pooled, confidence=confidence), run_interval(runs, confidence))
    if ci is not None and widen is not None:
        ci = _envelope(ci, widen(np.concatenate(columns)))
    if ci is not None:
        ci = (min(max(ci[0], low), estimate), max(min(ci[1], high), estimate))
    return Figure(estimate, ci)


def goodput_figure(runs: Sequence[RunRequests], confidence: float = CONFIDENCE) -> Figure:
    """Goodput (req/s): the mean over runs of good requests per second of each run's duration."""
    # Each run's good/duration as one column (good_i / duration per request): its sum is the run's
    # goodput, so the statistic needs no durations beside the columns.
    timed = [r for r in runs if r.duration > 0 and len(r)]
    cols = [r.column("good") / r.duration for r in timed]

    def mean_goodput(c: Sequence[np.ndarray]) -> np.ndarray:
        return np.mean([x.sum(axis=-1) for x in c], axis=0)

    def share_interval(_: np.ndarray) -> tuple[float, float]:
        # A run whose every request was good (or none was) has no spread to resample: the bootstrap
        # would claim its goodput for sure. Wilson's interval on the pooled share of good requests says
        # how far it may still be, scaled so the pooled share maps onto the estimate (runs of other
        # lengths or durations weigh their good requests differently); with none good, by the runs'
        # mean requests per second.
        from scipy import stats

        n, good = sum(len(r) for r in timed), sum(sum(r.good) for r in timed)
        ci = stats.binomtest(good, n).proportion_ci(confidence, method="wilson")
        scale = (float(mean_goodput(cols)) * n / good if good
                 else float(np.mean([len(r) / r.duration for r in timed])))
        return float(ci.low) * scale, float(ci.high) * scale

    return _figure(cols, mean_goodput, confidence=confidence, widen=share_interval)


def slo_figure(runs: Sequence[RunRequests], target: SloTarget, confidence: float = CONFIDENCE) -> Figure:
    """The target's figure (seconds, or a fraction for `error_rate`) on the pooled requests."""
    if target.metric in RATIO_METRICS:  # error_rate: the share of requests that did not finish
        return error_rate_figure(runs, confidence)
    # Over the requests that have the figure (finished ones; TPOT needs two tokens), as the load
    # generator's own percentiles are.
    cols = [c[~np.isnan(c)] for c in (r.column(target.metric) for r in runs)]
    q = target.quantile

    def latency(c: Sequence[np.ndarray]) -> np.ndarray:
        pooled = np.concatenate(c, axis=-1)
        return np.mean(pooled, axis=-1) if q is None else np.percentile(pooled, q * 100, axis=-1)

    # A percentile bootstrap never reaches past the largest latency seen, so with few requests its
    # bound on a tail quantile is too low (a p95 of 40 requests: ~15 % below the truth instead of 2.5 %).
    # The order-statistic interval has no such blind spot: widen to it.
    widen = None if q is None else (lambda values: quantile_interval(values, q, confidence))
    return _figure(cols, latency, confidence=confidence, widen=widen)


def quantile_interval(values: np.ndarray, q: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval of the `q`-quantile from the order statistics of `values`:
    `[X(l), X(u)]` with `l`, `u` the binomial(n, q) quantiles at (1 - confidence) / 2 and its
    complement (e.g. Conover, *Practical Nonparametric Statistics*, 3rd ed., section 3.2), coverage
    at least `confidence`. An end that falls outside the sample is unbounded: 0 below, +inf above
    (too few requests to bound that tail: a p95 needs about 73 requests before it has an upper bound
    at 95 %), which makes an SLO on it inconclusive, never met."""
    from scipy import stats

    x = np.sort(np.asarray(values, dtype=float))
    n, a = len(x), (1 - confidence) / 2
    low = int(stats.binom.ppf(a, n, q))  # 1-based rank; 0: below the sample
    high = int(stats.binom.ppf(1 - a, n, q)) + 1  # 1-based rank; n + 1: above the sample
    return (float(x[low - 1]) if low >= 1 else 0.0), (float(x[high - 1]) if high <= n else math.inf)


def error_rate_figure(runs: Sequence[RunRequests], confidence: float = CONFIDENCE) -> Figure:
    """The pooled share of failed requests with a Wilson score interval (`scipy.stats.binomtest`),
    enveloped with the runs' t interval. Not the bootstrap: with no failure among the requests every
    resample has none too, and the bootstrap would claim a zero error rate for sure; Wilson's upper
    bound says how high the rate may still be (about 1.3 % after 300 clean requests)."""
    from scipy import stats

    n = sum(len(r) for r in runs)
    if n == 0:
        return Figure(None, None)
    failed = sum(len(r) - sum(r.ok) for r in runs)
    ci = stats.binomtest(failed, n).proportion_ci(confidence, method="wilson")
    per_run = [(len(r) - sum(r.ok)) / len(r) for r in runs if len(r)]
    lo, hi = _envelope((float(ci.low), float(ci.high)), run_interval(per_run, confidence)) or (0.0, 1.0)
    estimate = failed / n
    return Figure(estimate, (min(max(lo, 0.0), estimate), max(min(hi, 1.0), estimate)))


@dataclass(frozen=True)
class SloFigure:
    target: SloTarget
    figure: Figure
    outcome: Outcome

    def to_dict(self) -> dict[str, Any]:
        ci = self.figure.ci
        return {"estimate": self.figure.estimate, "ci": None if ci is None else [ci[0], ci[1]],
                "threshold": self.target.threshold, "outcome": self.outcome}


def judge_slos(runs: Sequence[RunRequests], slo: SloSpec, confidence: float = CONFIDENCE) -> dict[str, SloFigure]:
    """Every target of `slo`, keyed as in the spec (`ttft_p95`), with its figure and outcome."""
    out = {}
    for t in slo.targets:
        fig = slo_figure(runs, t, confidence)
        out[t.key] = SloFigure(t, fig, t.judge(fig.ci))
    return out

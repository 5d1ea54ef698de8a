"""Cumulative Prometheus histograms: window deltas, and quantiles the way `histogram_quantile` does.

`quantile()` follows Prometheus' `bucketQuantile` (promql/quantile.go) step by step, so a figure
here equals what a PromQL dashboard shows for the same buckets:
- the +Inf bucket must be present; its count is the number of observations;
- the rank is `q * observations`; the first bucket whose cumulative count reaches it holds the quantile;
- inside it, interpolate linearly between its lower and upper bound;
- the first bucket's lower bound is 0 (when its upper bound is > 0; otherwise its upper bound is returned);
- a quantile that falls in the +Inf bucket is the upper bound of the bucket before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slotune.collectors.snapshot import Quantiles

QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True)
class Histogram:
    """One cumulative histogram series: upper bounds ascending (the last is +Inf), cumulative counts."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float
    count: float

    def minus(self, before: Histogram) -> Histogram | None:
        """The observations since `before`; None when the series went backwards (a counter reset)
        or its buckets changed (a different server)."""
        if before.bounds != self.bounds:
            return None
        counts = tuple(a - b for a, b in zip(self.counts, before.counts, strict=True))
        count = self.count - before.count
        if count < 0 or any(c < 0 for c in counts):
            return None
        return Histogram(self.bounds, counts, self.sum - before.sum, count)

    def plus(self, other: Histogram) -> Histogram:
        """Two series with the same buckets (two engines) as one."""
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different buckets")
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return Histogram(self.bounds, counts, self.sum + other.sum, self.count + other.count)


def quantile(q: float, bounds: tuple[float, ...], counts: tuple[float, ...]) -> float | None:
    """Prometheus' `histogram_quantile(q, ...)` over one set of cumulative buckets; None where
    Prometheus gives NaN (no observations, no +Inf bucket, fewer than two buckets)."""
    located = locate(q, bounds, counts)
    return None if located is None else located[0]


def locate(q: float, bounds: tuple[float, ...], counts: tuple[float, ...]) -> tuple[float, float, float] | None:
    """`(estimate, lower, upper)`: the `quantile()` figure and the bounds of the bucket it was
    interpolated in. All the buckets know is that the true quantile lies in (lower, upper]; the
    estimate inside is a guess (linear spread), upper is +Inf past the last finite bound."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf, -math.inf, -math.inf
    if q > 1:
        return math.inf, math.inf, math.inf
    if not bounds or not math.isinf(bounds[-1]) or len(bounds) < 2:
        return None
    # ensureMonotonic: a bucket never holds fewer than the one below it (scrape skew in PromQL).
    mono: list[float] = []
    for c in counts:
        mono.append(c if not mono or c >= mono[-1] else mono[-1])
    observations = mono[-1]
    if observations <= 0:
        return None
    rank = q * observations
    last = len(bounds) - 1
    b = next((i for i in range(last) if mono[i] >= rank), last)
    if b == last:
        return bounds[last - 1], bounds[last - 1], math.inf
    if b == 0 and bounds[0] <= 0:
        return bounds[0], bounds[0], bounds[0]
    start, end, count = 0.0, bounds[b], mono[b]
    if b > 0:
        start = bounds[b - 1]
        count -= mono[b - 1]
        rank -= mono[b - 1]
    return start + (end - start) * (rank / count), start, end


def summarize(hist: Histogram | None) -> Quantiles | None:
    """p50/p90/p95/p99 from the buckets and the exact mean from `_sum / _count`; None without data."""
    if hist is None or hist.count <= 0:
        return None
    located = {name: locate(q, hist.bounds, hist.counts) for name, q in QUANTILES.items()}
    qs = {name: None if loc is None else loc[0] for name, loc in located.items()}
    buckets = {name: (loc[1], loc[2]) for name, loc in located.items() if loc is not None}
    mean = None if math.isnan(hist.sum) else hist.sum / hist.count
    return Quantiles(mean=mean, count=hist.count, buckets=buckets, **qs)

"""Quantiles of a distribution: the one latency-quantiles type of slotune (core floor).

The collectors build them from vLLM's histograms (estimates inside a bucket, with the bucket's
bounds); the load generator from the latencies it measured itself (exact, no buckets). The SLO
spec (`slotune.slo`) reads either by attribute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Quantiles:
    """Summary of a latency (seconds) or size distribution over a window, the one type the server's
    histograms (`collectors.snapshot.Snapshot`) and the load generator's own measurements
    (`loadgen.runner.LoadFigures`) share. `count` is the number of observations.

    Quantiles from histogram buckets are interpolated inside one bucket; `buckets` keeps, per
    quantile (`"p95"`), the bounds `(lower, upper)` of that bucket: the true value lies in
    (lower, upper], the figure itself is an estimate. `upper` is +Inf past the last bound (JSON: null).
    The mean (`_sum / _count`) is exact."""

    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    count: float = 0.0
    p90: float | None = None
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def bucket(self, stat: str) -> tuple[float, float] | None:
        """The bounds of the bucket the quantile `stat` fell in, or None (mean, or not from buckets)."""
        return self.buckets.get(stat)

    def coarse(self, stat: str) -> bool:
        """The figure says less than it seems: it lies in the first bucket (from 0), past the last
        bound, or in a bucket wider than the figure itself."""
        b, v = self.buckets.get(stat), getattr(self, stat, None)
        if b is None or v is None:
            return False
        lower, upper = b
        return lower <= 0 or math.isinf(upper) or (upper - lower) > v

    def to_dict(self) -> dict[str, Any]:
        """The collectors' JSON: `{p50, p95, p99, mean, count, p90, buckets, coarse}`."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("p50", "p95", "p99", "mean", "count", "p90")}
        out["buckets"] = {k: [lo, None if math.isinf(hi) else hi] for k, (lo, hi) in self.buckets.items()}
        out["coarse"] = sorted(k for k in self.buckets if self.coarse(k))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Quantiles | None:
        if d is None:
            return None
        # Values as given (no float() that would turn `true` or "1" into a bound): whoever reads a file
        # checks them (collectors.snapshot's field checks).
        buckets = {k: (v[0], math.inf if v[1] is None else v[1]) for k, v in (d.get("buckets") or {}).items()}
        return cls(**{k: d.get(k) for k in ("p50", "p95", "p99", "mean", "p90")}, count=d.get("count") or 0.0,
                   buckets=buckets)

    def to_plain_dict(self) -> dict[str, Any]:
        """The load generator's JSON, with no buckets (its figures are exact):
        `{p50, p90, p95, p99, mean, count}`."""
        return {k: getattr(self, k) for k in ("p50", "p90", "p95", "p99", "mean", "count")}

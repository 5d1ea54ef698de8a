"""A load run's figures, typed: what `LoadResult.figures()` returns and what its JSON
(`LoadFigures.to_dict()`, the load generator's contract for `--json`, the store and the tuner's
trials) holds.

Latencies are `Quantiles` in seconds (exact, no buckets: the client timed each request itself);
throughputs are per second of the run; `goodput` is None when the run had no SLO. `from_dict` reads
the JSON back, a partial one too (a tuner trial keeps a subset of the keys): what it lacks is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slotune.quantiles import Quantiles
from slotune.slo import SloResult

LATENCY_KEYS = ("ttft", "tpot", "itl", "e2e")


def quantiles(values: list[float]) -> Quantiles | None:
    """p50, p90, p95, p99, mean and count of `values`; None without data. Percentiles interpolate
    linearly, as numpy's (and `vllm bench serve`'s) do."""
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return Quantiles(p50=float(p50), p95=float(p95), p99=float(p99), mean=float(arr.mean()), count=float(arr.size),
                     p90=float(p90))


@dataclass(frozen=True)
class LoadFigures:
    """What a load run measured, from the client's side."""

    ttft: Quantiles | None = None  # time to first token
    tpot: Quantiles | None = None  # time per output token after the first
    itl: Quantiles | None = None  # inter-token latency
    e2e: Quantiles | None = None  # end-to-end request latency
    completed: int | None = None
    failed: int | None = None
    error_rate: float | None = None  # failed / sent, 0..1
    duration: float | None = None  # seconds, first send to last completion
    request_throughput: float | None = None  # completed requests/s
    output_throughput: float | None = None  # output tokens/s
    total_token_throughput: float | None = None  # prompt + output tokens/s
    goodput: float | None = None  # good requests/s (None: no SLO)
    good_requests: int | None = None
    total_input_tokens: int | None = None
    total_output_tokens: int | None = None
    workload: str | None = None
    rate: float | None = None  # offered req/s (None: closed loop)
    concurrency: int | None = None
    burstiness: float | None = None
    send_lateness: Quantiles | None = None  # open loop: how late requests left their schedule (s)
    errors: dict[str, int] = field(default_factory=dict)  # error text -> requests, the most common
    warnings: tuple[str, ...] = ()  # why the figures may describe the client's host, not the server
    slo: tuple[SloResult, ...] = ()  # each SLO target checked against these figures

    def latency(self, metric: str) -> Quantiles | None:
        """The quantiles of `metric` (ttft | tpot | itl | e2e)."""
        return getattr(self, metric) if metric in LATENCY_KEYS else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON: `{ttft_seconds: {p50, p90, p95, p99, mean, count} | null, ..., completed, failed,
        error_rate, duration, duration_seconds, request_throughput, ..., warnings, slo}`."""
        out: dict[str, Any] = {f"{k}_seconds": _block(getattr(self, k)) for k in LATENCY_KEYS}
        out.update({
            "completed": self.completed,
            "failed": self.failed,
            "error_rate": self.error_rate,
            "duration": self.duration,
            "duration_seconds": self.duration,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "goodput": self.goodput,
            "good_requests": self.good_requests,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "workload": self.workload,
            "rate": self.rate,
            "concurrency": self.concurrency,
            "burstiness": self.burstiness,
            "send_lateness_seconds": _block(self.send_lateness),
            "errors": dict(self.errors),
            "warnings": list(self.warnings),
            "slo": [r.to_dict() for r in self.slo],
        })
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoadFigures:
        """The inverse of `to_dict()`; keys it lacks read as None (empty for lists). Raises
        `ValueError` naming the key when a value has the wrong shape."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected an object of load figures, not {type(d).__name__}")

        def block(key: str) -> Quantiles | None:
            value = d.get(key)
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{key}: expected an object of quantiles, not {value!r}")
            return Quantiles.from_dict(dict(value)) if value is not None else None

        duration = d.get("duration_seconds", d.get("duration"))
        scalars = ("completed", "failed", "error_rate", "request_throughput", "output_throughput",
                   "total_token_throughput", "goodput", "good_requests", "total_input_tokens", "total_output_tokens",
                   "workload", "rate", "concurrency", "burstiness")
        return cls(
            **{k: block(f"{k}_seconds") for k in LATENCY_KEYS},
            **{k: d.get(k) for k in scalars},
            duration=duration,
            send_lateness=block("send_lateness_seconds"),
            errors=dict(d.get("errors") or {}),
            warnings=tuple(d.get("warnings") or ()),
            slo=tuple(SloResult.from_dict(r) for r in d.get("slo") or ()),
        )


def _block(q: Quantiles | None) -> dict[str, Any] | None:
    return q.to_plain_dict() if q is not None else None

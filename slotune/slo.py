"""SLO targets as data: the one definition used by the load generator (goodput), the playbooks
(thresholds), the tuner (constraints) and the Prometheus rule generator (burn-rate alerts).

A spec is written like `ttft_p95<=500ms,tpot_p95<=50ms,e2e_p99<=2s,error_rate<=1%`.

Goodput follows `vllm bench serve --goodput`: a request is *good* when each of its per-request
latencies is at or under the threshold for that metric; goodput is good requests per second of the
run. Per metric, the threshold is the one of the spec's highest-percentile target on that metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from slotune.errors import ConfigError

# Latency SLIs, in seconds, with the name `vllm bench serve --goodput` uses for the same thing.
LATENCY_METRICS: dict[str, str] = {
    "ttft": "ttft",  # time to first token
    "tpot": "tpot",  # time per output token after the first
    "itl": "itl",  # inter-token latency
    "e2e": "e2el",  # end-to-end request latency
}
STATS = ("p50", "p90", "p95", "p99", "mean")
RATIO_METRICS = ("error_rate",)

# The error-rate SLO, defined once (sidecar burn, collectors' `error_rate`, Prometheus rules, docs):
# the share of finished requests vLLM ended with `finished_reason="error"`. An `abort` is the
# client's doing (a disconnect, a cancel, its own timeout): counting it would let clients spend the
# server's error budget, and slowness that makes clients give up is what the latency targets catch.
ERROR_FINISH_REASONS: tuple[str, ...] = ("error",)


def error_reason_selector() -> str:
    """The PromQL label matcher for `ERROR_FINISH_REASONS`, e.g. `finished_reason="error"`."""
    if len(ERROR_FINISH_REASONS) == 1:
        return f'finished_reason="{ERROR_FINISH_REASONS[0]}"'
    return f'finished_reason=~"{"|".join(ERROR_FINISH_REASONS)}"'

DEFAULT_SLO = "ttft_p95<=500ms,e2e_p95<=2s"
# What the playbooks judge the per-token latencies DEFAULT_SLO leaves out against, when the user's SLO
# leaves them out too.
FALLBACK_TARGETS = "tpot_p95<=100ms,itl_p95<=100ms"
# Every distinct target written out (4 latencies x 5 statistics + error_rate) is under 600
# characters; a longer spec is a mistake or an attack, refused before any parsing.
MAX_SPEC_CHARS = 2048

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_TARGET = re.compile(
    r"^\s*(?P<metric>error_rate|[a-z0-9]+)(?:_(?P<stat>p\d{1,2}|mean))?\s*<=\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>us|ms|s|m|%)?\s*$"
)


@dataclass(frozen=True)
class SloTarget:
    metric: str  # ttft | tpot | itl | e2e | error_rate
    stat: str | None  # p50 ... p99 | mean; None for ratios
    threshold: float  # seconds for latencies, a fraction for ratios

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.stat}" if self.stat else self.metric

    @property
    def quantile(self) -> float | None:
        """0.95 for p95; None for mean and ratios."""
        return int(self.stat[1:]) / 100 if self.stat and self.stat.startswith("p") else None

    def __str__(self) -> str:
        if self.metric in RATIO_METRICS:
            return f"{self.key}<={_fmt(self.threshold * 100)}%"
        if self.threshold >= 1:
            return f"{self.key}<={_fmt(self.threshold)}s"
        return f"{self.key}<={_fmt(self.threshold * 1000)}ms"

    def met_by(self, value: float | None) -> bool | None:
        """True/False, or None when there is no measurement."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return value <= self.threshold


    def judge(self, ci: tuple[float, float] | None) -> Outcome:
        """The target at a confidence: 'met' when the figure's whole interval is at or under the
        threshold, 'missed' when it is wholly above, 'inconclusive' when it straddles it or there is
        no interval (the tuner's verdict, `slotune.tuner.confidence`)."""
        if ci is None or any(math.isnan(x) for x in ci):
            return "inconclusive"
        if ci[1] <= self.threshold:
            return "met"
        return "missed" if ci[0] > self.threshold else "inconclusive"


# A target judged on a figure's confidence interval (`SloTarget.judge`).
Outcome = Literal["met", "missed", "inconclusive"]


def _fmt(x: float) -> str:
    return f"{x:g}"


def fmt_figure(key: str, value: float | None) -> str:
    """An SLO figure (`key` as in `SloTarget.key`) in its unit for people: a share (`error_rate`) as a
    percentage, a latency in ms below 1 s and in s from there; '-' when missing."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "-"
    if key in RATIO_METRICS:
        return f"{value:.2%}"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def fmt_interval(key: str, ci: tuple[float, float] | list[float] | None) -> str:
    """An SLO figure's interval for people: '[775 ms, 825 ms]'. A latency interval's end that the
    requests cannot bound (a tail quantile of few requests: `tuner.confidence.quantile_interval` sets
    it to 0 below, +inf above) is said so, not printed as '0 ms' or 'inf s': '[under 133 ms: too few
    requests for a lower bound]'. '' without an interval."""
    if not ci or len(ci) != 2:
        return ""
    lo, hi = ci
    if key not in RATIO_METRICS:
        no_lo, no_hi = lo <= 0, isinstance(hi, (int, float)) and math.isinf(hi)
        if no_lo and no_hi:
            return "[unbounded: too few requests to bound it]"
        if no_lo:
            return f"[under {fmt_figure(key, hi)}: too few requests for a lower bound]"
        if no_hi:
            return f"[over {fmt_figure(key, lo)}: too few requests for an upper bound]"
    return f"[{fmt_figure(key, lo)}, {fmt_figure(key, hi)}]"


INCONCLUSIVE = "inconclusive at this resolution"


def straddles(bucket: tuple[float, float] | None, threshold: float) -> bool:
    """The histogram bucket a quantile was interpolated in has the threshold strictly inside: the
    buckets cannot tell whether the true quantile is under or over it (at a bound they can)."""
    return bucket is not None and bucket[0] < threshold < bucket[1]


@dataclass(frozen=True)
class SloResult:
    """One target checked: `met` is None when there is no figure or the figure cannot decide
    (`inconclusive`: a quantile interpolated inside the bucket that straddles the threshold)."""

    target: SloTarget
    value: float | None
    met: bool | None
    bucket: tuple[float, float] | None = None  # the server-side bucket the quantile fell in
    inconclusive: bool = False

    @property
    def status(self) -> str:
        """'met', 'missed', 'no data' or 'inconclusive at this resolution'."""
        if self.inconclusive:
            return INCONCLUSIVE
        return "no data" if self.met is None else ("met" if self.met else "missed")

    def to_dict(self) -> dict[str, object]:
        bucket = None if self.bucket is None else [self.bucket[0], None if math.isinf(self.bucket[1]) else self.bucket[1]]
        return {"target": str(self.target), "key": self.target.key, "value": self.value,
                "threshold": self.target.threshold, "met": self.met, "status": self.status, "bucket": bucket}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> SloResult:
        """The inverse of `to_dict()`. Raises `ConfigError` when the target does not parse."""
        target = _parse_target(str(d.get("target")))
        # The JSON keeps the threshold exactly; the target's text may have rounded it (`:g`).
        threshold = _number(d.get("threshold"))
        if threshold is not None:
            target = SloTarget(target.metric, target.stat, threshold)
        b = d.get("bucket")
        bucket = (float(b[0]), math.inf if b[1] is None else float(b[1])) if isinstance(b, (list, tuple)) else None
        met = d.get("met")
        return cls(target, _number(d.get("value")), met if isinstance(met, bool) else None, bucket,
                   inconclusive=d.get("status") == INCONCLUSIVE)


def result_line(r: Mapping[str, object]) -> str:
    """One checked target as people read it, from `SloResult.to_dict()`:
    `e2e_p95<=1s: missed (1500.0 ms, in the 1000-1500 ms bucket)`, `error_rate<=1%: met (0.00%)`."""
    value, bucket = r.get("value"), r.get("bucket")
    if not isinstance(value, (int, float)):
        figure = ""
    elif r.get("key") in RATIO_METRICS:
        figure = f" ({value:.2%})"
    elif isinstance(bucket, (list, tuple)) and len(bucket) == 2 and isinstance(bucket[0], (int, float)):
        hi = "+Inf" if not isinstance(bucket[1], (int, float)) or math.isinf(bucket[1]) else f"{bucket[1] * 1000:g}"
        figure = f" ({value * 1000:.1f} ms, in the {bucket[0] * 1000:g}-{hi} ms bucket)"
    else:
        figure = f" ({value * 1000:.1f} ms)"
    return f"{r.get('target')}: {r.get('status')}{figure}"


@dataclass(frozen=True)
class SloSpec:
    targets: tuple[SloTarget, ...]

    @classmethod
    def parse(cls, text: str) -> SloSpec:
        """`METRIC_STAT<=VALUE[,...]` → SloSpec, in time linear in the text. Raises `ConfigError`
        for an empty spec, one over `MAX_SPEC_CHARS`, a bad target or a target named twice."""
        if not text or not text.strip():
            raise ConfigError("empty SLO spec: write targets like 'ttft_p95<=500ms,e2e_p95<=2s'")
        if len(text) > MAX_SPEC_CHARS:
            raise ConfigError(f"SLO spec of {len(text)} characters is over the limit of {MAX_SPEC_CHARS}")
        targets: dict[str, SloTarget] = {}
        for part in text.split(","):
            if not part.strip():
                raise ConfigError(f"empty SLO target in {text.strip()!r}: a comma with no target after or before it")
            target = _parse_target(part)
            if target.key in targets:
                raise ConfigError(f"SLO spec names {target.key!r} twice")
            targets[target.key] = target
        return cls(tuple(targets.values()))

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.targets)

    def get(self, metric: str, stat: str | None = None) -> SloTarget | None:
        for t in self.targets:
            if t.metric == metric and (stat is None or t.stat == stat):
                return t
        return None

    def request_thresholds(self) -> dict[str, float]:
        """Per-request latency thresholds (seconds) for goodput: metric -> threshold."""
        best: dict[str, SloTarget] = {}
        for t in self.targets:
            if t.metric not in LATENCY_METRICS:
                continue
            rank = t.quantile if t.quantile is not None else 0.5
            cur = best.get(t.metric)
            if cur is None or rank > (cur.quantile if cur.quantile is not None else 0.5):
                best[t.metric] = t
        return {m: t.threshold for m, t in best.items()}

    def vllm_goodput_args(self) -> list[str]:
        """The same thresholds as `vllm bench serve --goodput KEY:MS ...` arguments."""
        return [f"{LATENCY_METRICS[m]}:{_fmt(v * 1000)}" for m, v in self.request_thresholds().items()]

    def evaluate(self, figures: object) -> list[SloResult]:
        """Check each target against typed figures: an object with one attribute per metric, a
        quantiles block (`slotune.quantiles.Quantiles`: the stat as an attribute, `bucket(stat)` its
        histogram bucket) for a latency and a number for a ratio: a window's `Snapshot`, a load
        run's `LoadFigures`. Their JSON (`{"ttft_seconds": {"p95": ..., "buckets": {"p95": [lower,
        upper]}}, ..., "error_rate": ...}`) reads alike, for what comes back from a file or a database.
        A quantile whose bucket straddles the threshold is inconclusive, never met or missed."""
        results = []
        for t in self.targets:
            value, bucket = lookup(figures, t), lookup_bucket(figures, t)
            if straddles(bucket, t.threshold):
                results.append(SloResult(t, value, None, bucket, inconclusive=True))
            else:
                results.append(SloResult(t, value, t.met_by(value), bucket))
        return results


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _block(figures: object, metric: str) -> object:
    if isinstance(figures, Mapping):
        return figures.get(f"{metric}_seconds")
    return getattr(figures, metric, None)


def lookup(figures: object, target: SloTarget) -> float | None:
    """The figure a target is judged on (None: not measured)."""
    if target.metric in RATIO_METRICS:
        v = figures.get(target.metric) if isinstance(figures, Mapping) else getattr(figures, target.metric, None)
        return _number(v)
    block = _block(figures, target.metric)
    stat = target.stat or "mean"
    if isinstance(block, Mapping):
        return _number(block.get(stat))
    return _number(getattr(block, stat, None)) if block is not None else None


def lookup_bucket(figures: object, target: SloTarget) -> tuple[float, float] | None:
    """The bucket bounds behind a quantile figure (a server histogram's), when it has them."""
    block = _block(figures, target.metric)
    if block is None or not target.stat:
        return None
    if not isinstance(block, Mapping):
        bucket = getattr(block, "bucket", None)
        return bucket(target.stat) if callable(bucket) else None
    buckets = block.get("buckets")
    b = buckets.get(target.stat) if isinstance(buckets, Mapping) else None
    if not isinstance(b, (list, tuple)) or len(b) != 2 or not isinstance(b[0], (int, float)):
        return None
    return float(b[0]), math.inf if b[1] is None else float(b[1])


def _parse_target(part: str) -> SloTarget:
    m = _TARGET.match(part)
    if not m:
        raise ConfigError(
            f"bad SLO target {part.strip()!r}: write METRIC_STAT<=VALUE with a unit, "
            "e.g. 'ttft_p95<=500ms' or 'error_rate<=1%'"
        )
    metric, stat, num, unit = m["metric"], m["stat"], float(m["num"]), m["unit"]
    if metric in RATIO_METRICS:
        if stat is not None:
            raise ConfigError(f"bad SLO target {part.strip()!r}: {metric} takes no percentile")
        if unit not in ("%", None):
            raise ConfigError(f"bad SLO target {part.strip()!r}: {metric} is a ratio; write e.g. 1%")
        if unit is None and num >= 1:  # "error_rate<=1" meant 1 %, not a target no run can miss
            raise ConfigError(f"bad SLO target {part.strip()!r}: {metric} is a fraction, so {m['num']} reads as "
                              f"{num:.0%}; write {m['num']}% (or {num / 100:g})")
        value = num / 100 if unit == "%" else num
        if not 0 <= value <= 1:
            raise ConfigError(f"bad SLO target {part.strip()!r}: a ratio lies between 0% and 100%")
        return SloTarget(metric, None, value)
    if metric not in LATENCY_METRICS:
        known = ", ".join([*LATENCY_METRICS, *RATIO_METRICS])
        raise ConfigError(f"bad SLO target {part.strip()!r}: unknown metric {metric!r} (known: {known})")
    if stat is None or stat not in STATS:
        raise ConfigError(
            f"bad SLO target {part.strip()!r}: give a statistic, one of {', '.join(STATS)} (e.g. {metric}_p95)"
        )
    if unit is None or unit == "%":
        raise ConfigError(f"bad SLO target {part.strip()!r}: latency needs a unit (us, ms, s)")
    if num <= 0:
        raise ConfigError(f"bad SLO target {part.strip()!r}: threshold must be positive")
    return SloTarget(metric, stat, num * _UNITS[unit])

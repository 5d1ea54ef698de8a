"""SLO figures for one window, and the rolling windows the loop keeps.

Per SLO target, a window gives `bad` and `total` request counts:
- a latency target `ttft_p95<=500ms` counts the window's requests slower than 500 ms, from the
  histogram delta between the two scrapes. Like the Prometheus rules (`slotune.rules.pick_bucket`),
  the threshold is rounded up to the next bucket bound, so only requests beyond that bound count
  as bad (lenient when the threshold falls between bounds);
- `error_rate<=1%` counts errored requests among the finished ones (`slotune.slo.ERROR_FINISH_REASONS`:
  `error`, not `abort`, as the Prometheus rules do).

A window's `met` is None ("inconclusive at this resolution") when the statistic was interpolated
inside the bucket that straddles the threshold: the buckets cannot tell.

From those: attainment = 1 - bad/total (the share of requests that met the target), and the
error-budget burn rate = (bad/total) / budget, where the budget is 1 - quantile for a latency target
(5 % for p95) and the threshold for error_rate. Burn 1.0 spends the budget exactly at the rate the
SLO allows; 14.4 is the SRE workbook's fast-burn page. A window with no requests has no figures
(None, "no data"). A `mean` target has no per-request budget: its value and met flag only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from slotune.collectors.exposition import Scrape
from slotune.collectors.histogram import Histogram
from slotune.collectors.snapshot import Snapshot
from slotune.slo import RATIO_METRICS, SloSpec, SloTarget, lookup, lookup_bucket, straddles


@dataclass(frozen=True)
class SloFigure:
    key: str  # ttft_p95
    target: str  # ttft_p95<=500ms
    value: float | None  # the window's statistic (seconds, or a ratio)
    met: bool | None
    bad: float  # requests that missed the per-request threshold
    total: float  # requests judged
    budget: float | None  # allowed bad share (1 - quantile, or the error_rate threshold)
    inconclusive: bool = False  # the statistic's bucket straddles the threshold: met is None

    @property
    def attainment(self) -> float | None:
        return None if self.total <= 0 or self.budget is None else 1.0 - self.bad / self.total

    @property
    def burn(self) -> float | None:
        if self.total <= 0 or self.budget is None:
            return None
        share = self.bad / self.total
        if self.budget <= 0:
            return 0.0 if share == 0 else float("inf")
        return share / self.budget

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "attainment": self.attainment, "burn": self.burn}


def window_histogram(before: Scrape | None, after: Scrape, key: str) -> Histogram | None:
    """`key`'s observations between the scrapes, summed over series; since start when before is None."""
    series = after.histograms.get(key)
    if not series:
        return None
    old = before.histograms.get(key, {}) if before is not None else {}
    total: Histogram | None = None
    for labels, hist in series.items():
        delta = hist.minus(old[labels]) if labels in old else hist
        delta = hist if delta is None else delta
        if total is not None and total.bounds != delta.bounds:
            return None
        total = delta if total is None else total.plus(delta)
    return total


def bad_count(hist: Histogram, threshold: float) -> float:
    """Observations above the first bucket bound at or over `threshold`."""
    for bound, cum in zip(hist.bounds, hist.counts, strict=True):
        if bound >= threshold:
            return max(hist.count - cum, 0.0)
    return 0.0


def slo_figures(slo: SloSpec, before: Scrape | None, after: Scrape, snapshot: Snapshot) -> list[SloFigure]:
    """Each SLO target's figures for the window `before → after` (already derived as `snapshot`)."""
    data = snapshot.to_dict()
    base = None if snapshot.counter_reset else before
    out = []
    for t in slo.targets:
        value = lookup(data, t)
        bad, total = _counts(t, base, after, snapshot)
        budget = t.threshold if t.metric in RATIO_METRICS else (round(1.0 - t.quantile, 6) if t.quantile else None)
        unsure = straddles(lookup_bucket(data, t), t.threshold)
        out.append(SloFigure(t.key, str(t), value, None if unsure else t.met_by(value), bad, total, budget, unsure))
    return out


def _counts(t: SloTarget, before: Scrape | None, after: Scrape, snapshot: Snapshot) -> tuple[float, float]:
    if t.metric in RATIO_METRICS:
        total = snapshot.requests_finished or 0.0
        return (snapshot.error_rate or 0.0) * total, total
    if t.quantile is None:
        return 0.0, 0.0
    hist = window_histogram(before, after, t.metric)
    if hist is None or hist.count <= 0:
        return 0.0, 0.0
    return bad_count(hist, t.threshold), hist.count


@dataclass(frozen=True)
class Window:
    """One loop window: the derived snapshot, its SLO figures and its row id in the store."""

    snapshot: Snapshot
    figures: tuple[SloFigure, ...]
    snapshot_id: int | None = None


class Rolling:
    """The last `size` windows of one target, oldest first."""

    def __init__(self, size: int) -> None:
        self._windows: deque[Window] = deque(maxlen=size)

    def append(self, window: Window) -> None:
        self._windows.append(window)

    def clear(self) -> None:
        self._windows.clear()

    def __len__(self) -> int:
        return len(self._windows)

    def last(self, n: int | None = None) -> list[Window]:
        items = list(self._windows)
        return items if n is None else items[-n:]

    def snapshots(self) -> list[Snapshot]:
        return [w.snapshot for w in self._windows]


@dataclass(frozen=True)
class Attainment:
    """SLO attainment over several windows: per target, bad and total summed, then 1 - bad/total.
    `score` is the worst target's attainment (None without traffic): what apply mode compares."""

    per_target: dict[str, float | None]
    requests: float
    windows: int

    @property
    def score(self) -> float | None:
        vals = [v for v in self.per_target.values() if v is not None]
        return min(vals) if vals else None

    def to_dict(self) -> dict[str, object]:
        return {"per_target": self.per_target, "requests": self.requests, "windows": self.windows,
                "score": self.score}


def attainment(windows: Sequence[Window] | Iterable[Window]) -> Attainment:
    bad: dict[str, float] = {}
    total: dict[str, float] = {}
    n = 0
    requests = 0.0
    for w in windows:
        n += 1
        requests += w.snapshot.requests_finished or 0.0
        for f in w.figures:
            if f.budget is None:
                continue
            bad[f.key] = bad.get(f.key, 0.0) + f.bad
            total[f.key] = total.get(f.key, 0.0) + f.total
    per = {k: (1.0 - bad[k] / total[k]) if total[k] > 0 else None for k in total}
    return Attainment(per, requests, n)

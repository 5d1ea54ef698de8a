"""Quantiles against an independent, obviously-correct histogram_quantile written here, on the
real captures' buckets and on hand-made edge cases (+Inf bucket, first bucket, empty)."""

from __future__ import annotations

import math
import random

import pytest

from slotune.collectors.exposition import parse
from slotune.collectors.histogram import Histogram, quantile, summarize
from tests.support.pages import ALL, page
from tests.support.quantiles import reference_quantile


def real_histograms():
    for name in ALL:
        for key, series in parse(page(name)).histograms.items():
            for h in series.values():
                if h.count:
                    yield f"{name}:{key}", h


@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_real_buckets_match_reference(q):
    n = 0
    for where, h in real_histograms():
        ours = quantile(q, h.bounds, h.counts)
        ref = reference_quantile(q, list(zip(h.bounds, h.counts, strict=True)))
        assert ours == pytest.approx(ref, rel=1e-12), where
        n += 1
    assert n >= 30


def test_random_buckets_match_reference():
    rng = random.Random(7)
    for _ in range(500):
        bounds = sorted(rng.sample([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 60], rng.randint(1, 8)))
        counts, c = [], 0
        for _ in bounds:
            c += rng.choice([0, 0, 1, 3, 10])
            counts.append(float(c))
        counts.append(float(c + rng.choice([0, 0, 2])))
        h = Histogram((*map(float, bounds), math.inf), tuple(counts), 1.0, counts[-1])
        for q in (0.5, 0.95, 0.99):
            assert quantile(q, h.bounds, h.counts) == pytest.approx(
                reference_quantile(q, list(zip(h.bounds, h.counts, strict=True)))
            )


def test_quantile_in_inf_bucket_is_last_finite_bound():
    assert quantile(0.99, (1.0, 2.0, math.inf), (0.0, 1.0, 10.0)) == 2.0


def test_first_bucket_interpolates_from_zero():
    assert quantile(0.5, (4.0, math.inf), (10.0, 10.0)) == 2.0
    assert quantile(0.5, (-1.0, 4.0, math.inf), (10.0, 10.0, 10.0)) == -1.0


def test_interpolation_inside_bucket():
    # 10 obs in (0.1, 0.2]: p50 is rank 10 of 20 → 5 obs into a 10-obs bucket → 0.15
    assert quantile(0.5, (0.1, 0.2, math.inf), (5.0, 15.0, 20.0)) == pytest.approx(0.15)


def test_empty_and_malformed_are_no_data():
    assert quantile(0.5, (1.0, math.inf), (0.0, 0.0)) is None
    assert quantile(0.5, (1.0, 2.0), (1.0, 2.0)) is None  # no +Inf
    assert summarize(Histogram((1.0, math.inf), (0.0, 0.0), 0.0, 0.0)) is None
    assert summarize(None) is None


def test_summary_mean_from_sum_and_count():
    s = summarize(Histogram((1.0, math.inf), (3.0, 4.0), 6.0, 4.0))
    assert s.mean == 1.5 and s.count == 4.0
    assert s.p99 == 1.0  # rank 3.96 is in +Inf → the last finite bound


def test_delta_and_reset():
    before = Histogram((1.0, math.inf), (1.0, 2.0), 3.0, 2.0)
    after = Histogram((1.0, math.inf), (4.0, 6.0), 9.0, 6.0)
    assert after.minus(before) == Histogram((1.0, math.inf), (3.0, 4.0), 6.0, 4.0)
    assert before.minus(after) is None  # went backwards: a restart
    assert after.minus(Histogram((2.0, math.inf), (1.0, 2.0), 3.0, 2.0)) is None  # other buckets


def test_buckets_that_dip_are_made_monotonic_first():
    # Scrape skew can leave a cumulative bucket below the one under it (here 5 < 6). Prometheus'
    # ensureMonotonic raises it to 6 before anything else: rank 7 (p70 of 10) then falls in (3, 4]
    # with 2 observations (8 - 6), one of them to go: 3.5. Taken as scraped, the bucket would hold
    # 3 (8 - 5) with 2 to go: 3.67. (Both figures are what `promtool test rules` 2.42 evaluates.)
    bounds, counts = (1.0, 2.0, 3.0, 4.0, math.inf), (2.0, 6.0, 5.0, 8.0, 10.0)
    assert quantile(0.7, bounds, counts) == pytest.approx(3.5)
    # A dip in the +Inf bucket: the observations are the largest cumulative count, not the last.
    assert quantile(0.5, (1.0, 2.0, math.inf), (2.0, 6.0, 4.0)) == pytest.approx(1.25)

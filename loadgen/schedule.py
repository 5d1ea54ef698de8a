"""When each request is due: open-loop arrivals precomputed from a seeded RNG, like `vllm bench serve`.

Inter-arrival gaps follow a gamma distribution with shape = burstiness and mean 1/rate (burstiness 1
is a Poisson process; < 1 burstier, > 1 more even, inf a fixed interval). As vLLM does, the cumulative
times are rescaled so the last request is due at exactly n/rate: the offered rate is then the same
for every seed instead of drifting by a percent or two.
"""

from __future__ import annotations

import math

import numpy as np

# The most requests one run sends: its schedule, prompts and records are held in memory (a run of
# 10^12 failed allocating its schedule, after vLLM had started). A million is ~14 h at 20 req/s.
MAX_REQUESTS = 1_000_000


def arrival_times(n: int, rate: float | None, burstiness: float = 1.0, seed: int = 0) -> np.ndarray | None:
    """Seconds after the start at which each of `n` requests is due; None for an infinite rate
    (everything at once, or as fast as a concurrency limit allows)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if rate is None or math.isinf(rate):
        return None
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be positive")
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / rate)
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(gaps)
    if times[-1] > 0:
        times *= (n / rate) / times[-1]
    return times

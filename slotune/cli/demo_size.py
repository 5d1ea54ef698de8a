"""How much load the demo sends, from what this host measured: a pure function, no I/O.

A 2-core host may run the real model four times slower than another (bf16 without native bf16
instructions, no AVX-512): fixed sizes either overrun the demo's budget or waste it. So the demo times
its own vLLM start and a short probe (the prefill rate of one prompt, the decode step alone and at the
demo's concurrency), then picks, in this order:

1. the number of tuning trials (at most `MAX_TRIALS`) that leaves each measured window at least
   `MIN_WINDOW_S` seconds within the budget, counting one vLLM start per trial and per re-measurement;
2. the window length: what the budget leaves per window, at most `MAX_WINDOW_S`;
3. the largest workload shape (prompt and reply caps) whose window holds at least `MIN_REQUESTS`
   requests, and as many requests as fit, at most `MAX_REQUESTS`.

A window's time is estimated as its requests (warm-up included) times the server time one request
costs in a closed loop at the demo's concurrency c: its latency (the prompt at the probed prefill rate,
then about one step per stream before its first token and one step per reply token, at the probed
step time) over c, with a margin for a busy host. Explicit choices (requests, trials) are kept as given.

Checked against a run on a 2-core AVX2-only EPYC under load (load average 6): probe 7.4 ms/token and
a 343 ms step at concurrency 4; 8 requests of <= 16-token replies took 19.2 s on the server's clock,
estimated 17.6 s (without the per-stream step and the margin, 12.3 s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The whole demo, from the command's start to its last line, on any host (the target is 10 min).
BUDGET_S = 510.0
MAX_TRIALS = 3
MIN_WINDOW_S, MAX_WINDOW_S = 40.0, 60.0
MIN_REQUESTS, MAX_REQUESTS = 16, 40
# Fewer than this and a window's percentiles are a handful of samples: sent even past the budget.
FLOOR_REQUESTS = 8
# Per vLLM run besides its start: stopping it, the scrapes around the window, storing the trial.
RUN_OVERHEAD_S = 8.0
# After the last window: the diagnosis, the study's report and plots.
TAIL_S = 15.0
DEMO_WARMUP, STUDY_WARMUP = 4, 2
# A shared 2-core host's steps vary by a quarter between the probe and the window.
MARGIN = 1.25


@dataclass(frozen=True)
class Probe:
    """What the demo measured on its own server. Seconds; `step_s` is one decode step with
    `concurrency` sequences running (each of them gets one token from it)."""

    start_s: float
    prefill_s_per_token: float
    step_s: float
    concurrency: int


@dataclass(frozen=True)
class Shape:
    """A workload shape on offer: its caps (tokens) and the mean prompt and reply lengths of the
    requests it would send (what the demo's seed draws from the real prompts)."""

    prompt_cap: int
    output_cap: int
    mean_prompt: float
    mean_output: float

    def request_s(self, probe: Probe) -> float:
        """Server seconds one request costs at the probe's concurrency (its latency over c)."""
        c = max(1, probe.concurrency)
        latency = self.mean_prompt * probe.prefill_s_per_token + (c + self.mean_output) * probe.step_s
        return MARGIN * latency / c


@dataclass(frozen=True)
class DemoSize:
    """The demo's load: the shape, requests per window (the demo's and each trial's), trials, and the
    estimated seconds of one window and of the whole rest of the demo."""

    shape: Shape
    num_requests: int
    trials: int
    window_s: float
    total_s: float
    fits: bool


def study_runs(trials: int) -> int:
    """vLLM runs a study of `trials` makes at most: each trial, then the default measured again, and the
    best other config too when there is one (tuner/verdict.py's re-measurement, one round; none when
    every tuned config missed the SLOs, so this errs long)."""
    if trials <= 0:
        return 0
    return trials + 1 + (1 if trials >= 2 else 0)


def rest_s(probe: Probe, trials: int, window_s: float) -> float:
    """Seconds the demo still takes after the probe: its own window, then the study."""
    return window_s + study_runs(trials) * (probe.start_s + RUN_OVERHEAD_S + window_s) + RUN_OVERHEAD_S + TAIL_S


def window_for(probe: Probe, trials: int, remaining_s: float) -> float:
    """The window length that makes the rest of the demo take `remaining_s` (may be negative)."""
    fixed = study_runs(trials) * (probe.start_s + RUN_OVERHEAD_S) + RUN_OVERHEAD_S + TAIL_S
    return (remaining_s - fixed) / (study_runs(trials) + 1)


def size_demo(probe: Probe, shapes: Sequence[Shape], remaining_s: float, *, num_requests: int | None = None,
              trials: int | None = None) -> DemoSize:
    """Size the demo's load to fit `remaining_s` seconds. `shapes`, largest first, are the workload
    shapes on offer (one when the workload is the user's own). `num_requests` and `trials`, when
    given, are kept. Raises ValueError when no shape is offered or the probe has no positive figures."""
    if not shapes:
        raise ValueError("no workload shape to choose from")
    if not (probe.prefill_s_per_token >= 0 and probe.step_s > 0 and probe.start_s >= 0 and probe.concurrency >= 1):
        raise ValueError(f"a probe needs positive figures, not {probe}")
    if trials is None:
        trials = next((t for t in range(MAX_TRIALS, 0, -1) if window_for(probe, t, remaining_s) >= MIN_WINDOW_S), 1)
    window = min(MAX_WINDOW_S, window_for(probe, trials, remaining_s))
    # The demo's window has the longer warm-up; each trial's is a little shorter.
    if num_requests is not None:
        shape = next((s for s in shapes if (num_requests + DEMO_WARMUP) * s.request_s(probe) <= window), shapes[-1])
        n = num_requests
    else:
        def fitting(s: Shape) -> int:
            return math.floor(max(0.0, window) / s.request_s(probe)) - DEMO_WARMUP

        shape = next((s for s in shapes if fitting(s) >= MIN_REQUESTS), shapes[-1])
        n = min(MAX_REQUESTS, max(FLOOR_REQUESTS, fitting(shape)))
    window_s = (n + DEMO_WARMUP) * shape.request_s(probe)
    total = rest_s(probe, trials, window_s)
    return DemoSize(shape=shape, num_requests=n, trials=trials, window_s=window_s, total_s=total,
                    fits=total <= remaining_s)

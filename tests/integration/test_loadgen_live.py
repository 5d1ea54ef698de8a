"""The load generator against a real vLLM (tiny model): what it reports sending is what the server
counted. Requests, prompt and generated tokens equal the collectors' window (`/metrics` scraped before
and after, `derive`).

The comparison of its TTFT/TPOT with `vllm.benchmarks.serve` lives in `bench/bench_loadgen.py --vs-vllm`
(figures, no assertion): on 2 shared cores the CPU vLLM's streaming pace drifts by several times within
seconds, so a 15 % assertion there fails whichever client measures.
"""

from __future__ import annotations

import time

import pytest

from slotune.collectors.vllm_metrics import derive, scrape
from slotune.loadgen.runner import run_load
from slotune.loadgen.workload import Workload, load_workload

pytestmark = pytest.mark.integration

MODEL = "tiny"  # conftest's served_model_name


def window_after(url: str, before, n: int, timeout: float = 15.0):
    """The collectors' window once the server has counted all `n` requests (its stats may trail)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = derive(before, scrape(f"{url}/metrics"), target=url)
        if (snap.requests_finished or 0) >= n or time.monotonic() > deadline:
            return snap


@pytest.mark.parametrize("workload", [Workload.fixed(100, 12), load_workload("chat")], ids=["fixed", "chat"])
def test_counts_match_the_collector_window(vllm_server, workload: Workload) -> None:
    url = vllm_server.base_url
    before = scrape(f"{url}/metrics")
    result = run_load(url, MODEL, workload, concurrency=4, num_requests=12, seed=4242)
    d = result.to_dict()
    snap = window_after(url, before, d["completed"])
    assert d["completed"] == 12 and d["failed"] == 0
    assert snap.requests_finished == 12 and not snap.counter_reset
    assert snap.prompt_tokens_total == d["total_input_tokens"]
    assert snap.generation_tokens_total == d["total_output_tokens"]
    # ignore_eos + max_tokens: exactly the output lengths the workload drew
    assert d["total_output_tokens"] == sum(r.output_len for r in result.records)
    if workload.name.startswith("fixed"):
        # prompt lengths calibrated against the server's /tokenize: close to what was asked
        per_request = [r.prompt_tokens for r in result.records]
        assert all(abs(p - 100) <= 5 for p in per_request), per_request

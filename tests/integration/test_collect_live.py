"""The collector against a real vLLM (tiny model): after a known load, the window's request and
token counts are exactly what was sent, and its TTFT/TPOT/e2e quantiles equal histogram_quantile
computed here, independently, from the raw bucket deltas (prometheus_client's parser + the
textbook algorithm). Also `slotune collect --once --json` against the live server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slotune.collectors.exposition import parse
from slotune.collectors.vllm_metrics import VllmCollector, derive
from tests.support.quantiles import reference_quantile

pytestmark = pytest.mark.integration

# (prompt length, output length): prompts are token ids so their length is exact; all shorter than
# one KV block (128) so prefix caching cannot change what is counted.
LOAD = [(12, 8), (20, 16), (33, 5), (7, 24), (50, 10), (16, 12)]


def raw(base_url: str) -> str:
    return httpx.get(f"{base_url}/metrics", timeout=10).text


def samples(text: str) -> dict[str, list]:
    out = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append(s)
    return out


def total(text: str, name: str) -> float:
    return sum(s.value for s in samples(text)[name])


def histogram_quantile(q: float, before: str, after: str, base: str) -> float | None:
    """Prometheus' histogram_quantile(q, after - before) over the summed bucket deltas."""
    def buckets(text: str) -> dict[float, float]:
        out: dict[float, float] = defaultdict(float)
        for s in samples(text)[base + "_bucket"]:
            out[float(s.labels["le"])] += s.value
        return out
    a, b = buckets(after), buckets(before)
    return reference_quantile(q, [(le, a[le] - b.get(le, 0.0)) for le in a])


def send_load(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for i, (prompt_len, output_len) in enumerate(LOAD):
            prompt = [(7 * i + 3 * j) % 400 + 10 for j in range(prompt_len)]
            r = client.post("/v1/completions", json={
                "model": "tiny", "prompt": prompt, "max_tokens": output_len, "ignore_eos": True,
                "temperature": 0.0})
            r.raise_for_status()
            usage = r.json()["usage"]
            assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt_len, output_len)


def settled(base_url: str, before: str, n: int, timeout: float = 15.0) -> str:
    """The page once the server has counted all `n` requests (its stats may trail the responses)."""
    deadline = time.monotonic() + timeout
    while True:
        after = raw(base_url)
        done = total(after, "vllm:request_success_total") - total(before, "vllm:request_success_total")
        if done >= n or time.monotonic() > deadline:
            return after
        time.sleep(0.2)


def test_window_matches_the_load_and_histogram_quantile(vllm_server):
    base = vllm_server.base_url
    collector = VllmCollector(base)
    before = raw(base)
    assert collector.poll() is None
    send_load(base)
    after = settled(base, before, len(LOAD))
    polled = collector.poll()

    snap = derive(parse(before, timestamp=1.0), parse(after, timestamp=2.0), base)
    for s in (snap, polled):
        assert s.requests_finished == len(LOAD) and not s.counter_reset
        assert s.prompt_tokens_total == sum(p for p, _ in LOAD)
        assert s.generation_tokens_total == sum(o for _, o in LOAD)
        assert s.finished_by_reason["length"] == len(LOAD) and s.error_rate == 0.0
    assert snap.output_tokens.count == len(LOAD)
    assert snap.output_tokens.mean == sum(o for _, o in LOAD) / len(LOAD)
    assert snap.prompt_tokens.mean == sum(p for p, _ in LOAD) / len(LOAD)
    assert snap.request_rate == len(LOAD) / 1.0

    for field, name in [("ttft", "vllm:time_to_first_token_seconds"),
                        ("tpot", "vllm:request_time_per_output_token_seconds"),
                        ("e2e", "vllm:e2e_request_latency_seconds")]:
        q = getattr(snap, field)
        assert q.count == len(LOAD), field
        for attr, level in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert getattr(q, attr) == pytest.approx(histogram_quantile(level, before, after, name), rel=1e-9)
        mean = (total(after, name + "_sum") - total(before, name + "_sum")) / len(LOAD)
        assert q.mean == pytest.approx(mean, rel=1e-9)
        assert 0 < q.p50 <= q.p95 <= q.p99
    # the collector's own scrape of the same window agrees on what does not move while idle
    assert polled.e2e.count == snap.e2e.count and polled.tpot.p95 == pytest.approx(snap.tpot.p95)
    assert polled.capacity is not None and polled.capacity.block_size == 128


def test_collect_once_json_cli(vllm_server):
    finished = total(raw(vllm_server.base_url), "vllm:request_success_total")  # the server is idle
    out = subprocess.run(
        [sys.executable, "-m", "slotune.cli.main", "collect", "--target", vllm_server.base_url, "--once", "--json"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("ttft_seconds", "tpot_seconds", "itl_seconds", "e2e_seconds", "queue_seconds", "kv_cache_usage",
                "requests_running", "requests_waiting", "preemptions_per_second", "prefix_cache_hit_rate",
                "spec_decode_acceptance_rate", "gpu"):
        assert key in d, key
    assert d["cumulative"] is True and d["gpu"] is None and d["requests_finished"] == finished
    assert set(d["e2e_seconds"]) >= {"p50", "p95", "p99", "mean"}
    assert d["capacity"]["kv_cache_tokens"] > 0

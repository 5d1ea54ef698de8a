"""Windows from two real scrapes: every figure checked against values read independently with
prometheus_client's parser; counter resets, missing families, spec decode, several engines, both
metric-name generations and Ray's prefix."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slotune.collectors.exposition import parse
from slotune.collectors.snapshot import Snapshot
from slotune.collectors.vllm_metrics import derive, derive_per_engine
from tests.support.pages import (
    AFTER,
    SPEC_AFTER,
    SPEC_UNDER,
    UNDER,
    old_generation,
    page,
    ray_prefix,
    two_engines,
    without,
)
from tests.support.quantiles import reference_quantile

T0, T1 = 1_795_479_000.0, 1_795_479_010.0  # scrape times: a 10 s window, after the captures


def samples(text: str) -> dict[str, list]:
    out = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append(s)
    return out


def total(text: str, name: str, **match: str) -> float:
    return sum(s.value for s in samples(text)[name] if all(s.labels.get(k) == v for k, v in match.items()))


def ref_window_quantile(before: str, after: str, base: str, q: float) -> float | None:
    """histogram_quantile(q, after - before) from prometheus_client's samples."""
    def buckets(text):
        return {float(s.labels["le"]): s.value for s in samples(text)[base + "_bucket"]}
    a, b = buckets(after), buckets(before)
    return reference_quantile(q, [(le, a[le] - b.get(le, 0.0)) for le in a])


def window(before_name: str, after_name: str, **kw) -> Snapshot:
    return derive(parse(page(before_name), timestamp=T0), parse(page(after_name), timestamp=T1), "t", **kw)


def test_window_between_real_scrapes():
    before, after = page(UNDER), page(AFTER)
    snap = window(UNDER, AFTER)
    finished = total(after, "vllm:request_success_total") - total(before, "vllm:request_success_total")
    gen = total(after, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total")
    assert finished == 40 and snap.requests_finished == finished
    assert snap.request_rate == finished / 10
    assert snap.generation_tokens_total == gen and snap.generation_tokens_per_second == gen / 10
    assert snap.finished_by_reason["length"] == 40 and snap.error_rate == 0.0
    assert (snap.window_start, snap.window_end, snap.cumulative, snap.counter_reset) == (T0, T1, False, False)
    for field, base in [("tpot", "vllm:request_time_per_output_token_seconds"),
                        ("e2e", "vllm:e2e_request_latency_seconds"),
                        ("itl", "vllm:inter_token_latency_seconds"),
                        ("queue", "vllm:request_queue_time_seconds")]:
        q = getattr(snap, field)
        for name, level in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
            assert getattr(q, name) == pytest.approx(ref_window_quantile(before, after, base, level)), field
        s = total(after, base + "_sum") - total(before, base + "_sum")
        c = total(after, base + "_count") - total(before, base + "_count")
        assert q.count == c and q.mean == pytest.approx(s / c)
    # The 40 requests all had their first token before the first scrape: no TTFT in this window.
    assert total(after, "vllm:time_to_first_token_seconds_count") == total(
        before, "vllm:time_to_first_token_seconds_count")
    assert snap.ttft is None
    # Gauges are the after-scrape's; capacity from cache_config_info.
    assert snap.requests_running == 0 and snap.kv_cache_usage == 0.0
    assert snap.capacity.kv_cache_tokens == 2097152 and snap.capacity.block_size == 128
    assert snap.capacity.max_concurrency == 1024.0 and snap.capacity.prefix_caching_enabled is True


def test_empty_window_is_no_data_not_zero():
    snap = window(AFTER, AFTER)
    assert snap.empty and snap.requests_finished == 0
    for f in ("ttft", "tpot", "itl", "e2e", "queue", "prefill", "decode", "prompt_tokens", "output_tokens"):
        assert getattr(snap, f) is None, f
    assert snap.error_rate is None and snap.prefix_cache_hit_rate is None
    assert snap.to_dict()["ttft_seconds"] is None
    assert snap.request_rate == 0.0  # a rate over a known window is a real zero


def test_cumulative_since_server_start():
    text = page(AFTER)
    snap = derive(None, parse(text, timestamp=T1), "t")
    start = total(text, "process_start_time_seconds")
    assert snap.cumulative and snap.window_start == start
    assert snap.requests_finished == 48 == snap.e2e.count
    assert snap.prompt_tokens_total == total(text, "vllm:prompt_tokens_total")
    assert snap.request_rate == pytest.approx(48 / (T1 - start))
    assert snap.ttft.p95 == pytest.approx(reference_quantile(
        0.95, [(float(s.labels["le"]), s.value) for s in samples(text)["vllm:time_to_first_token_seconds_bucket"]]))


def test_counter_reset_uses_the_after_scrape_alone():
    # after-load then under-load: every counter went backwards, as after a restart.
    snap = window(AFTER, UNDER)
    cumulative = derive(None, parse(page(UNDER), timestamp=T1), "t")
    assert snap.counter_reset and not cumulative.counter_reset
    assert snap.requests_finished == cumulative.requests_finished == 8
    assert snap.e2e == cumulative.e2e and snap.ttft == cumulative.ttft
    for v in (snap.request_rate, snap.generation_tokens_per_second, snap.preemptions_per_second):
        assert v is not None and v >= 0
    for f in ("ttft", "tpot", "itl", "e2e"):
        q = getattr(snap, f)
        assert q is None or (q.count > 0 and min(q.p50, q.p95, q.p99, q.mean) >= 0)


def test_restart_seen_by_process_start_time():
    # Counters grew, but the process is new: the window is the after-scrape since its start.
    restarted = page(AFTER).replace("process_start_time_seconds 1.79547820078e+09",
                                    f"process_start_time_seconds {T0 + 4}")
    assert restarted != page(AFTER)
    snap = derive(parse(page(UNDER), timestamp=T0), parse(restarted, timestamp=T1), "t")
    assert snap.counter_reset and snap.requests_finished == 48 and snap.window_start == T0 + 4
    assert snap.request_rate == pytest.approx(48 / 6)


def test_missing_families_give_none_not_errors():
    text = without(page(AFTER), "time_to_first_token", "kv_cache_usage", "request_success", "cache_config_info")
    snap = derive(parse(page(UNDER), timestamp=T0), parse(text, timestamp=T1), "t")
    assert snap.ttft is None and snap.kv_cache_usage is None and snap.capacity is None
    assert snap.requests_finished is None and snap.request_rate is None and snap.error_rate is None
    assert snap.finished_by_reason == {}
    assert snap.e2e.count == 40  # the rest is still there


def test_spec_decode_window():
    before, after = page(SPEC_UNDER), page(SPEC_AFTER)
    snap = window(SPEC_UNDER, SPEC_AFTER)
    drafts = total(after, "vllm:spec_decode_num_drafts_total") - total(before, "vllm:spec_decode_num_drafts_total")
    cumulative = derive(None, parse(after, timestamp=T1), "t")
    assert cumulative.spec_decode_drafts == 1 and cumulative.spec_decode_acceptance_rate == 0.0
    assert cumulative.spec_decode_mean_acceptance_length == 1.0
    assert cumulative.spec_decode_per_position == (0.0, 0.0, 0.0)
    assert snap.spec_decode_drafts == drafts
    if not drafts:  # no draft inside this window: "no data"
        assert snap.spec_decode_acceptance_rate is None and snap.spec_decode_per_position == ()


def test_spec_decode_figures_as_vllm_defines_them():
    # The real page with accepted tokens edited in: 10 drafts of 3 tokens, 12 accepted (6, 4, 2 by position).
    text = page(SPEC_AFTER)
    for name, value in [("vllm:spec_decode_num_drafts_total", 10), ("vllm:spec_decode_num_draft_tokens_total", 30),
                        ("vllm:spec_decode_num_accepted_tokens_total", 12)]:
        text = text.replace(f'{name}{{engine="0",model_name="tiny-llama"}} ', f'{name}{{engine="0",model_name="tiny-llama"}} {value}#')
    for pos, value in ((0, 6), (1, 4), (2, 2)):
        text = text.replace(f'per_pos_total{{engine="0",model_name="tiny-llama",position="{pos}"}} 0.0',
                            f'per_pos_total{{engine="0",model_name="tiny-llama",position="{pos}"}} {value}')
    text = "\n".join(ln.split("#")[0] if "#" in ln and not ln.startswith("#") else ln for ln in text.splitlines())
    snap = derive(None, parse(text, timestamp=T1), "t")
    assert snap.spec_decode_acceptance_rate == 12 / 30
    assert snap.spec_decode_mean_acceptance_length == 1 + 12 / 10
    assert snap.spec_decode_per_position == (0.6, 0.4, 0.2)


def test_two_engines_sum_or_apart():
    before, after = parse(two_engines(page(UNDER)), timestamp=T0), parse(two_engines(page(AFTER)), timestamp=T1)
    assert after.engines() == ["0", "1"]
    one = window(UNDER, AFTER)
    both = derive(before, after, "t")
    assert both.engines == 2 and both.requests_finished == 2 * one.requests_finished
    assert both.e2e.count == 2 * one.e2e.count and both.e2e.p95 == one.e2e.p95
    assert both.kv_cache_usage == one.kv_cache_usage  # averaged, not added
    assert both.capacity.kv_cache_tokens == 2 * one.capacity.kv_cache_tokens
    per = derive_per_engine(before, after, "t")
    assert set(per) == {"0", "1"}
    for snap in per.values():
        assert snap.requests_finished == one.requests_finished and snap.e2e == one.e2e and snap.engines == 1


def test_older_generation_names_give_the_same_window():
    old = derive(parse(old_generation(page(UNDER)), timestamp=T0),
                 parse(old_generation(page(AFTER)), timestamp=T1), "t")
    new = window(UNDER, AFTER)
    assert old.tpot is None and new.tpot is not None  # older releases had no per-request TPOT
    assert old.itl == new.itl and old.kv_cache_usage == new.kv_cache_usage
    assert old.prefix_cache_hit_rate == new.prefix_cache_hit_rate
    assert old.to_dict() | {"tpot_seconds": None} == new.to_dict() | {"tpot_seconds": None}


def test_ray_prefix_gives_the_same_window():
    ray = derive(parse(ray_prefix(page(SPEC_UNDER)), timestamp=T0),
                 parse(ray_prefix(page(SPEC_AFTER)), timestamp=T1), "t")
    assert ray == window(SPEC_UNDER, SPEC_AFTER)


def test_snapshot_json_round_trip_and_contract_keys():
    d = window(UNDER, AFTER).to_dict()
    for key in ("ttft_seconds", "tpot_seconds", "itl_seconds", "e2e_seconds", "queue_seconds", "kv_cache_usage",
                "requests_running", "requests_waiting", "preemptions_per_second", "prefix_cache_hit_rate",
                "spec_decode_acceptance_rate", "gpu"):
        assert key in d
    assert set(d["e2e_seconds"]) >= {"p50", "p95", "p99", "mean", "count"}
    assert Snapshot.from_dict(d) == window(UNDER, AFTER)
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())

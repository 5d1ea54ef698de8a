"""The exposition parser against prometheus_client's parser (the reference), on real vLLM pages,
and its refusals: garbage lines, NaN counters, histograms without +Inf, pages that are not vLLM's."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slotune import metric_names
from slotune.collectors.exposition import parse
from slotune.errors import TargetError
from slotune.metric_names import Kind
from tests.support.pages import AFTER, ALL, SPEC_AFTER, old_generation, page, ray_prefix


def reference_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample prometheus_client reads that slotune's table names, keyed by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if metric_names.lookup(s.name) is not None:
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def our_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """The same view rebuilt from a `Scrape` (buckets back to `le` samples)."""
    scrape = parse(text)
    out = {}
    for key, series in scrape.values.items():
        for labels, v in series.items():
            out[(scrape.sources[key], frozenset(labels))] = v
    for key, series in scrape.infos.items():
        for labels in series:
            out[(scrape.sources[key], frozenset(labels.items()))] = 1.0
    for key, series in scrape.histograms.items():
        base = scrape.sources[key]
        for labels, h in series.items():
            for le, c in zip(h.bounds, h.counts, strict=True):
                le_text = "+Inf" if math.isinf(le) else repr(le)
                out[(base + "_bucket", frozenset((*labels, ("le", le_text))))] = c
            out[(base + "_sum", frozenset(labels))] = h.sum
            out[(base + "_count", frozenset(labels))] = h.count
    return out


@pytest.mark.parametrize("name", ALL)
def test_same_samples_as_prometheus_client(name):
    text = page(name)
    ref = reference_samples(text)
    ours = our_samples(text)
    assert len(ref) > 200
    assert ours == ref


def test_every_table_metric_is_on_a_real_page():
    scrape = parse(page(SPEC_AFTER))
    assert set(scrape.sources) == {m.key for m in metric_names.METRICS}
    assert all(scrape.sources[m.key] == m.name for m in metric_names.METRICS)


def test_bucket_bounds_come_from_le_labels():
    text = page(AFTER).replace('vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001"',
                               'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.0015"')
    h = next(iter(parse(text).histograms["ttft"].values()))
    assert h.bounds[0] == 0.0015 and math.isinf(h.bounds[-1])
    assert list(h.bounds) == sorted(h.bounds)


def test_older_names_read_as_aliases():
    scrape = parse(old_generation(page(AFTER)))
    assert scrape.sources["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"
    assert scrape.sources["prefix_cache_queries"] == "vllm:gpu_prefix_cache_queries_total"
    assert scrape.sources["itl"] == "vllm:time_per_output_token_seconds"
    assert "tpot" not in scrape.histograms
    new = parse(page(AFTER))
    assert scrape.histograms["itl"] == new.histograms["itl"]
    assert scrape.values["prefix_cache_hits"] == new.values["prefix_cache_hits"]


def test_current_name_wins_when_both_generations_are_on_the_page():
    # Transitional releases exported both names; reading both would count everything twice.
    # (Only the old family is added: a whole second page would repeat every series, which is refused.)
    old = [ln.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc") for ln in page(AFTER).splitlines()
           if "vllm:kv_cache_usage_perc" in ln]
    text = page(AFTER) + "\n".join(old) + "\n"
    both = parse(text.replace('gpu_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.0',
                              'gpu_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.9'))
    assert both.sources["kv_cache_usage"] == "vllm:kv_cache_usage_perc"
    assert list(both.values["kv_cache_usage"].values()) == [0.0]


def test_ray_prefix():
    ray = parse(ray_prefix(page(SPEC_AFTER)))
    new = parse(page(SPEC_AFTER))
    assert ray.histograms == new.histograms and ray.values == new.values
    assert ray.sources["ttft"] == "vllm:time_to_first_token_seconds"  # canonical spelling reported
    assert metric_names.canonical_name("ray_vllm_num_requests_running") == "vllm:num_requests_running"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("this is not prometheus", "line"),
        ('vllm:num_requests_running{engine="0" 1.0', "line"),
        ('vllm:num_requests_running{engine="0",model_name="tiny-llama"} twelve', "bad value"),
        ('vllm:num_requests_running{engine=0} 1.0', "malformed labels"),
        ('vllm:prompt_tokens_total{engine="0",model_name="tiny-llama"} 1.0 garbage', "line"),
    ],
)
def test_garbage_lines_are_a_clear_error(bad, fragment):
    lines = page(AFTER).splitlines()
    lines.insert(200, bad)
    with pytest.raises(TargetError) as err:
        parse("\n".join(lines), url="http://x/metrics")
    msg = str(err.value)
    assert fragment in msg and "line 201" in msg and "http://x/metrics" in msg and "\n" not in msg


def test_nan_in_a_counter_or_histogram_is_refused():
    text = page(AFTER).replace('vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} 5632.0',
                               'vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} NaN')
    assert "NaN" in text
    with pytest.raises(TargetError, match="NaN in counter 'vllm:generation_tokens_total'"):
        parse(text)
    text = page(AFTER).replace('vllm:e2e_request_latency_seconds_count{engine="0",model_name="tiny-llama"} 48.0',
                               'vllm:e2e_request_latency_seconds_count{engine="0",model_name="tiny-llama"} NaN')
    assert "seconds_count{engine=\"0\",model_name=\"tiny-llama\"} NaN" in text
    with pytest.raises(TargetError, match="NaN in histogram"):
        parse(text)


def test_nan_gauge_is_no_data():
    text = page(AFTER).replace('vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.0',
                               'vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} NaN')
    assert "perc{engine=\"0\",model_name=\"tiny-llama\"} NaN" in text
    assert "kv_cache_usage" not in parse(text).values


def test_histogram_without_inf_bucket_is_refused():
    text = "\n".join(ln for ln in page(AFTER).splitlines()
                     if not ln.startswith("vllm:e2e_request_latency_seconds_bucket") or "+Inf" not in ln)
    with pytest.raises(TargetError, match=r"e2e_request_latency_seconds.*'\+Inf'"):
        parse(text)


def test_a_page_without_vllm_metrics_is_refused():
    with pytest.raises(TargetError, match="no vLLM metrics"):
        parse("# HELP up x\n# TYPE up gauge\nup 1\nprocess_start_time_seconds 5\n", url="http://x/metrics")


def test_escaped_label_values():
    text = ('vllm:num_requests_waiting_by_reason{engine="0",reason="a \\"quoted\\", odd\\\\one\\n",'
            'model_name="m"} 3\n')
    scrape = parse(text)
    (labels,) = scrape.values["requests_waiting_by_reason"]
    assert dict(labels)["reason"] == 'a "quoted", odd\\one\n'
    ref = reference_samples(text)
    assert our_samples(text) == ref


def test_kinds_cover_the_table():
    assert {m.kind for m in metric_names.METRICS} == set(Kind)
    assert len({m.key for m in metric_names.METRICS}) == len(metric_names.METRICS)
    every = [n for m in metric_names.METRICS for n in m.names]
    assert len(every) == len(set(every))


KV = 'vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.0'
GEN = 'vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} 5632.0'
E2E_COUNT = 'vllm:e2e_request_latency_seconds_count{engine="0",model_name="tiny-llama"} 48.0'


@pytest.mark.parametrize("old, new, fragment", [
    (KV, KV.replace("0.0", "+Inf"), "infinite value in gauge 'vllm:kv_cache_usage_perc'"),
    (KV, KV.replace("0.0", "-Inf"), "infinite value in gauge 'vllm:kv_cache_usage_perc'"),
    (GEN, GEN.replace("5632.0", "+Inf"), "infinite value in counter 'vllm:generation_tokens_total'"),
    (KV, KV.replace("0.0", "-0.5"), "negative value in gauge 'vllm:kv_cache_usage_perc'"),
    (KV, KV.replace("0.0", "5.0"), "'vllm:kv_cache_usage_perc' is a share from 0 to 1, not 5.0"),
    (GEN, GEN.replace("5632.0", "-1"), "negative value in counter 'vllm:generation_tokens_total'"),
    (E2E_COUNT, E2E_COUNT + "\n" + E2E_COUNT.replace("48.0", "5.0"),
     "duplicate series 'vllm:e2e_request_latency_seconds_count'"),
    (GEN, GEN + "\n" + GEN.replace("5632.0", "1.0"), "duplicate series 'vllm:generation_tokens_total'"),
    (E2E_COUNT, E2E_COUNT.replace("48.0", "47.0"), "'vllm:e2e_request_latency_seconds': _count 47 disagrees"),
])
def test_impossible_values_are_refused_with_the_family_named(old, new, fragment):
    text = page(AFTER)
    assert old in text
    with pytest.raises(TargetError) as err:
        parse(text.replace(old, new), url="http://x/metrics")
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_duplicate_bucket_is_refused():
    text = page(AFTER)
    line = next(ln for ln in text.splitlines() if ln.startswith("vllm:e2e_request_latency_seconds_bucket"))
    with pytest.raises(TargetError, match=r"e2e_request_latency_seconds.*duplicate series"):
        parse(text.replace(line, line + "\n" + line))


def test_a_huge_label_is_refused_before_it_is_parsed():
    from slotune.collectors.exposition import MAX_LINE_CHARS

    huge = 'vllm:num_requests_running{engine="0",model_name="' + "m" * (MAX_LINE_CHARS + 1) + '"} 1\n'
    with pytest.raises(TargetError, match="over the limit"):
        parse(page(AFTER) + huge)

"""The vLLM vocabulary of /metrics, in one place: the metric names slotune reads (with the names older
releases used) and the default bucket bounds of vLLM's latency histograms. Core floor: it imports
nothing of slotune, so the collectors, the Prometheus rules, the SLO buckets and the dashboards all
read it.

Names are vLLM 0.32's, as exposed (counters with their `_total` sample suffix, histograms by their
base name: the parser adds `_bucket`, `_sum`, `_count`). `aliases` are older names for the same
quantity; when a page carries both (transitional releases exported both), the current name wins so
nothing is counted twice.

Deployments rename the families: Ray's stat logger turns the `:` into `_` (`vllm_kv_cache_usage_perc`),
Ray Serve's exporter adds `ray_` with the colon kept (`ray_vllm:kv_cache_usage_perc`) or not
(`ray_vllm_...`), and other exporters add their own namespace (`myapp_vllm:...`).
`canonical_name()` maps every such spelling back: whatever stands before `vllm:`/`vllm_` (a prefix
ending in `_` or `:`) is a deployment's namespace, not part of the name. Every series may carry an `engine`
label (one per data-parallel engine) and a `model_name` label; the collector sums across them or
derives per engine.

Dashboards, rules, playbooks and the sidecar read names from here rather than spelling them again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    INFO = "info"  # a gauge fixed at 1 whose labels carry the data


@dataclass(frozen=True)
class Metric:
    key: str  # slotune's name for the quantity
    name: str  # vLLM 0.32's exposed name
    kind: Kind
    help: str
    aliases: tuple[str, ...] = ()
    label: str | None = None  # the label that splits it into parts worth keeping apart
    fraction: bool = False  # a share, 0..1: a larger sample is a broken exporter, not 500 % usage
    bucket_family: str | None = None  # latency histograms: the family of `DEFAULT_BUCKETS` it is observed in

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this metric goes by, the preferred first."""
        return (self.name, *self.aliases)


C, G, H, INFO = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM, Kind.INFO

METRICS: tuple[Metric, ...] = (
    # Latency histograms (seconds).
    Metric("ttft", "vllm:time_to_first_token_seconds", H, "time to first token",
           bucket_family="time_to_first_token"),
    Metric("tpot", "vllm:request_time_per_output_token_seconds", H,
           "per request: (e2e - ttft) / (output tokens - 1)", bucket_family="inter_token_latency"),
    # Before vLLM 0.11 `time_per_output_token_seconds` was observed per decode step: it measured ITL.
    Metric("itl", "vllm:inter_token_latency_seconds", H, "inter-token latency",
           aliases=("vllm:time_per_output_token_seconds",), bucket_family="inter_token_latency"),
    Metric("e2e", "vllm:e2e_request_latency_seconds", H, "end-to-end request latency",
           bucket_family="request_latency"),
    Metric("queue", "vllm:request_queue_time_seconds", H, "time waiting in the scheduler queue",
           bucket_family="request_latency"),
    Metric("prefill", "vllm:request_prefill_time_seconds", H, "time in prefill", bucket_family="request_latency"),
    Metric("decode", "vllm:request_decode_time_seconds", H, "time in decode", bucket_family="request_latency"),
    # Token-count histograms.
    Metric("prompt_tokens_hist", "vllm:request_prompt_tokens", H, "prompt length per request"),
    Metric("output_tokens_hist", "vllm:request_generation_tokens", H, "generated tokens per request"),
    Metric("iteration_tokens", "vllm:iteration_tokens_total", H, "tokens per engine step"),
    # Counters.
    Metric("prompt_tokens", "vllm:prompt_tokens_total", C, "prefill tokens processed"),
    Metric("generation_tokens", "vllm:generation_tokens_total", C, "tokens generated"),
    Metric("request_success", "vllm:request_success_total", C, "finished requests",
           label="finished_reason"),
    Metric("preemptions", "vllm:num_preemptions_total", C, "scheduler preemptions"),
    Metric("prefix_cache_queries", "vllm:prefix_cache_queries_total", C, "prefix-cache queries (tokens)",
           aliases=("vllm:gpu_prefix_cache_queries_total",)),
    Metric("prefix_cache_hits", "vllm:prefix_cache_hits_total", C, "prefix-cache hits (tokens)",
           aliases=("vllm:gpu_prefix_cache_hits_total",)),
    Metric("spec_decode_drafts", "vllm:spec_decode_num_drafts_total", C, "speculative drafts"),
    Metric("spec_decode_draft_tokens", "vllm:spec_decode_num_draft_tokens_total", C, "draft tokens proposed"),
    Metric("spec_decode_accepted_tokens", "vllm:spec_decode_num_accepted_tokens_total", C,
           "draft tokens accepted"),
    Metric("spec_decode_accepted_per_pos", "vllm:spec_decode_num_accepted_tokens_per_pos_total", C,
           "draft tokens accepted at each position", label="position"),
    # Gauges.
    Metric("requests_running", "vllm:num_requests_running", G, "requests in the running batch"),
    Metric("requests_waiting", "vllm:num_requests_waiting", G, "requests waiting"),
    Metric("requests_waiting_by_reason", "vllm:num_requests_waiting_by_reason", G,
           "waiting requests by reason", label="reason"),
    Metric("kv_cache_usage", "vllm:kv_cache_usage_perc", G, "KV-cache usage, 0..1",
           aliases=("vllm:gpu_cache_usage_perc",), fraction=True),
    Metric("cache_config", "vllm:cache_config_info", INFO, "KV-cache configuration in labels"),
    # Not vLLM's own, but on every page: tells a restart apart from a quiet window.
    Metric("process_start", "process_start_time_seconds", G, "server process start (unix seconds)"),
)

BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}

# vLLM 0.32's default bounds (vllm/v1/metrics/buckets.py, `_STATIC_FAMILY_DEFAULTS`) of the families the
# latency histograms above are observed in (seconds); `--custom-histogram-buckets` replaces a family's.
DEFAULT_BUCKETS: dict[str, tuple[float, ...]] = {
    "time_to_first_token": (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                            10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
    "inter_token_latency": (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                            20.0, 40.0, 80.0),
    "request_latency": (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                        240.0, 480.0, 960.0, 1920.0, 7680.0),
}


def name_of(key: str) -> str:
    """vLLM 0.32's exposed name of the metric slotune calls `key` (KeyError for an unknown key)."""
    return BY_KEY[key].name


def default_buckets(key: str) -> tuple[float, ...]:
    """vLLM's default bounds of latency histogram `key` (`ttft`, `tpot`, `itl`, `e2e`, `queue`, ...)."""
    family = BY_KEY[key].bucket_family
    if family is None:
        raise KeyError(f"{key} is not a latency histogram")
    return DEFAULT_BUCKETS[family]

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# A deployment's namespace (`ray_`, `ray_serve:`, `myapp_`), then `vllm` and `:` or `_`.
_PREFIXED = re.compile(r"(?:[a-zA-Z0-9]+[_:])*?vllm[:_]")


def canonical_name(name: str) -> str:
    """`vllm_x`, `ray_vllm_x`, `ray_vllm:x`, `NS_vllm:x` → `vllm:x`; anything else unchanged."""
    m = _PREFIXED.match(name)
    return "vllm:" + name[m.end():] if m else name


def _build_index() -> dict[str, tuple[Metric, int, str]]:
    index: dict[str, tuple[Metric, int, str]] = {}
    for metric in METRICS:
        for rank, name in enumerate(metric.names):
            if metric.kind is Kind.HISTOGRAM:
                for suffix in HISTOGRAM_SUFFIXES:
                    index[name + suffix] = (metric, rank, suffix)
            else:
                index[name] = (metric, rank, "")
    return index


# exposed sample name → (metric, rank of the name among its spellings (0 = current), sample suffix)
SAMPLE_INDEX = _build_index()


def lookup(sample_name: str) -> tuple[Metric, int, str] | None:
    """The metric a sample belongs to, or None when slotune does not read it."""
    hit = SAMPLE_INDEX.get(sample_name)
    if hit is None and "vllm" in sample_name:
        hit = SAMPLE_INDEX.get(canonical_name(sample_name))
    return hit

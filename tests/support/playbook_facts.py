"""Hand-written playbook facts the rule tests start from."""

from __future__ import annotations

# A busy, healthy window: what every case starts from (nothing fires on it).
HEALTHY: dict[str, float] = {
    "window_seconds": 10, "requests_finished": 40, "request_rate": 4, "nvml_available": 0, "latency_targets_unjudged": 0,
    "ttft_p50": 0.1, "ttft_p95": 0.2, "ttft_p99": 0.25, "ttft_at_slo": 0.2,
    "e2e_p50": 1.0, "e2e_p95": 1.4, "e2e_p99": 1.6, "e2e_at_slo": 1.4, "e2e_p99_over_p50": 1.6,
    "ttft_p99_over_p50": 2.5, "queue_mean": 0.01, "prefill_mean": 0.09, "ttft_queue_share": 0.1,
    "mean_concurrency": 100, "batch_requests": 100, "max_num_seqs": 128, "max_num_batched_tokens": 2048, "batch_occupancy": 0.78,
    "step_tokens_mean": 900, "step_tokens_share": 0.44, "requests_running": 100, "requests_waiting": 0,
    "preemptions": 0, "waiting_capacity": 0, "kv_cache_usage": 0.5, "chunked_prefill_enabled": 1,
    "prefix_caching_enabled": 1, "spec_enabled": 0, "prompt_len_p50": 200, "prompt_len_p95": 400,
    "prompt_len_p99": 450, "output_len_p50": 100, "output_len_p99": 150,
}

"""Remedies whose flag changes depend on the evidence: concrete values computed from the facts and
the running config (`max_num_seqs` halved, K lowered from the current speculative config, ...).

A rule file names one of these under `compute:`; a fixed change is written under `set:` instead.
Each function returns a config delta (VllmConfig field -> value, None meaning "vLLM's default" or
"off"), or None when it does not apply (nothing to lower, already at the limit).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from slotune import platforms
from slotune.playbooks.facts import Facts
from slotune.vllm_config import VllmConfig

Delta = dict[str, Any]
Compute = Callable[[Facts, "VllmConfig | None"], "Delta | None"]

_MAX_SEQS_CAP = 1024
_MAX_TOKENS_CAP = 16384


def _platform(f: Facts) -> platforms.Platform:
    """The target's backend as the facts judge it (`cpu_backend`: stated, measured or assumed, see
    `facts.backend_basis`); this machine's build stands for it where it is that backend."""
    plat = platforms.detect()
    if f.get("cpu_backend") is None:  # facts written without it (rule tests): NVML, else this build
        return platforms.GPU if f.get("nvml_available") or plat.backend == "none" else plat
    if f["cpu_backend"] == 1:
        return plat if plat.backend == "cpu" else platforms.CPU
    return plat if plat.backend == "gpu" else platforms.GPU


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def raise_max_num_seqs(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Twice the batch limit. A rule proposes it where the batch is what binds (full, or requests
    queue while the token budget has room); None at the cap."""
    cur = _int(f["max_num_seqs"])
    return None if cur is None or cur >= _MAX_SEQS_CAP else {"max_num_seqs": min(cur * 2, _MAX_SEQS_CAP)}


def raise_max_num_batched_tokens(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Twice the token budget per step. None when no step comes near the current budget
    (`step_budget_reached` 0): a larger budget than no step reaches changes no step (steps of ~8
    tokens against 512 are bound by the batch limit, not the budget)."""
    cur = _int(f["max_num_batched_tokens"])
    if cur is None or cur >= _MAX_TOKENS_CAP or f.get("step_budget_reached") == 0:
        return None
    return {"max_num_batched_tokens": min(cur * 2, _MAX_TOKENS_CAP)}


def lower_max_num_batched_tokens(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Smaller prefill chunks interleave with decodes (better ITL, TTFT of short prompts). None when
    the steps never come near the halved budget: a budget no step reaches splits nothing (a saturated
    CPU server's 16 short prompts make steps of ~65 tokens against 2048, and halving it changes no step).
    The steps' p99 is a bucket quantile: from 8 tokens up vLLM's step-token buckets double, so twice the figure is at
    least its bucket's upper bound, and that bound at most the new budget means no step is cut."""
    cur = _int(f["max_num_batched_tokens"])
    if cur is None or cur <= 512:
        return None
    new = max(cur // 2, 512)
    p99 = f.get("step_tokens_p99")
    if p99 is not None and 2 * p99 <= new:
        return None
    return {"max_num_batched_tokens": new}


def small_prefill_budget(f: Facts, config: VllmConfig | None) -> Delta | None:
    """The prefill budget `facts.prefill_budget_to_cut` says cuts the p95 prompt (128-256 tokens),
    with chunked prefill on. None when the budget is that small already, or that budget would not
    cut the prompts (the batch limit keeps it above them)."""
    cur, new, prompt = (_int(f["max_num_batched_tokens"]), _int(f["prefill_budget_to_cut"]),
                        f.get("prompt_len_p95"))
    if cur is None or new is None or new >= cur or (prompt is not None and new >= prompt):
        return None
    return {"max_num_batched_tokens": new, "enable_chunked_prefill": True}


def lower_max_num_seqs(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Fewer sequences per batch: as many as the KV cache holds at the observed request length,
    else half the current limit."""
    cur = _int(f["max_num_seqs"])
    if cur is None or cur <= 1:
        return None
    per_request = (f["prompt_len_p95"] or 0.0) + (f["output_len_p95"] or 0.0)
    fits = int(f["kv_cache_tokens"] // per_request) if f["kv_cache_tokens"] and per_request > 0 else None
    new = max(1, fits) if fits is not None and fits < cur else max(1, cur // 2)
    return {"max_num_seqs": new}


def cap_max_num_seqs(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Cap the batch at half the requests in flight now: each step gets shorter (TPOT), the rest
    queue (TTFT). None when that is no lower than the current limit."""
    cur = _int(f["max_num_seqs"])
    inflight = f["mean_concurrency"] or f["requests_running"]
    if cur is None or not inflight:
        return None
    new = max(1, int(inflight // 2))
    return {"max_num_seqs": new} if new < cur else None


def _round_up(v: float, step: int) -> int:
    return int(math.ceil(v / step) * step)


def lower_max_model_len(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Cap prompt + output at what the requests need (p99, rounded up to 256 tokens), else halve the
    current limit (e.g. after a start-up failure, which has no requests to measure)."""
    cur = _int(f["max_model_len"])
    need = (f["prompt_len_p99"] or 0.0) + (f["output_len_p99"] or 0.0)
    if need > 0:
        new = max(_round_up(need, 256), 256)
        return {"max_model_len": new} if cur is None or new < cur else None
    return {"max_model_len": max(cur // 2, 256)} if cur and cur > 256 else None


def long_prefill_threshold(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Treat prompts well above the median as long: vLLM then admits only a few of them per step."""
    p50 = f["prompt_len_p50"]
    if not p50:
        return None
    new = max(_round_up(2 * p50, 64), 64)
    cur = config.long_prefill_token_threshold if config else None
    return None if cur and cur <= new else {"long_prefill_token_threshold": new, "enable_chunked_prefill": True}


def lower_spec_k(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Draft fewer tokens: K 5 -> 3, 3 -> 2, 2 -> 1 (the later positions are accepted least)."""
    spec = config.speculative_config if config else None
    if spec is None or spec.num_speculative_tokens <= 1:
        return None
    k = spec.num_speculative_tokens
    new_k = max(1, k - 2) if k > 3 else k - 1
    return {"speculative_config": {**spec.model_dump(exclude_none=True), "num_speculative_tokens": new_k}}


def more_kv_memory(f: Facts, config: VllmConfig | None) -> Delta | None:
    """Give the KV cache more room: drop a block override, else the backend's memory knob."""
    if config is not None and config.num_gpu_blocks_override is not None:
        return {"num_gpu_blocks_override": None}
    plat = _platform(f)
    if plat.kv_cache_env is not None:  # the CPU backend: whole GiB in an environment variable
        env = dict(config.env) if config else {}
        cur = platforms.kv_cache_gib(plat, env, None) or platforms.default_kv_cache_gib(plat) or 1.0
        return platforms.kv_cache_changes(plat, int(cur * 2), env)
    cur_util = (config.gpu_memory_utilization if config and config.gpu_memory_utilization
                else platforms.GPU_MEMORY_UTILIZATION)
    return {"gpu_memory_utilization": 0.95} if cur_util < 0.95 else None


def fp8_kv_cache(f: Facts, config: VllmConfig | None) -> Delta | None:
    """FP8 KV cache halves its memory per token, where the backend has the kernels."""
    if "fp8" not in _platform(f).kv_cache_dtypes or (config and config.kv_cache_dtype == "fp8"):
        return None
    return {"kv_cache_dtype": "fp8"}


def fp8_weights(f: Facts, config: VllmConfig | None) -> Delta | None:
    """FP8 (8-bit) weights take about half the memory of 16-bit ones (INT4 about a quarter), leaving
    room for KV cache and larger batches; only where the backend supports it."""
    if "fp8" not in _platform(f).quantizations or (config and config.quantization):
        return None
    return {"quantization": "fp8"}


COMPUTE: dict[str, Compute] = {
    fn.__name__: fn
    for fn in (raise_max_num_seqs, raise_max_num_batched_tokens, lower_max_num_batched_tokens, small_prefill_budget,
               lower_max_num_seqs,
               cap_max_num_seqs, lower_max_model_len, long_prefill_threshold, lower_spec_k, more_kv_memory, fp8_kv_cache, fp8_weights)
}

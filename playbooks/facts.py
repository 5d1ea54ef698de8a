"""Facts: the flat table of named numbers the playbooks' conditions read.

One window (a collectors `Snapshot`), the server's config, the load generator's result and a
start-up failure become a `dict[str, float | None]`. Every derived figure is computed here, once,
so rule files stay declarative (`{field: ttft_queue_share, op: ">", threshold: 0.5}`). `None` means
"not measured in this window": a condition on it neither fires nor clears.

Booleans are 1.0/0.0. Latencies are seconds, shares and rates are fractions (0..1).
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from slotune import platforms
from slotune.collectors.snapshot import Quantiles, Snapshot
from slotune.loadgen.figures import LoadFigures
from slotune.server import StartResult, StartStatus
from slotune.slo import (
    DEFAULT_SLO,
    FALLBACK_TARGETS,
    INCONCLUSIVE,
    LATENCY_METRICS,
    SloSpec,
    SloTarget,
    straddles,
)
from slotune.slo_buckets import bound_advice
from slotune.vllm_config import VllmConfig

Facts = dict[str, float | None]

# Thresholds used when the user's SLO leaves a latency out: slotune.slo's DEFAULT_SLO, then its
# FALLBACK_TARGETS for the latencies DEFAULT_SLO does not name.
_FALLBACK = SloSpec.parse(f"{DEFAULT_SLO},{FALLBACK_TARGETS}")
DEFAULT_SLO_STAT = "p95"
DEFAULT_SLO_THRESHOLDS = {t.metric: t.threshold for t in _FALLBACK.targets}
assert {t.stat for t in _FALLBACK.targets} == {DEFAULT_SLO_STAT} and set(DEFAULT_SLO_THRESHOLDS) == set(LATENCY_METRICS)

_STATS = ("p50", "p95", "p99", "mean")
_LATENCY = {"ttft": "time to first token", "tpot": "time per output token", "itl": "inter-token latency",
            "e2e": "end-to-end request latency", "queue": "time waiting in the queue",
            "prefill": "prefill time", "decode": "decode time"}

# Every fact a rule may name, with the sentence the evidence cites. The one list of them.
FACTS: dict[str, str] = {
    **{f"{m}_{s}": f"{s} {desc} (s)" for m, desc in _LATENCY.items() for s in _STATS},
    **{f"{m}_at_slo": f"{desc} at the SLO's statistic (s)" for m, desc in _LATENCY.items() if m in LATENCY_METRICS},
    **{f"prompt_len_{s}": f"{s} prompt length (tokens)" for s in _STATS},
    **{f"output_len_{s}": f"{s} output length (tokens)" for s in _STATS},
    **{f"step_tokens_{s}": f"{s} tokens per engine step" for s in _STATS},
    "window_seconds": "length of the window (s)",
    "requests_finished": "requests finished in the window",
    "request_rate": "finished requests per second",
    "generation_tokens_per_second": "generated tokens per second",
    "error_rate": "share of requests that ended in an error",
    "requests_running": "requests running at the end of the window",
    "requests_waiting": "requests waiting at the end of the window",
    "waiting_capacity": "requests waiting for KV-cache capacity at the end of the window",
    "kv_cache_usage": "KV-cache usage at the end of the window (0..1)",
    "preemptions": "requests preempted in the window",
    "preemptions_per_second": "preemptions per second",
    "prefix_cache_hit_rate": "prefix-cache hit rate (0..1)",
    "kv_cache_tokens": "tokens the KV cache holds",
    "kv_max_concurrency": "requests of max_model_len the KV cache holds at once",
    "spec_enabled": "speculative decoding configured (1) or not (0)",
    "spec_k": "tokens drafted per step (num_speculative_tokens)",
    "spec_drafts": "draft steps in the window (V0 pages: drafted tokens / K)",
    "spec_draft_tokens": "tokens drafted in the window",
    "spec_acceptance_rate": "share of drafted tokens accepted (0..1)",
    "spec_mean_acceptance_length": "mean tokens emitted per verification step (1 = nothing accepted)",
    "spec_first_position_acceptance": "acceptance rate of the first drafted position",
    "gpu_utilization": "NVML GPU utilization (0..1)",
    "nvml_available": "NVML readings available (1) or not (0)",
    "max_num_seqs": "max_num_seqs in effect (configured or vLLM's default)",
    "max_num_batched_tokens": "max_num_batched_tokens in effect (configured or vLLM's default)",
    "max_model_len": "max_model_len configured (None: the model's own)",
    "chunked_prefill_enabled": "chunked prefill on (1) or off (0)",
    "prefix_caching_enabled": "prefix caching on (1) or off (0)",
    "mean_concurrency": "requests in flight on average (Little's law: e2e mean x finished / window, "
                        "bounded by the window's length and the running/waiting gauges)",
    "batch_requests": "requests in the engine's batch on average (Little's law on prefill + decode time, "
                      "at most requests in flight and at most the mean tokens per engine step)",
    "batch_share_of_inflight": "requests in the engine's batch / requests in flight",
    "batch_occupancy": "requests in flight / max_num_seqs",
    "step_tokens_share": "mean tokens per engine step / max_num_batched_tokens",
    "step_budget_reached": "engine steps come near max_num_batched_tokens (1: twice the p99 step is over it) "
                           "or none does (0): a budget no step reaches limits nothing",
    "ttft_queue_share": "share of TTFT spent queued (queue / (queue + prefill); exact means from _sum/_count)",
    "ttft_prefill_share": "share of TTFT spent in prefill (prefill / (queue + prefill); exact means from _sum/_count)",
    "engine_cpu_utilization": "CPU time of every process of the server slotune started / window / cores allowed "
                              "(0..1; None where slotune did not start the server)",
    "e2e_p99_over_p50": "e2e p99 / p50",
    "ttft_p99_over_p50": "TTFT p99 / p50",
    "itl_p99_over_p50": "inter-token latency p99 / p50 (far above 1: some steps stall the decodes)",
    "prefill_over_itl_p50": "mean prefill time / ITL p50: how many decode steps one prefill lasts (a long prefill "
                            "on this hardware, whatever its tokens)",
    "itl_p99_over_prefill": "ITL p99 / mean prefill time (about 1: the slow steps last as long as a prefill)",
    "prefill_budget_to_cut": "the prefill budget (tokens) that cuts the p95 prompt at least in two: the power of two "
                             "at or below half of it, 128-256, and at least the batch limit (vLLM refuses less)",
    "prompt_over_budget_to_cut": "p95 prompt / prefill_budget_to_cut (above 1: that budget cuts the prompts)",
    "budget_over_budget_to_cut": "max_num_batched_tokens / prefill_budget_to_cut (above 1: the budget is larger)",
    "prompt_len_p99_over_p50": "prompt length p99 / p50",
    "output_len_p99_over_p50": "output length p99 / p50",
    "tpot_p50_without_drafting": "p50 TPOT in earlier windows of this target without drafting (s)",
    "spec_tpot_speedup": "TPOT without drafting / TPOT with drafting (above 1: drafting helps)",
    "spec_speedup_measured": "a TPOT speedup was measured against windows without drafting (1) or not (0)",
    "engine_steps": "engine steps in the window (each decodes one token for every running request)",
    "generation_tokens": "tokens generated in the window",
    **{f"{m}_slo_ratio": f"{desc} at the SLO's statistic / the SLO's own {m} target (None: the SLO sets no "
                         f"{m} target, or the window cannot decide it)" for m, desc in _LATENCY.items()
       if m in LATENCY_METRICS},
    "latency_slo_ratio": "worst latency figure at the SLO's statistic / its target (above 1: a target is missed)",
    "latency_targets_unjudged": "latency targets of the SLO with no decisive figure in the window (no sample, or "
                                "inside the bucket that straddles the threshold)",
    "tpot_batch_growth": "p50 TPOT / p50 TPOT of an earlier window with at most half the requests in flight",
    "cpu_backend": "the server runs on vLLM's CPU backend (1) or an accelerator (0)",
    "client_concurrency": "concurrency the load generator offered",
    "client_inflight_share": "requests in flight / concurrency the client offered",
    "client_error_rate": "share of the client's requests that failed",
    "startup_failed": "the server failed to start (1)",
    "startup_kv_too_small": "start-up failed because the KV cache is too small / out of memory (1)",
}

# Facts that are fractions of a whole; summaries show them as percentages.
PERCENT_FACTS = frozenset({
    "error_rate", "kv_cache_usage", "prefix_cache_hit_rate", "spec_acceptance_rate", "spec_first_position_acceptance",
    "gpu_utilization", "batch_occupancy", "step_tokens_share", "ttft_queue_share", "ttft_prefill_share",
    "client_inflight_share", "client_error_rate", "engine_cpu_utilization", "batch_share_of_inflight",
})

# A quantile interpolated inside a histogram bucket is an estimate: the true value lies in (lower,
# upper]. Where the bucket is wider than this share of its upper bound, summaries print the bounds
# (`1000-2000`), not the interpolated figure. vLLM's buckets step 1-2-5 (or 1-2.5-5-7.5), so in
# practice every bucket quantile is printed with its bounds; a user's own fine buckets are not.
WIDE_BUCKET = 0.1

FactBounds = dict[str, tuple[float, float]]


def _b(v: bool | None) -> float | None:
    return None if v is None else float(bool(v))


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def effective_limits(config: VllmConfig | None, backend: str, gpu_memory_bytes: int | None = None) -> tuple[int, int]:
    """The scheduler limits a server runs with: configured values, else vLLM's defaults. Without
    chunked prefill vLLM raises the token budget to max_model_len so one prompt fits a step."""
    seqs, tokens = platforms.batch_defaults(backend, config.tensor_parallel_size if config else None,
                                            gpu_memory_bytes)
    if config is not None:
        seqs = config.max_num_seqs or seqs
        if config.max_num_batched_tokens:
            tokens = config.max_num_batched_tokens
        elif config.enable_chunked_prefill is False and config.max_model_len:
            tokens = max(tokens, config.max_model_len)
    return seqs, tokens


def _quantiles(out: Facts, prefix: str, q: Quantiles | None) -> None:
    for s in _STATS:
        out[f"{prefix}_{s}"] = getattr(q, s) if q is not None else None


def _client_figure(client: LoadFigures | None, metric: str, stat: str) -> float | None:
    block = client.latency(metric) if client is not None else None
    v = getattr(block, stat, None) if block is not None else None
    return float(v) if isinstance(v, (int, float)) else None


BACKENDS = ("cpu", "gpu")  # what a user may state a target runs on


def backend_of(snapshot: Snapshot | None, stated: str | None = None) -> str:
    """The backend the target is judged on: `backend_basis`'s first element."""
    return backend_basis(snapshot, stated)[0]


def backend_basis(snapshot: Snapshot | None, stated: str | None = None) -> tuple[str, str | None]:
    """(backend, how it was assumed). Stated by the user (`stated`, e.g. `--backend gpu`): that, no
    note. GPU when the window carries NVML readings: measured, no note. Otherwise assumed, and the
    second element says from what: this machine's vLLM build, but only for a server on this machine
    (a start-up failure, a loopback target, a page with no URL: a loopback target may also be a
    port-forward to another host, which only the user can say); a remote server is taken to be vLLM's
    usual accelerator deployment. The build installed beside slotune says nothing about a remote one."""
    if stated is not None:
        if stated not in BACKENDS:
            raise ValueError(f"backend {stated!r}: expected one of {', '.join(BACKENDS)}")
        return stated, None
    if snapshot is not None and snapshot.gpu is not None and snapshot.gpu.available and snapshot.gpu.devices:
        return "gpu", None
    if snapshot is not None and not _on_this_host(snapshot.target):
        return "gpu", (f"backend assumed gpu: {snapshot.target} is another host, taken to be vLLM's usual "
                       "accelerator deployment (no NVML reading in the window); state it with --backend")
    plat = platforms.detect()
    if plat.backend == "none":
        return "gpu", "backend assumed gpu: no vLLM build on this host to go by; state it with --backend"
    where = snapshot.target if snapshot is not None and snapshot.target else "the server"
    return plat.backend, (f"backend assumed {plat.backend}: {where} is on this host, so it is taken to run this "
                          f"host's vLLM build ({plat.distribution} {plat.version or ''}".rstrip() + "); if it is a "
                          "port-forward to another server, state that server's backend with --backend")


def _on_this_host(target: str) -> bool:
    host = urlsplit(target).hostname if "//" in target else None
    return not target or host is None or host in {"localhost", "::1"} or host.startswith("127.")


def build_facts(snapshot: Snapshot | None, *, slo: SloSpec | None = None, config: VllmConfig | None = None,
                client: LoadFigures | None = None, startup_failure: StartResult | None = None,
                backend: str | None = None) -> Facts:
    """The facts of one window (or of a start-up failure, with `snapshot=None`). `backend`: the
    target's vLLM backend as the user states it ("cpu" | "gpu"; None: `backend_basis` assumes it)."""
    f: Facts = dict.fromkeys(FACTS)
    s = snapshot
    if s is not None:
        for m in _LATENCY:
            _quantiles(f, m, getattr(s, m))
        _quantiles(f, "prompt_len", s.prompt_tokens)
        _quantiles(f, "output_len", s.output_tokens)
        _quantiles(f, "step_tokens", s.iteration_tokens)
        f.update(
            window_seconds=s.window_seconds, requests_finished=s.requests_finished, request_rate=s.request_rate,
            generation_tokens_per_second=s.generation_tokens_per_second, error_rate=s.error_rate,
            requests_running=s.requests_running, requests_waiting=s.requests_waiting,
            waiting_capacity=s.waiting_by_reason.get("capacity") if s.waiting_by_reason else None,
            kv_cache_usage=s.kv_cache_usage, preemptions=s.preemptions,
            preemptions_per_second=s.preemptions_per_second, prefix_cache_hit_rate=s.prefix_cache_hit_rate,
            spec_drafts=s.spec_decode_drafts,
            spec_draft_tokens=s.spec_decode_draft_tokens,
            spec_acceptance_rate=s.spec_decode_acceptance_rate,
            spec_mean_acceptance_length=s.spec_decode_mean_acceptance_length,
            engine_steps=s.iteration_tokens.count if s.iteration_tokens is not None else None,
            generation_tokens=s.generation_tokens_total,
            spec_first_position_acceptance=s.spec_decode_per_position[0] if s.spec_decode_per_position else None,
        )
        if s.capacity is not None:
            f["kv_cache_tokens"] = s.capacity.kv_cache_tokens
            f["kv_max_concurrency"] = s.capacity.max_concurrency
        f["engine_cpu_utilization"] = s.engine_cpu_utilization
        gpu = s.gpu
        f["nvml_available"] = 1.0 if gpu is not None and gpu.available and gpu.devices else 0.0
        f["gpu_utilization"] = gpu.utilization if gpu is not None and gpu.available else None
    # The client's own latencies stand in where the server's window has none (e.g. a server
    # without request histograms); the server's are preferred (they split queue from prefill).
    for m in LATENCY_METRICS:
        for st in _STATS:
            if f.get(f"{m}_{st}") is None:
                f[f"{m}_{st}"] = _client_figure(client, m, st)

    _config_facts(f, s, config, backend)
    _derived(f, s, slo)
    _client_facts(f, client)
    if startup_failure is not None:
        f["startup_failed"] = _b(not startup_failure.ok)
        f["startup_kv_too_small"] = _b(startup_failure.status is StartStatus.KV_CACHE_TOO_SMALL)
    return f


def _config_facts(f: Facts, s: Snapshot | None, config: VllmConfig | None, stated: str | None = None) -> None:
    gpu_mem = None
    if s is not None and s.gpu is not None and s.gpu.devices:
        gpu_mem = s.gpu.devices[0].memory_total_bytes
    backend = backend_of(s, stated)
    f["cpu_backend"] = _b(backend == "cpu")
    seqs, tokens = effective_limits(config, backend, gpu_mem)
    f["max_num_seqs"], f["max_num_batched_tokens"] = float(seqs), float(tokens)
    f["max_model_len"] = float(config.max_model_len) if config and config.max_model_len else None
    # vLLM 0.32 turns chunked prefill and prefix caching on by default for generative models.
    chunked = config.enable_chunked_prefill if config else None
    f["chunked_prefill_enabled"] = 1.0 if chunked is None else _b(chunked)
    caching = s.capacity.prefix_caching_enabled if s is not None and s.capacity is not None else None
    if caching is None:
        caching = config.enable_prefix_caching if config and config.enable_prefix_caching is not None else True
    f["prefix_caching_enabled"] = _b(caching)
    spec = config.speculative_config if config else None
    # vLLM exports its spec-decode counters (zero until something is drafted) only when drafting is
    # configured: their presence says so even without the server's flags.
    on_page = s is not None and (s.spec_decode_drafts is not None or s.spec_decode_draft_tokens is not None)
    f["spec_enabled"] = _b(spec is not None or on_page)
    f["spec_k"] = float(spec.num_speculative_tokens) if spec is not None else (
        float(len(s.spec_decode_per_position)) if s is not None and s.spec_decode_per_position else None)
    _spec_from_draft_tokens(f, s)


def _spec_from_draft_tokens(f: Facts, s: Snapshot | None) -> None:
    """V0 pages count drafted, accepted and emitted tokens but not drafts: every verification step
    drafts K tokens, so drafts = drafted tokens / K, and the mean acceptance length follows."""
    if s is None or f["spec_drafts"] is not None or not f["spec_k"] or s.spec_decode_draft_tokens is None:
        return
    drafts = s.spec_decode_draft_tokens / f["spec_k"]
    f["spec_drafts"] = drafts
    if drafts > 0 and s.spec_decode_accepted_tokens is not None:
        f["spec_mean_acceptance_length"] = 1 + s.spec_decode_accepted_tokens / drafts


def _derived(f: Facts, s: Snapshot | None, slo: SloSpec | None) -> None:
    # Little's law: requests in flight on average = arrival (finish) rate x time in system. The
    # running/waiting gauges are read at the window's end, after a load has often drained.
    if s is not None and not s.cumulative and s.window_seconds > 0 and f["e2e_mean"] is not None:
        f["mean_concurrency"] = f["e2e_mean"] * (s.requests_finished or 0.0) / s.window_seconds
        if s.in_flight_cap is not None:  # requests that outlast the window would overstate it
            f["mean_concurrency"] = min(f["mean_concurrency"], s.in_flight_cap)
    f["batch_requests"] = _batch_requests(f, s)
    f["batch_share_of_inflight"] = _div(f["batch_requests"], f["mean_concurrency"])
    # Occupancy counts every request in flight (queued, in the API server, in the batch): the rule
    # asks whether the server has room for more load; `batch_requests` says how much reaches a step.
    inflight = max((v for v in (f["mean_concurrency"], f["requests_running"]) if v is not None), default=None)
    f["batch_occupancy"] = _div(inflight, f["max_num_seqs"])
    f["step_tokens_share"] = _div(f["step_tokens_mean"], f["max_num_batched_tokens"])
    # The p99 step is a bucket quantile; vLLM's step-token buckets double from 8 tokens up, so twice
    # the figure is at least its bucket's upper bound: at most the budget, and no step but the top
    # 1 % comes near it.
    p99, budget = f["step_tokens_p99"], f["max_num_batched_tokens"]
    f["step_budget_reached"] = None if p99 is None or not budget else _b(2 * p99 > budget)
    q, p = f["queue_mean"], f["prefill_mean"]
    if q is not None and p is not None and q + p > 0:
        f["ttft_queue_share"], f["ttft_prefill_share"] = q / (q + p), p / (q + p)
    f["e2e_p99_over_p50"] = _div(f["e2e_p99"], f["e2e_p50"])
    f["ttft_p99_over_p50"] = _div(f["ttft_p99"], f["ttft_p50"])
    f["itl_p99_over_p50"] = _div(f["itl_p99"], f["itl_p50"])
    # A prefill's length in time, not tokens, says whether it stalls the decodes: 200 tokens take
    # 5 decode steps on one CPU core and a fraction of one on a GPU.
    f["prefill_over_itl_p50"] = _div(f["prefill_mean"], f["itl_p50"])
    f["itl_p99_over_prefill"] = _div(f["itl_p99"], f["prefill_mean"])
    f["prefill_budget_to_cut"] = _budget_to_cut(f["prompt_len_p95"], f["max_num_seqs"])
    f["prompt_over_budget_to_cut"] = _div(f["prompt_len_p95"], f["prefill_budget_to_cut"])
    f["budget_over_budget_to_cut"] = _div(f["max_num_batched_tokens"], f["prefill_budget_to_cut"])
    f["prompt_len_p99_over_p50"] = _div(f["prompt_len_p99"], f["prompt_len_p50"])
    f["output_len_p99_over_p50"] = _div(f["output_len_p99"], f["output_len_p50"])
    for metric in LATENCY_METRICS:
        target = slo.get(metric) if slo is not None else None
        stat = target.stat if target is not None and target.stat else DEFAULT_SLO_STAT
        f[f"{metric}_at_slo"] = f.get(f"{metric}_{stat}") if stat in _STATS else f.get(f"{metric}_p95")
        if target is not None and stat not in _STATS:  # p90: not in the flat table; read it directly
            q90 = getattr(s, metric, None) if s is not None else None
            f[f"{metric}_at_slo"] = getattr(q90, stat, None) if q90 is not None else None
        if _inconclusive(s, metric, stat, target.threshold if target else DEFAULT_SLO_THRESHOLDS[metric]):
            f[f"{metric}_at_slo"] = None  # a guess inside the straddling bucket decides nothing
    # The worst latency against its target: the user's latency targets, else the default SLO's (a
    # figure the buckets cannot decide is left out, as above).
    thresholds = slo_thresholds(slo)
    judged = [t.metric for t in (slo or SloSpec.parse(DEFAULT_SLO)).targets if t.metric in LATENCY_METRICS]
    for m in judged:  # per target: a remedy worth it only while one target burns names it
        v = f.get(f"{m}_at_slo")
        f[f"{m}_slo_ratio"] = v / thresholds[m] if v is not None and thresholds.get(m) else None
    ratios = [v for m in judged if (v := f.get(f"{m}_slo_ratio")) is not None]
    f["latency_slo_ratio"] = max(ratios, default=None)
    # A window with no figure for a target (a sidecar tick that saw requests finish but no first token,
    # or a figure inside the bucket that straddles the threshold) cannot say the steps are fast enough.
    f["latency_targets_unjudged"] = sum(1 for m in judged if f.get(f"{m}_at_slo") is None)


SMALL_PREFILL_BUDGETS = (128, 256)  # tokens: the search space's small budgets (tuner/space.py)


def _budget_to_cut(prompt: float | None, seqs: float | None) -> float | None:
    """Half the p95 prompt, down to a power of two, within `SMALL_PREFILL_BUDGETS` (a 1,024-token
    prompt: 256; a 200-token one: 128) and at least `max_num_seqs` rounded up to a power of two (vLLM
    refuses a budget below it). None without a prompt length."""
    if prompt is None or prompt < 2:
        return None
    lo, hi = SMALL_PREFILL_BUDGETS
    cut = min(max(2 ** math.floor(math.log2(prompt / 2)), lo), hi)
    return float(max(cut, 2 ** math.ceil(math.log2(max(seqs or 1, 1)))))


def _batch_requests(f: Facts, s: Snapshot | None) -> float | None:
    """Requests in the engine's batch on average, from the same window as requests in flight and
    tokens per step. Little's law on the time a request is scheduled (prefill + decode means) counts
    the batch without the queue and the API server; and since every request the engine schedules
    adds at least one token to a step, the batch is at most the mean tokens per step (a window's
    Little's law overstates when requests outlast it: the step count is exact)."""
    if s is None or s.cumulative or s.window_seconds <= 0:
        return None
    estimates = [v for v in (f["mean_concurrency"],) if v is not None]
    p, d = f["prefill_mean"], f["decode_mean"]
    if p is not None and d is not None:
        estimates.append((p + d) * (s.requests_finished or 0.0) / s.window_seconds)
    if not estimates:
        return None  # the step count alone bounds the batch, it does not measure it
    batch = min(estimates)
    return batch if f["step_tokens_mean"] is None else min(batch, f["step_tokens_mean"])


def fact_bounds(s: Snapshot | None, f: Facts, slo: SloSpec | None = None) -> FactBounds:
    """The bounds `(lower, upper]` of every fact of window `s` that is a quantile interpolated in a
    histogram bucket (`prompt_len_p95`, `ttft_at_slo`, ...) or a ratio of such quantiles (the true
    ratio lies between the bounds' ratios; `upper` may be +Inf). Exact facts (counts, means from
    _sum/_count, gauges, shares of means) have none. `f`: the window's facts from `build_facts`."""
    out: FactBounds = {}
    if s is None:
        return out
    for prefix, q in [*((m, getattr(s, m)) for m in _LATENCY), ("prompt_len", s.prompt_tokens),
                      ("output_len", s.output_tokens), ("step_tokens", s.iteration_tokens)]:
        for st in ("p50", "p95", "p99"):
            b = q.bucket(st) if isinstance(q, Quantiles) else None
            if b is not None and f.get(f"{prefix}_{st}") == getattr(q, st):
                out[f"{prefix}_{st}"] = b
    for metric in LATENCY_METRICS:
        target = slo.get(metric) if slo is not None else None
        stat = target.stat if target is not None and target.stat else DEFAULT_SLO_STAT
        q = getattr(s, metric, None)
        b = q.bucket(stat) if isinstance(q, Quantiles) else None
        if b is not None and f.get(f"{metric}_at_slo") is not None and f[f"{metric}_at_slo"] == getattr(q, stat, None):
            out[f"{metric}_at_slo"] = b
    for name, top, bottom in (("e2e_p99_over_p50", "e2e_p99", "e2e_p50"), ("ttft_p99_over_p50", "ttft_p99", "ttft_p50"),
                              ("prompt_len_p99_over_p50", "prompt_len_p99", "prompt_len_p50"),
                              ("output_len_p99_over_p50", "output_len_p99", "output_len_p50"),
                              ("prefill_over_itl_p50", "prefill_mean", "itl_p50"),
                              ("itl_p99_over_prefill", "itl_p99", "prefill_mean")):
        if f.get(name) is not None and (top in out or bottom in out):
            hi_t = out.get(top, (f[top], f[top]))  # type: ignore[arg-type]
            lo_b = out.get(bottom, (f[bottom], f[bottom]))  # type: ignore[arg-type]
            lower = hi_t[0] / lo_b[1] if not math.isinf(lo_b[1]) else 0.0
            upper = hi_t[1] / lo_b[0] if lo_b[0] > 0 else math.inf
            out[name] = (lower, upper)
    # The worst latency against its target: the max of intervals is the interval of the maxes.
    thresholds = slo_thresholds(slo)
    judged = [t.metric for t in (slo or SloSpec.parse(DEFAULT_SLO)).targets if t.metric in LATENCY_METRICS]
    spans = []
    for m in judged:
        v, t = f.get(f"{m}_at_slo"), thresholds.get(m)
        if v is not None and t:
            lo, hi = out.get(f"{m}_at_slo", (v, v))
            spans.append((lo / t, hi / t))
    if f.get("latency_slo_ratio") is not None and spans and any(lo != hi for lo, hi in spans):
        out["latency_slo_ratio"] = (max(lo for lo, _ in spans), max(hi for _, hi in spans))
    return out


def wide(bounds: tuple[float, float] | None) -> bool:
    """Whether a bucket says too little to print its interpolated figure (see `WIDE_BUCKET`)."""
    if bounds is None:
        return False
    lower, upper = bounds
    return lower <= 0 or math.isinf(upper) or (upper - lower) > WIDE_BUCKET * upper


def _inconclusive(s: Snapshot | None, metric: str, stat: str, threshold: float) -> tuple[float, float] | None:
    """The server-side bucket of `metric`'s `stat` when it straddles `threshold`, else None."""
    q = getattr(s, metric, None) if s is not None else None
    bucket = q.bucket(stat) if isinstance(q, Quantiles) else None
    return bucket if straddles(bucket, threshold) else None


def resolution_notes(s: Snapshot | None, slo: SloSpec | None) -> list[str]:
    """One note per SLO target the window's buckets cannot decide (met or missed inside one bucket)."""
    notes = []
    for metric in LATENCY_METRICS:
        target = slo.get(metric) if slo is not None else None
        stat = target.stat if target is not None and target.stat else DEFAULT_SLO_STAT
        threshold = target.threshold if target else DEFAULT_SLO_THRESHOLDS[metric]
        bucket = _inconclusive(s, metric, stat, threshold)
        if bucket is not None:
            hi = "+Inf" if math.isinf(bucket[1]) else f"{bucket[1]:g} s"
            advice = bound_advice(SloSpec((SloTarget(metric, stat, threshold),)))
            notes.append(f"{metric}_{stat} <= {threshold:g} s: {INCONCLUSIVE} (vLLM's bucket {bucket[0]:g} s-{hi} "
                         f"straddles the target; to make it a bucket bound: {advice})")
    return notes


def _client_facts(f: Facts, client: LoadFigures | None) -> None:
    if client is None:
        return
    conc = client.concurrency
    if isinstance(conc, (int, float)) and conc > 0:
        f["client_concurrency"] = float(conc)
        f["client_inflight_share"] = _div(f["mean_concurrency"], float(conc))
    err = client.error_rate
    f["client_error_rate"] = float(err) if isinstance(err, (int, float)) else None


def add_history(per_window: list[Facts]) -> None:
    """Facts that compare a window with the earlier ones (in place). Speculative decoding: the TPOT
    of earlier windows without drafting (e.g. before it was turned on) against this window's. TPOT
    against the batch: this window's p50 TPOT over the lowest of earlier windows that had at most
    half as many requests in flight (a step that slows as the batch grows is compute-bound)."""
    plain: list[float] = []
    lighter: list[tuple[float, float]] = []  # (requests in flight, p50 TPOT) of earlier windows
    for f in per_window:
        inflight, tpot = f.get("mean_concurrency"), f.get("tpot_p50")
        if inflight and tpot:
            base = [t for c, t in lighter if c <= inflight / 2]
            if base and f.get("tpot_batch_growth") is None:
                f["tpot_batch_growth"] = tpot / min(base)
            lighter.append((float(inflight), float(tpot)))
        drafting = bool(f.get("spec_drafts"))
        if drafting and plain:
            base = sorted(plain)[len(plain) // 2]
            f["tpot_p50_without_drafting"] = base
            f["spec_tpot_speedup"] = _div(base, f.get("tpot_p50"))
        f["spec_speedup_measured"] = _b(f.get("spec_tpot_speedup") is not None)
        if not drafting and f.get("requests_finished") and f.get("tpot_p50") is not None:
            plain.append(float(f["tpot_p50"]))  # type: ignore[arg-type]


def slo_thresholds(slo: SloSpec | None) -> dict[str, float]:
    """`slo.<name>` thresholds a rule may cite: per metric (`slo.ttft`, the SLO's own statistic) and
    per exact key (`slo.ttft_p95`). Metrics the SLO leaves out keep the defaults above."""
    out: dict[str, float] = dict(DEFAULT_SLO_THRESHOLDS)
    out.update({f"{m}_{DEFAULT_SLO_STAT}": v for m, v in DEFAULT_SLO_THRESHOLDS.items()})
    if slo is not None:
        for t in slo.targets:
            out[t.key] = t.threshold
            if t.metric in LATENCY_METRICS and slo.get(t.metric) is t:  # the first target on a metric
                out[t.metric] = t.threshold
    return out

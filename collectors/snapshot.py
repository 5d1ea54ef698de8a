"""The typed result of one measurement window, and its JSON form (a contract for scripts).

A `Snapshot` is what the collectors produce from two scrapes of a vLLM `/metrics` endpoint (or from one
scrape, cumulative since the server started). Playbooks read it; the store keeps its `to_dict()`.
Every latency is in seconds; an empty window gives `None` ("no data"), never zero.

JSON keys (stable): `ttft_seconds`, `tpot_seconds`, `itl_seconds`, `e2e_seconds`, `queue_seconds`,
`prefill_seconds`, `decode_seconds` (each `{p50, p95, p99, mean, count}` or null), `kv_cache_usage`,
`requests_running`, `requests_waiting`, `waiting_by_reason`, `preemptions_per_second`,
`prefix_cache_hit_rate`, `spec_decode_acceptance_rate`, `spec_decode_mean_acceptance_length`,
`spec_decode_per_position`, `request_rate`, `prompt_tokens_per_second`,
`generation_tokens_per_second`, `finished_by_reason`, `error_rate`, `capacity`, `gpu`, ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

UNKNOWN = "unknown"  # how a missing figure reads in tables and summaries (never "None" or "?")

LATENCY_FIELDS = ("ttft", "tpot", "itl", "e2e", "queue", "prefill", "decode")
DISTRIBUTION_FIELDS = ("prompt_tokens", "output_tokens", "iteration_tokens")


@dataclass(frozen=True)
class Quantiles:
    """Summary of a distribution over a window. `count` is the number of observations."""

    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    count: float = 0.0
    p90: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Quantiles | None":
        return None if d is None else cls(**{k: d.get(k) for k in ("p50", "p95", "p99", "mean", "p90")},
                                          count=d.get("count") or 0.0)


@dataclass(frozen=True)
class Capacity:
    """From `vllm:cache_config_info`: how much the KV cache holds."""

    block_size: int | None = None
    num_blocks: int | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    prefix_caching_enabled: bool | None = None
    cache_dtype: str | None = None


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    utilization: float | None  # 0..1
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None


@dataclass(frozen=True)
class GpuSnapshot:
    available: bool
    reason: str = ""  # why not available
    devices: tuple[GpuDevice, ...] = ()

    @property
    def utilization(self) -> float | None:
        vals = [d.utilization for d in self.devices if d.utilization is not None]
        return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class Snapshot:
    target: str
    window_start: float  # unix seconds; the server's start for a cumulative snapshot
    window_end: float
    cumulative: bool = False

    ttft: Quantiles | None = None
    tpot: Quantiles | None = None
    itl: Quantiles | None = None
    e2e: Quantiles | None = None
    queue: Quantiles | None = None
    prefill: Quantiles | None = None
    decode: Quantiles | None = None
    prompt_tokens: Quantiles | None = None  # per-request prompt length
    output_tokens: Quantiles | None = None  # per-request generated tokens
    iteration_tokens: Quantiles | None = None  # tokens per engine step

    requests_finished: float | None = None
    request_rate: float | None = None
    prompt_tokens_total: float | None = None  # prefill tokens in the window
    generation_tokens_total: float | None = None  # generated tokens in the window
    prompt_tokens_per_second: float | None = None
    generation_tokens_per_second: float | None = None
    finished_by_reason: dict[str, float] = field(default_factory=dict)
    error_rate: float | None = None

    requests_running: float | None = None
    requests_waiting: float | None = None
    waiting_by_reason: dict[str, float] = field(default_factory=dict)
    kv_cache_usage: float | None = None  # 0..1
    preemptions: float | None = None
    preemptions_per_second: float | None = None
    prefix_cache_hit_rate: float | None = None

    spec_decode_acceptance_rate: float | None = None
    spec_decode_mean_acceptance_length: float | None = None
    spec_decode_per_position: tuple[float, ...] = ()
    spec_decode_drafts: float | None = None

    capacity: Capacity | None = None
    gpu: GpuSnapshot | None = None
    counter_reset: bool = False  # the server restarted inside the window
    engines: int = 1
    models: tuple[str, ...] = ()  # `model_name`s on the page; with two or more, see `per_model`
    notes: tuple[str, ...] = ()  # what the window could not read (e.g. families not summable)
    per_model: dict[str, "Snapshot"] = field(default_factory=dict)  # one window per model, when several

    @property
    def window_seconds(self) -> float:
        return max(self.window_end - self.window_start, 0.0)

    @property
    def empty(self) -> bool:
        """No request finished in the window: latency figures are 'no data'."""
        return not self.requests_finished

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            key = f"{f.name}_seconds" if f.name in LATENCY_FIELDS else f.name
            if isinstance(value, Quantiles):
                out[key] = value.to_dict()
            elif isinstance(value, (Capacity, GpuSnapshot)):
                out[key] = asdict(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
            elif f.name == "per_model":
                out[key] = {m: snap.to_dict() for m, snap in value.items()}
            else:
                out[key] = value
        if self.gpu is not None and not self.gpu.available:
            out["gpu"] = None
            out["gpu_unavailable_reason"] = self.gpu.reason
        out["window_seconds"] = self.window_seconds
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Snapshot":
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f"{f.name}_seconds" if f.name in LATENCY_FIELDS else f.name
            if key not in d:
                continue
            value = d[key]
            if f.name in LATENCY_FIELDS or f.name in DISTRIBUTION_FIELDS:
                value = Quantiles.from_dict(value)
            elif f.name == "capacity" and value is not None:
                value = Capacity(**value)
            elif f.name == "gpu":
                if value is None:
                    reason = d.get("gpu_unavailable_reason")
                    value = GpuSnapshot(False, reason) if reason else None
                else:
                    devs = tuple(GpuDevice(**x) for x in value.get("devices", ()))
                    value = GpuSnapshot(value.get("available", True), value.get("reason", ""), devs)
            elif f.name in ("spec_decode_per_position", "models", "notes"):
                value = tuple(value or ())
            elif f.name == "per_model":
                value = {m: cls.from_dict(v) for m, v in (value or {}).items()}
            kwargs[f.name] = value
        return cls(**kwargs)

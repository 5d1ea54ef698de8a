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

import math
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import cache
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from slotune.quantiles import Quantiles  # the collectors' readers import it from here too

UNKNOWN = "unknown"  # how a missing figure reads in tables and summaries (never "None" or "?")

LATENCY_FIELDS = ("ttft", "tpot", "itl", "e2e", "queue", "prefill", "decode")
DISTRIBUTION_FIELDS = ("prompt_tokens", "output_tokens", "iteration_tokens")


def quantile_text(block: Any, stat: str, scale: float = 1000.0, missing: str = UNKNOWN) -> str:
    """A quantile as a reader should take it (`block`: a `Quantiles` or its JSON), in seconds x `scale`:
    the figure where its bucket pins it down; else the bucket's bounds: `< 300` (first bucket),
    `> 7680` (past the last bound), `250-500` (a bucket wider than the figure itself)."""
    d = block.to_dict() if isinstance(block, Quantiles) else block
    if not isinstance(d, dict) or d.get(stat) is None:
        return missing
    value = d[stat] * scale
    b = (d.get("buckets") or {}).get(stat)
    if not b or stat not in (d.get("coarse") or ()):
        return f"{value:.1f}"
    lower, upper = b[0] * scale, None if b[1] is None else b[1] * scale
    if upper is None:
        return f"> {lower:g}"
    if lower <= 0:
        return f"< {upper:g}"
    return f"{lower:g}-{upper:g}"


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
    # The most requests that can have been in flight on average over the window (see `derive`):
    # what bounds Little's law when requests outlast the window.
    in_flight_cap: float | None = None
    # CPU time of every process of a server slotune started (API server and engine core) / window /
    # cores allowed, 0..1; None for a server slotune only scrapes (see `collectors.process_cpu`).
    engine_cpu_utilization: float | None = None
    waiting_by_reason: dict[str, float] = field(default_factory=dict)
    kv_cache_usage: float | None = None  # 0..1
    preemptions: float | None = None
    preemptions_per_second: float | None = None
    prefix_cache_hit_rate: float | None = None

    spec_decode_acceptance_rate: float | None = None
    spec_decode_mean_acceptance_length: float | None = None
    spec_decode_per_position: tuple[float, ...] = ()
    spec_decode_drafts: float | None = None  # verification steps; None where the page has no draft counter (V0)
    spec_decode_draft_tokens: float | None = None  # tokens drafted in the window
    spec_decode_accepted_tokens: float | None = None  # drafted tokens accepted in the window

    capacity: Capacity | None = None
    gpu: GpuSnapshot | None = None
    counter_reset: bool = False  # the server restarted inside the window
    engines: int = 1
    models: tuple[str, ...] = ()  # `model_name`s on the page; with two or more, see `per_model`
    notes: tuple[str, ...] = ()  # what the window could not read (e.g. families not summable)
    per_model: dict[str, Snapshot] = field(default_factory=dict)  # one window per model, when several

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
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        """The inverse of `to_dict()`. Raises `ValueError` naming the field when `d` is not a
        snapshot's shape (a string where a number belongs, a list where an object does), so a bad
        file is one line, never a TypeError later on."""
        if not isinstance(d, dict):
            raise ValueError(f"expected an object, not {type(d).__name__}")
        try:
            kwargs: dict[str, Any] = {}
            for f in fields(cls):
                key = f"{f.name}_seconds" if f.name in LATENCY_FIELDS else f.name
                if key not in d:
                    continue
                value = d[key]
                if f.name in LATENCY_FIELDS or f.name in DISTRIBUTION_FIELDS:
                    if value is not None and not isinstance(value, dict):
                        raise ValueError(f"{key}: expected an object of quantiles, not {value!r}")
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
                    value = () if value is None else tuple(value) if isinstance(value, list) else value
                elif f.name == "per_model" and isinstance(value, dict):
                    value = {m: _nested(cls, m, v) for m, v in value.items()}
                elif f.name == "per_model" and value is None:
                    value = {}
                kwargs[f.name] = value
            snap = cls(**kwargs)
        except ValueError:
            raise
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            raise ValueError(f"bad field ({exc})") from None
        _check_numbers(snap)
        return snap


def _nested(cls: type[Snapshot], model: str, d: Any) -> Snapshot:
    try:
        return cls.from_dict(d)
    except ValueError as exc:
        raise ValueError(f"per_model.{model}: {exc}") from None


# Figures that are shares of a whole (0..1); every other number of a snapshot is a count, a rate, a
# duration or a unix time, so >= 0. The per-position acceptance rates are shares too.
FRACTIONS = frozenset({"kv_cache_usage", "prefix_cache_hit_rate", "spec_decode_acceptance_rate", "error_rate",
                       "utilization", "spec_decode_per_position"})


def _check_numbers(snap: Snapshot) -> None:
    """Every field of a snapshot (and of its quantiles, capacity, GPU devices and per-model windows)
    against its declared type, checked from the dataclasses' own annotations so a new field is
    covered without a new check: numbers are finite and >= 0 (`FRACTIONS` at most 1; a bucket's upper
    bound may be +Inf), mappings have string keys, sequences the declared items; and a window between
    two scrapes does not end before it starts. Raises ValueError naming the field (`per_model.m.ttft.p95`)."""
    _conform(snap, Snapshot, "")


def _conform(value: Any, tp: Any, where: str) -> None:
    name = re.sub(r"\[\d+\]$", "", where.rsplit(".", 1)[-1])  # `spec_decode_per_position[2]` is a share too
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, UnionType):
        if value is None and type(None) in args:
            return
        kinds = [a for a in args if a is not type(None)]
        if value is None:
            raise ValueError(f"{where}: expected {_kind(kinds[0])}, not null")
        _conform(value, kinds[0], where)
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, not {value!r}")
    elif tp in (int, float):
        # JSON writes a whole number as 16 or 16.0 alike; a bool is not a number here (True is 1 in Python)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                tp is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{where}: expected {_kind(tp)}, not {value!r}")
        if math.isnan(value) or (math.isinf(value) and ".buckets." not in where):
            raise ValueError(f"{where}: expected a finite number, not {value!r}")
        if value < 0:
            raise ValueError(f"{where}: must be >= 0, not {value!r}")
        if name in FRACTIONS and value > 1:
            raise ValueError(f"{where}: a share of a whole, must be <= 1, not {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, not {value!r}")
    elif origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, not {value!r}")
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, not {k!r}")
            _conform(v, args[1], f"{where}.{k}")
    elif origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"{where}: expected a list, not {value!r}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ValueError(f"{where}: expected {len(items)} items, not {value!r}")
        for i, (item, item_tp) in enumerate(zip(value, items, strict=True)):
            _conform(item, item_tp, f"{where}[{i}]")
    elif is_dataclass(tp):
        if not isinstance(value, tp):
            raise ValueError(f"{where}: expected an object, not {value!r}")
        for f, f_tp in _hints(tp).items():
            _conform(getattr(value, f), f_tp, f"{where}.{f}" if where else f)
        # Two scrapes of a window are both on the collector's clock; a cumulative window starts at the
        # server's start (the server's clock), which a skewed collector clock may place after "now".
        if tp is Snapshot and not value.cumulative and value.window_end < value.window_start:
            raise ValueError(f"{where + '.' if where else ''}window_end ({value.window_end}) is before "
                             f"window_start ({value.window_start})")
    else:  # a type the snapshot does not use: a new field needs a rule here
        raise TypeError(f"{where}: no check for type {tp!r}")


@cache
def _hints(tp: type) -> dict[str, Any]:
    """A dataclass's field types, resolved from its (string) annotations."""
    hints = get_type_hints(tp)
    return {f.name: hints[f.name] for f in fields(tp)}


def _kind(tp: Any) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, "a list" if get_origin(tp) is tuple else "an object")

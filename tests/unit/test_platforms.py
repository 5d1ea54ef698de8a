"""The CPU/GPU differences kept in slotune.platforms."""

from __future__ import annotations

import os

import pytest

from slotune.errors import ConfigError
from slotune.platforms import CPU, GPU, parse_cpus, pinned_env
from slotune.vllm_config import VllmConfig


def test_pinned_env_binds_the_cpu_backend_and_passes_the_env_allow_list() -> None:
    assert pinned_env(CPU, [1])["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    env = pinned_env(CPU, [3, 1, 2])
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "1-3", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    cfg = VllmConfig(model="/models/tiny", env=env)  # refused if a variable were off the allow-list
    assert cfg.env == env


def test_pinned_env_is_empty_where_compute_is_on_the_accelerator() -> None:
    assert pinned_env(GPU, [0]) == {}


def test_pinned_env_refuses_a_scattered_core_list() -> None:
    with pytest.raises(ConfigError, match="not one contiguous range"):
        pinned_env(CPU, [1, 3])


def test_parse_cpus_takes_a_core_or_a_range_and_leaves_one_for_the_client() -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        assert parse_cpus(f" {cores[-1]} ") == (cores[-1],)
    with pytest.raises(ConfigError, match="leave at least one for the load generator"):
        parse_cpus(f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0]))
    for bad in ("x", "1,2", ""):
        with pytest.raises(ConfigError, match=r"bad core list .*: write one core \(3\) or a range \(2-5\)"):
            parse_cpus(bad)
    with pytest.raises(ConfigError, match=r"bad core list '3-1': a range runs from low to high \(1-3\)"):
        parse_cpus("3-1")
    with pytest.raises(ConfigError, match=r"cores 4096 are not available here"):
        parse_cpus("4096")
    # A range past the machine's cores is named as ranges, not core by core.
    with pytest.raises(ConfigError) as caught:
        parse_cpus("0-4096")
    message = str(caught.value)
    assert message.startswith("cores ") and message.endswith(")") and "are not available here" in message
    assert "-4096 are not available" in message and len(message) < 200, message



def test_cpu_dtype_is_float32_only_without_native_bf16(tmp_path) -> None:
    from slotune.platforms import cpu_dtype, cpu_flags

    assert cpu_dtype({"avx2", "fma"}) == "float32"
    assert cpu_dtype({"avx2", "avx512f", "avx512_bf16"}) is None
    assert cpu_dtype({"avx2", "amx_bf16"}) is None
    assert cpu_dtype({"fp", "asimd", "sve", "bf16", "svebf16"}) is None  # Arm (Graviton3) `Features`
    assert cpu_dtype({"fp", "asimd"}) == "float32"
    assert cpu_dtype(None) is None  # unknown: the model's own dtype
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2 fma\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "avx2", "fma"})
    assert cpu_flags(str(tmp_path / "missing")) is None
    info.write_text("processor\t: 0\n")
    assert cpu_flags(str(info)) is None


def test_the_cpu_backend_on_this_host_defaults_to_the_dtype_its_flags_call_for() -> None:
    from slotune import platforms

    plat = platforms.detect()
    if plat.backend != "cpu":
        pytest.skip("not the CPU build of vLLM")
    assert plat.default_flags.get("dtype") == platforms.cpu_dtype(platforms.cpu_flags())

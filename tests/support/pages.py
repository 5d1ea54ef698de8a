"""The real vLLM 0.32 /metrics captures by name, and variants made from them by plain text edits
(older metric names, Ray's prefix, a second engine), so every variant carries real buckets and values."""

from __future__ import annotations

import re

from tests.support.paths import FIXTURES

UNDER = "vllm-0.32-cpu-under-load.prom"
AFTER = "vllm-0.32-cpu-after-load.prom"
SPEC_UNDER = "vllm-0.32-cpu-specdecode-under-load.prom"
SPEC_AFTER = "vllm-0.32-cpu-specdecode-after-load.prom"
ALL = (UNDER, AFTER, SPEC_UNDER, SPEC_AFTER)

# vLLM 0.32 name → the name releases before 0.11 exposed (V1 engine, 0.8-0.10).
OLD_NAMES = {
    "vllm:kv_cache_usage_perc": "vllm:gpu_cache_usage_perc",
    "vllm:prefix_cache_queries": "vllm:gpu_prefix_cache_queries",
    "vllm:prefix_cache_hits": "vllm:gpu_prefix_cache_hits",
    "vllm:inter_token_latency_seconds": "vllm:time_per_output_token_seconds",
}


def page(name: str) -> str:
    """The text of one capture (`UNDER`, `AFTER`, ...)."""
    return (FIXTURES / name).read_text()


def old_generation(text: str) -> str:
    """The page as an older release wrote it: old names, and no per-request TPOT histogram."""
    for new, old in OLD_NAMES.items():
        text = re.sub(re.escape(new) + r"(?=[_{ ])", old, text)
    return "\n".join(ln for ln in text.splitlines() if "request_time_per_output_token" not in ln) + "\n"


def ray_prefix(text: str) -> str:
    """Ray's stat logger spells `vllm:x` as `vllm_x`."""
    return text.replace("vllm:", "vllm_")


def two_engines(text: str) -> str:
    """The page with a second engine (`engine="1"`) that saw exactly what engine 0 saw."""
    extra = [ln.replace('engine="0"', 'engine="1"') for ln in text.splitlines() if 'engine="0"' in ln]
    return text + "\n".join(extra) + "\n"


def without(text: str, *fragments: str) -> str:
    """The page with every line mentioning one of `fragments` removed (a missing family)."""
    return "\n".join(ln for ln in text.splitlines() if not any(f in ln for f in fragments)) + "\n"

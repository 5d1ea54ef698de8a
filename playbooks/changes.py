"""What a remedy's flag change does against the server as it runs: the value a flag has now, whether
a change moves it at all, and which way (up/down, on/off).

Two findings of one diagnosis can each propose a sound change and still pull one flag both ways
("raise max_num_seqs" for a queue, "lower max_num_seqs" for slow steps; "disable speculative decoding"
beside "draft tokens"). The diagnosis presents one of them: `opposed` says whether two changes of a
flag are opposite; the engine keeps the one of the more severe finding (`SEVERITIES`; on a tie, the
finding judged first) and names the kept one on the other.
"""

from __future__ import annotations

import json
from typing import Any

from slotune.playbooks.facts import Facts
from slotune.vllm_config import VllmConfig

# Flags whose value in effect the facts hold (configured, else vLLM's default, or read off the page).
_FROM_FACTS = {
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "enable_chunked_prefill": "chunked_prefill_enabled",
    "enable_prefix_caching": "prefix_caching_enabled",
}
# Speculative decoding seen on the page but not configured to slotune: on, its settings unknown.
_ON = {"on": True}


def current(flag: str, facts: Facts, config: VllmConfig | None) -> Any:
    """The value of `flag` the server runs with, as far as the facts and config say (None: unset/off)."""
    if flag in _FROM_FACTS and facts.get(_FROM_FACTS[flag]) is not None:
        v = facts[_FROM_FACTS[flag]]
        return bool(v) if flag.startswith("enable_") else v
    value = getattr(config, flag, None) if config is not None else None
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    if flag == "speculative_config" and value is None and facts.get("spec_enabled") == 1:
        return _ON
    return value


def same(now: Any, value: Any) -> bool:
    """Whether setting `value` leaves the flag as it is."""
    if isinstance(now, bool) or isinstance(value, bool):
        return now is not None and value is not None and bool(now) == bool(value)
    if isinstance(now, (int, float)) and isinstance(value, (int, float)):
        return float(now) == float(value)
    return bool(now == value)


def direction(now: Any, value: Any) -> int:
    """+1 when the change raises or turns on the flag, -1 when it lowers or turns it off, 0 otherwise
    (no change, or a change between two settings of a feature that stays on)."""
    if same(now, value):
        return 0
    if isinstance(value, bool) or isinstance(now, bool):
        return 1 if value else -1
    if isinstance(now, (int, float)) and isinstance(value, (int, float)):
        return 1 if value > now else -1
    if now is None or now is False:
        return 1
    if value is None or value is False:
        return -1
    return 0


def opposed(flag: str, a: Any, b: Any, facts: Facts, config: VllmConfig | None) -> bool:
    """Whether setting `flag` to `a` and to `b` pull it opposite ways from where it is now."""
    now = current(flag, facts, config)
    return direction(now, a) * direction(now, b) < 0


def describe(delta: dict[str, Any]) -> str:
    """`max_num_seqs=256, speculative_config=null`: a delta as `slotune diagnose` prints it."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in delta.items())

"""The inverse of `VllmConfig.serve_command()`: a printed `vllm serve` line back into a config, so a
recommendation can be checked (and applied) exactly as the user would paste it."""

from __future__ import annotations

import shlex
from typing import Any

from slotune.errors import ConfigError
from slotune.files import parse_json
from slotune.vllm_config import FLAGS, VllmConfig

_BY_FLAG = {f.flag: f for f in FLAGS}
_NEGATED = {"--no-" + f.flag[2:]: f for f in FLAGS if f.kind == "bool"}


def parse_serve_command(line: str) -> VllmConfig:
    """`[ENV=V ...] vllm serve MODEL [--flag value ...]` → VllmConfig; unknown flags are an error."""
    try:
        words = shlex.split(line)
    except ValueError as exc:  # an unclosed quote or a trailing backslash
        raise ConfigError(f"serve line: cannot split into words ({exc}): {line[:160]!r}") from None
    env: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[:2] != ["vllm", "serve"] or len(words) < 3:
        raise ConfigError(f"not a 'vllm serve MODEL ...' line: {line!r}")
    data: dict[str, Any] = {"model": words[2], "env": env}
    rest = words[3:]
    i = 0
    while i < len(rest):
        word = rest[i]
        if word not in _NEGATED and (word in ("--host", "--port") or (word in _BY_FLAG and _BY_FLAG[word].kind != "bool")) \
                and i + 1 >= len(rest):
            raise ConfigError(f"serve line: {word} needs a value")
        if word in ("--host", "--port"):
            data[word[2:]] = rest[i + 1]
            i += 2
            continue
        if word in _NEGATED:
            data[_NEGATED[word].field] = False
            i += 1
            continue
        flag = _BY_FLAG.get(word)
        if flag is None:
            raise ConfigError(f"unknown flag {word!r} in the serve line")
        if flag.kind == "bool":
            data[flag.field] = True
            i += 1
            continue
        value = rest[i + 1]
        data[flag.field] = parse_json(value, f"serve line: {word}") if flag.kind == "json" else value
        i += 2
    return VllmConfig.from_mapping(data, source="serve line")

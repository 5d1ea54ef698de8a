"""The inverse of `VllmConfig.serve_command()`: a `vllm serve` line back into a config, so a
recommendation can be checked (and applied) exactly as the user would paste it, and `diagnose
--serve-command` reads the server's real line.

A line is read the way vLLM 0.32's own parser reads it (`FlexibleArgumentParser`): `--flag value` and
`--flag=value`, underscores for dashes (`--max_num_seqs`), short aliases (`-tp 2`, `-O3`), unique
prefixes (`--max-num-seq`), dotted JSON keys (`--speculative-config.method ngram`), and the model as the
first word or `--model`. Every flag vLLM knows is accepted (slotune/vllm_serve_flags.json, from vLLM's
parser); those slotune does not tune (`--trust-remote-code`, `--api-key`, `-pp 2`) are skipped and named
in `ServeLine.skipped`. A flag vLLM does not know is a one-line ConfigError, as vLLM would refuse it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from slotune.errors import ConfigError
from slotune.files import parse_json
from slotune.vllm_config import FLAGS, ServeFlag, VllmConfig, human_readable_int, serve_flags

_BY_FLAG = {f.flag: f for f in FLAGS}
# What a serve line sets that is not a tuning flag but is part of a VllmConfig.
_WHERE = {"--host": "host", "--port": "port"}
_NEGATIVE = re.compile(r"-\d+\.?\d*|-\.\d+")  # argparse's "looks like a negative number"


@dataclass(frozen=True)
class ServeLine:
    """A parsed `vllm serve` line: the config slotune can reason about, and the flags it skipped
    (vLLM flags outside slotune's allow-list, by name only: a value may be a secret such as --api-key)."""

    config: VllmConfig
    skipped: tuple[str, ...] = ()


def parse_serve_command(line: str) -> VllmConfig:
    """`[ENV=V ...] vllm serve MODEL [--flag value ...]` → VllmConfig (see `parse_serve_line`)."""
    return parse_serve_line(line).config


def parse_serve_line(line: str) -> ServeLine:
    """`[ENV=V ...] vllm serve MODEL [--flag value ...]` → ServeLine. ConfigError (one line) for a line
    that is not `vllm serve`, a flag vLLM does not know, a flag without its value, or a bad value of a
    flag slotune reads."""
    try:
        words = shlex.split(line)
    except ValueError as exc:  # an unclosed quote or a trailing backslash
        raise ConfigError(f"serve line: cannot split into words ({exc}): {line[:160]!r}") from None
    env: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[:2] != ["vllm", "serve"]:
        raise ConfigError(f"not a 'vllm serve MODEL ...' line: {line!r}")
    data: dict[str, Any] = {"env": env}
    dotted: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    known = serve_flags()
    rest = _expand_short_o(words[2:])
    i = 0
    while i < len(rest):
        word = rest[i]
        i += 1
        if not word.startswith("-") or word == "-":
            if "model" in data:
                raise ConfigError(f"serve line: unexpected word {word!r} after the model (vLLM would refuse it)")
            data["model"] = word
            continue
        name, eq, explicit = word.partition("=")
        if name.startswith("--"):
            name = "--" + name[2:].split(".", 1)[0].replace("_", "-") + (
                "." + name.split(".", 1)[1] if "." in name else "")
        base, _, key = name.partition(".")
        base = _lookup(base, known)
        flag = known[base]
        value: str | None = explicit if eq else None
        if key:  # `--speculative-config.method ngram`: one key of a JSON flag
            if value is None:
                value, i = _next(rest, i, word)
            dotted.setdefault(flag.name, {}).update(_nested(key, _dotted_value(value)))
            continue
        if flag.value == "none":
            if eq:
                raise ConfigError(f"serve line: {base} takes no value (got {word!r})")
        elif flag.value in ("one", "optional") or isinstance(flag.value, int):
            count = flag.value if isinstance(flag.value, int) else 1
            if value is None and (flag.value != "optional" or (i < len(rest) and not rest[i].startswith("-"))):
                for _ in range(count):
                    value, i = _next(rest, i, base)
        else:  # many / any: the words up to the next flag
            while i < len(rest) and not rest[i].startswith("-"):
                value = rest[i] if value is None else value
                i += 1
            if value is None and flag.value == "many":
                raise ConfigError(f"serve line: {base} needs a value")
        _apply(flag, base, value, data, skipped)
    for name, obj in dotted.items():
        field = _BY_FLAG[name].field if name in _BY_FLAG and _BY_FLAG[name].kind == "json" else None
        if field is None:
            skipped.append(name)
        else:
            merged = data.get(field) if isinstance(data.get(field), dict) else {}
            data[field] = {**merged, **obj}
    if "model" not in data:
        raise ConfigError(f"serve line: no model (expected 'vllm serve MODEL ...'): {line!r}")
    config = VllmConfig.from_mapping(data, source="serve line")
    return ServeLine(config, tuple(dict.fromkeys(skipped)))


def _expand_short_o(words: list[str]) -> list[str]:
    """vLLM's own rewriting: `-O3` and `-O=3` (and `-O 3`) are `--optimization-level 3`."""
    out: list[str] = []
    for i, word in enumerate(words):
        if word.startswith("-O") and word != "-O" and not word.startswith("--"):
            out += ["--optimization-level", word[3:] if word[2:3] == "=" else word[2:]]
        elif word == "-O" and words[i + 1:i + 2] in (["0"], ["1"], ["2"], ["3"]):
            out.append("--optimization-level")
        else:
            out.append(word)
    return out


def _lookup(name: str, known: dict[str, ServeFlag]) -> str:
    """`name`, or the one long name it is a unique prefix of (argparse's abbreviations)."""
    if name in known:
        return name
    if name.startswith("--") and len(name) > 2:
        hits = [n for n in known if n.startswith(name)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(f"serve line: {name!r} is ambiguous ({', '.join(sorted(hits)[:4])}, ...)")
    raise ConfigError(f"unknown flag {name!r} in the serve line: vLLM 0.32's 'vllm serve' has no such flag")


def _next(rest: list[str], i: int, flag: str) -> tuple[str, int]:
    """The value word after a flag; like argparse, a word that looks like a flag (not like -1) is none."""
    if i >= len(rest) or (rest[i].startswith("-") and not _NEGATIVE.fullmatch(rest[i])):
        raise ConfigError(f"serve line: {flag} needs a value")
    return rest[i], i + 1


def _apply(flag: ServeFlag, used: str, value: str | None, data: dict[str, Any], skipped: list[str]) -> None:
    """Set the VllmConfig field `flag` is, or note it as skipped."""
    if flag.name in _WHERE:
        data[_WHERE[flag.name]] = value
        return
    if flag.name == "--model":
        data["model"] = value
        return
    ours = _BY_FLAG.get(flag.name)
    if ours is None:
        skipped.append(flag.name)
        return
    if ours.kind == "bool":
        data[ours.field] = not flag.negates(used)
    elif ours.kind == "json":
        data[ours.field] = parse_json(value or "", f"serve line: {flag.name}")
    elif ours.kind == "int" and flag.type is not None and value is not None:
        if flag.type == "human_readable_int_or_auto" and value.strip() in ("auto", "-1"):
            data.pop(ours.field, None)  # vLLM's own choice: the same as not setting it
            return
        try:
            data[ours.field] = human_readable_int(value)
        except ValueError:
            raise ConfigError(f"serve line: {flag.name} {value!r} is not a number (e.g. 8192, 8k, 32K)") from None
    else:
        data[ours.field] = value


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _dotted_value(text: str) -> Any:
    """vLLM reads a dotted key's value as JSON, else as text (`ngram`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text

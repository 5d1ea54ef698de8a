"""Workloads as small declarative files: what requests look like (lengths, shared prefix, long tail).

A workload file (YAML) is validated strictly; a bad one raises `ConfigError` naming the file and the
field. Lengths are in tokens. A length is a number (fixed) or a distribution:

    prompt_len: {dist: uniform, min: 64, max: 512}
    output_len: {dist: normal, mean: 128, std: 32, min: 16, max: 256}
    shared_prefix: {fraction: 0.8, length: 512}   # that share of requests starts with the same text
    long_tail: {fraction: 0.05, prompt_len: 3000, output_len: 64}  # a mix of very long requests
    ignore_eos: true          # exact output lengths (vLLM's extra body field)
    endpoint: completions     # or chat

Every distribution is bounded, so `max_total_tokens()` is exact: it is what `max_model_len` must hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from slotune.errors import ConfigError, validation_message

_STRICT = ConfigDict(extra="forbid")
BUILTINS = ("chat", "long-context", "mixed-tail", "shared-prefix")
# Chat templates add a few tokens around each message; counted into max_total_tokens so a chat
# workload never asks for more context than it declares.
CHAT_TEMPLATE_MARGIN = 16


@pydantic_dataclass(frozen=True, config=_STRICT)
class Length:
    """A bounded token-length distribution. `fixed` uses `value`; the others sample within [min, max]."""

    dist: Literal["fixed", "uniform", "normal", "lognormal"] = "fixed"
    value: int | None = None
    min: int | None = None
    max: int | None = None
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _number_is_fixed(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"dist": "fixed", "value": data}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Length:
        if self.dist == "fixed":
            if self.value is None or self.value < 1:
                raise ValueError("a fixed length needs value >= 1")
            return self
        if self.min is None or self.max is None or not 1 <= self.min <= self.max:
            raise ValueError(f"a {self.dist} length needs 1 <= min <= max")
        if self.dist in ("normal", "lognormal") and (
            self.mean is None or self.std is None or self.std < 0 or self.mean <= 0
        ):
            raise ValueError(f"a {self.dist} length needs mean > 0 and std >= 0")
        return self

    @property
    def upper(self) -> int:
        return int(self.value if self.dist == "fixed" else self.max)  # type: ignore[arg-type]

    def sample(self, rng: np.random.Generator) -> int:
        if self.dist == "fixed":
            return int(self.value)  # type: ignore[arg-type]
        lo, hi = int(self.min), int(self.max)  # type: ignore[arg-type]
        if self.dist == "uniform":
            x = rng.integers(lo, hi + 1)
        elif self.dist == "normal":
            x = rng.normal(self.mean, self.std)
        else:  # lognormal with the given mean/std of the lengths themselves
            mean, std = float(self.mean), float(self.std)  # type: ignore[arg-type]
            sigma2 = np.log1p((std / mean) ** 2)
            x = rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2))
        return int(min(max(round(float(x)), lo), hi))


@pydantic_dataclass(frozen=True, config=_STRICT)
class SharedPrefix:
    """`fraction` of requests start with the same `length`-token text (a system prompt)."""

    fraction: float = 0.0
    length: int = 0

    @model_validator(mode="after")
    def _check(self) -> SharedPrefix:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must lie between 0 and 1")
        if self.fraction > 0 and self.length < 1:
            raise ValueError("length must be >= 1 when fraction > 0")
        return self


@pydantic_dataclass(frozen=True, config=_STRICT)
class LongTail:
    """`fraction` of requests use these lengths instead (very long prompts or outputs)."""

    fraction: float
    prompt_len: Length | None = None
    output_len: Length | None = None

    @model_validator(mode="after")
    def _check(self) -> LongTail:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must lie between 0 and 1")
        if self.prompt_len is None and self.output_len is None:
            raise ValueError("give prompt_len, output_len or both")
        return self


@dataclass(frozen=True)
class RequestShape:
    """One request to send: its own prompt tokens (after any shared prefix), output tokens, prefix."""

    prompt_len: int
    output_len: int
    shared_prefix: bool


@pydantic_dataclass(frozen=True, config=_STRICT)
class Workload:
    name: str
    prompt_len: Length
    output_len: Length
    description: str = ""
    endpoint: Literal["completions", "chat"] = "completions"
    shared_prefix: SharedPrefix = field(default_factory=SharedPrefix)
    long_tail: LongTail | None = None
    ignore_eos: bool = True
    # None: the server's default sampling, as `vllm bench serve` sends. Greedy (0) on a random-weight
    # model can repeat a byte token that never completes a character: the server then streams no text
    # until the end, and TTFT reads as the whole request.
    temperature: float | None = None
    # A local tokenizer (a model directory or tokenizer.json) for exact prompt lengths; without one
    # lengths are calibrated against the server's /tokenize, or approximated.
    tokenizer: str | None = None

    @classmethod
    def fixed(cls, input_len: int, output_len: int) -> Workload:
        """Every request: `input_len` prompt tokens, exactly `output_len` output tokens."""
        return cls(name=f"fixed-{input_len}x{output_len}", prompt_len=Length(value=input_len),
                   output_len=Length(value=output_len))

    def max_total_tokens(self) -> int:
        """Longest prompt + longest output this workload can send (what max_model_len must hold)."""
        prefix = self.shared_prefix.length if self.shared_prefix.fraction > 0 else 0
        prompts = [self.prompt_len.upper]
        outputs = [self.output_len.upper]
        if self.long_tail is not None and self.long_tail.fraction > 0:
            prompts.append((self.long_tail.prompt_len or self.prompt_len).upper)
            outputs.append((self.long_tail.output_len or self.output_len).upper)
        # A tail request may have a long prompt and (from the base mix) a long output at once.
        margin = CHAT_TEMPLATE_MARGIN if self.endpoint == "chat" else 0
        return prefix + max(prompts) + max(outputs) + margin

    def shapes(self, seed: int) -> Iterator[RequestShape]:
        """An endless, seeded stream of request shapes (the same seed gives the same stream)."""
        rng = np.random.default_rng(seed)
        tail = self.long_tail
        while True:
            in_tail = tail is not None and tail.fraction > 0 and rng.random() < tail.fraction
            p = (tail.prompt_len if in_tail and tail.prompt_len else self.prompt_len).sample(rng)  # type: ignore[union-attr]
            o = (tail.output_len if in_tail and tail.output_len else self.output_len).sample(rng)  # type: ignore[union-attr]
            shared = self.shared_prefix.fraction > 0 and rng.random() < self.shared_prefix.fraction
            yield RequestShape(prompt_len=p, output_len=o, shared_prefix=shared)


_ADAPTER = TypeAdapter(Workload)


def workload_from_mapping(data: Any, source: str) -> Workload:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a workload file is a mapping of fields (name, prompt_len, output_len, ...)")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: bad workload: {validation_message(exc.errors(), limit=3)}") from None


def _read_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None


def builtin_names() -> tuple[str, ...]:
    return BUILTINS


def load_workload(name_or_path: str | Path) -> Workload:
    """A built-in by name (chat, long-context, mixed-tail, shared-prefix) or a YAML file."""
    text = str(name_or_path)
    if text in BUILTINS:
        res = resources.files("slotune.loadgen").joinpath("workloads", f"{text}.yaml")
        return workload_from_mapping(_read_yaml(res.read_text(), f"built-in workload {text!r}"), f"{text}.yaml")
    path = Path(name_or_path)
    if not path.exists():
        raise ConfigError(f"unknown workload {text!r}: not a file, and not a built-in ({', '.join(BUILTINS)})")
    try:
        body = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    data = _read_yaml(body, str(path))
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return workload_from_mapping(data, str(path))

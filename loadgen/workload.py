"""Workloads as small declarative files: what requests look like (lengths, shared prefix, long tail).

A workload file (YAML) is validated strictly; a bad one raises `ConfigError` naming the file and the
field. Lengths are in tokens. A length is a number (fixed) or a distribution:

    prompt_len: {dist: uniform, min: 64, max: 512}
    output_len: {dist: normal, mean: 128, std: 32, min: 16, max: 256}
    shared_prefix: {fraction: 0.8, length: 512}   # that share of requests starts with the same text
    long_tail: {fraction: 0.05, prompt_len: 3000, output_len: 64}  # a mix of very long requests
    ignore_eos: true          # exact output lengths (vLLM's extra body field)
    endpoint: completions     # or chat
    prompts: {source: sharegpt}   # real text (loadgen/corpus.py): sharegpt | edit | document | jsonl
    temperature: 0            # sampling: temperature, top_p, sampling_seed (unset: the server's default)

With `prompts`, the text is real and `prompt_len` is the range of prompt lengths accepted (`edit`,
`sharegpt`, `jsonl`) or sampled (`document`); `output_len` caps the output (`sharegpt`: the real
reply's length; `edit`: the code's length plus a margin) or is sampled (`document`, `jsonl` lines
without `output_tokens`). A `.jsonl` file given as the workload is `vllm bench serve`'s `custom`
dataset, sent as chat.

Every distribution is bounded, so `max_total_tokens()` is exact: it is what `max_model_len` must hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from slotune.errors import ConfigError, validation_message
from slotune.files import parse_yaml, read_text

# allow_inf_nan=False: YAML's `.nan`/`.inf` would pass every range check and reach the request body
# (`"temperature": Infinity` is not JSON) or a `vllm bench serve` line.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
BUILTINS = ("chat", "long-context", "mixed-tail", "shared-prefix", "sharegpt", "edit", "long-prompt")
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


@pydantic_dataclass(frozen=True, config=_STRICT)
class PromptSource:
    """Where real prompt text comes from (loadgen/corpus.py); `path` is the JSONL file for `jsonl`."""

    source: Literal["sharegpt", "edit", "document", "jsonl"]
    path: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PromptSource:
        if (self.source == "jsonl") != (self.path is not None):
            raise ValueError("give 'path' with source jsonl, and only then")
        return self


@dataclass(frozen=True)
class RequestShape:
    """One request to send: its own prompt tokens (after any shared prefix), output tokens, prefix."""

    prompt_len: int
    output_len: int
    shared_prefix: bool
    text: str | None = None  # real prompt text (a workload with `prompts`); None: synthetic words


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
    top_p: float | None = None
    sampling_seed: int | None = None  # vLLM's per-request `seed`: the same sampled answer every run
    prompts: PromptSource | None = None
    # A local tokenizer (a model directory or tokenizer.json) for exact prompt lengths; without one
    # lengths are calibrated against the server's /tokenize, or approximated.
    tokenizer: str | None = None

    @classmethod
    def fixed(cls, input_len: int, output_len: int) -> Workload:
        """Every request: `input_len` prompt tokens, exactly `output_len` output tokens."""
        return cls(name=f"fixed-{input_len}x{output_len}", prompt_len=Length(value=input_len),
                   output_len=Length(value=output_len))

    @model_validator(mode="after")
    def _sampling(self) -> Workload:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must lie in (0, 1]")
        return self

    def with_sampling(self, temperature: float | None = None, top_p: float | None = None,
                      seed: int | None = None) -> Workload:
        """This workload with the sampling parameters that are given (not None) replaced (the CLI's
        `--temperature` and `--top-p`)."""
        import dataclasses

        changes = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("sampling_seed", seed))
                   if v is not None}
        try:
            return dataclasses.replace(self, **changes) if changes else self
        except ValidationError as exc:  # `--temperature inf`: one line, as for a workload file
            raise ConfigError(f"bad sampling override: {validation_message(exc.errors(), limit=1)}") from None

    def with_tokenizer(self, model_dir: str | Path) -> Workload:
        """This workload counting tokens with the served model's tokenizer, when it has none and the
        directory holds one (exact prompt lengths, caps and ShareGPT reply lengths)."""
        import dataclasses

        if self.tokenizer is None and (Path(model_dir) / "tokenizer.json").is_file():
            return dataclasses.replace(self, tokenizer=str(model_dir))
        return self

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

    def real_prompts(self, seed: int, tokenizer: Any = None) -> Iterator[Any]:
        """The endless, seeded stream of `corpus.Prompt`s of a workload with `prompts`."""
        from slotune.loadgen import corpus

        counter = corpus.Counter(tokenizer)
        src = self.prompts
        assert src is not None
        lo = self.prompt_len.value if self.prompt_len.dist == "fixed" else self.prompt_len.min
        rng_out = np.random.default_rng([seed, 0x0C])
        if src.source == "sharegpt":
            return corpus.iter_sharegpt(seed, counter, (int(lo), self.prompt_len.upper),  # type: ignore[arg-type]
                                        self.output_len.upper)
        if src.source == "edit":
            return corpus.iter_edits(seed, counter, (int(lo), self.prompt_len.upper),  # type: ignore[arg-type]
                                     self.output_len.upper)
        if src.source == "document":
            return corpus.iter_documents(seed, counter, self.prompt_len.sample, self.output_len.sample)
        rows = corpus.read_jsonl(str(src.path))
        return (corpus.Prompt(text, counter.count(text), min(out or self.output_len.sample(rng_out),
                                                                self.output_len.upper))
                for i in range(2**62) for text, out in [rows[i % len(rows)]])

    def shapes(self, seed: int, tokenizer: Any = None) -> Iterator[RequestShape]:
        """An endless, seeded stream of request shapes (the same seed gives the same stream); with
        `prompts`, each carries its real text (token counts with `tokenizer`, else estimated)."""
        if self.prompts is not None:
            return self._real_shapes(seed, tokenizer)
        return self._synthetic_shapes(seed)

    def _real_shapes(self, seed: int, tokenizer: Any) -> Iterator[RequestShape]:
        rng = np.random.default_rng([seed, 0x5F])
        for p in self.real_prompts(seed, tokenizer):
            shared = self.shared_prefix.fraction > 0 and rng.random() < self.shared_prefix.fraction
            yield RequestShape(prompt_len=p.prompt_tokens, output_len=p.output_tokens, shared_prefix=shared,
                               text=p.text)

    def _synthetic_shapes(self, seed: int) -> Iterator[RequestShape]:
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
    return parse_yaml(text, source)


def builtin_names() -> tuple[str, ...]:
    return BUILTINS


def jsonl_workload(path: str | Path) -> Workload:
    """A chat workload that sends the prompts of a `vllm bench serve` custom-dataset file, in order.
    Its length bounds are the file's; prompt tokens are estimated at about 4 characters a token, and
    the upper bound (what max_model_len must hold) is given half again as much room, since code and
    other languages take more tokens a character. The rows themselves are never filtered."""
    from slotune.loadgen import corpus

    rows = corpus.read_jsonl(path)
    counter = corpus.Counter()
    plens = [counter.count(text) for text, _ in rows]
    outs = [o for _, o in rows if o is not None] or [256]
    return Workload(name=Path(path).stem, endpoint="chat", ignore_eos=False,
                    prompt_len=Length(dist="uniform", min=max(1, min(plens)), max=max(plens) * 3 // 2 + 1),
                    output_len=Length(dist="uniform", min=min(outs), max=max(outs)),
                    prompts=PromptSource(source="jsonl", path=str(Path(path).resolve())),
                    description=f"the {len(rows)} prompts of {Path(path).name}, in file order")


def load_workload(name_or_path: str | Path) -> Workload:
    """A built-in by name (chat, long-context, mixed-tail, shared-prefix, sharegpt, edit,
    long-prompt), a YAML file, or a JSONL file of prompts (`vllm bench serve`'s custom format)."""
    text = str(name_or_path)
    if text.endswith(".jsonl"):
        return jsonl_workload(text)
    if text in BUILTINS:
        res = resources.files("slotune.loadgen").joinpath("workloads", f"{text}.yaml")
        return workload_from_mapping(_read_yaml(res.read_text(), f"built-in workload {text!r}"), f"{text}.yaml")
    path = Path(name_or_path)
    if not path.exists():
        raise ConfigError(f"unknown workload {text!r}: not a file, and not a built-in ({', '.join(BUILTINS)})")
    body = read_text(path)
    data = _read_yaml(body, str(path))
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return workload_from_mapping(data, str(path))

"""The search space: the one table of what the tuner may change, and the rules that keep a trial valid.

Every dimension is a short ordered list of choices, with `None` meaning "leave vLLM's default" (vLLM
derives several defaults from the platform and usage context, so "default" is a choice of its own,
not a number we would have to guess). Dimensions map to `VllmConfig` fields from
`slotune.vllm_config.FLAGS`; the two speculative-decoding dimensions together make one
`speculative_config`.

A user narrows the space with a YAML file or `--fix name=value`:

    max_num_seqs: [16, 32, 64]          # search only these
    max_num_batched_tokens: {min: 1024}  # keep the built-in choices in a range
    enable_prefix_caching: true          # fix (not searched)
    speculative_method: null             # fix to vLLM's default (off)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any, Literal, Protocol

from slotune import platforms
from slotune.errors import ConfigError
from slotune.files import load_yaml, parse_yaml
from slotune.vllm_config import FLAG_BY_FIELD, SPEC_METHODS, VllmConfig, validate_combination

Choice = Any  # None | bool | int | str: what Optuna's CategoricalDistribution accepts
DEFAULT = None  # the choice meaning "vLLM's default"

SPEC_METHOD = "speculative_method"
SPEC_TOKENS = "num_speculative_tokens"


@dataclass(frozen=True)
class Dimension:
    """One searchable knob: its Optuna parameter name, the VllmConfig field it sets, its choices."""

    name: str
    field: str
    kind: Literal["int", "bool", "str"]
    choices: tuple[Choice, ...]
    help: str = ""
    # Only searched when this other dimension is set (not None): K only matters with a method.
    requires: str | None = None

    def parse(self, raw: Any) -> Choice:
        """A user's value (YAML or `--fix` text) as a choice of this dimension, or a ConfigError."""
        if isinstance(raw, str):
            text = raw.strip()
            if text.lower() in ("default", "none", "null", "off", "~", ""):
                return None
            raw = parse_yaml(text, f"search space: {self.name}")
        if raw is None:
            return None
        ok = {
            "int": isinstance(raw, int) and not isinstance(raw, bool),
            "bool": isinstance(raw, bool),
            "str": isinstance(raw, str),
        }[self.kind]
        if not ok:
            raise ConfigError(f"search space: {self.name} takes {self.kind} values (or default), not {raw!r}")
        if self.kind == "int" and raw < 1:
            raise ConfigError(f"search space: {self.name} must be positive, not {raw}")
        if self.name == SPEC_METHOD and raw not in SPEC_METHODS:
            raise ConfigError(f"search space: unknown speculative method {raw!r} (known: {', '.join(SPEC_METHODS)})")
        return raw


def _dimensions(plat: platforms.Platform) -> tuple[Dimension, ...]:
    return (
        Dimension("max_num_seqs", "max_num_seqs", "int", (DEFAULT, 8, 16, 32, 64, 128, 256, 512),
                  FLAG_BY_FIELD["max_num_seqs"].help),
        Dimension("max_num_batched_tokens", "max_num_batched_tokens", "int",
                  (DEFAULT, 512, 1024, 2048, 4096, 8192, 16384), FLAG_BY_FIELD["max_num_batched_tokens"].help),
        Dimension("max_model_len", "max_model_len", "int", (DEFAULT, 1024, 2048, 4096, 8192, 16384, 32768),
                  "longest prompt + output; never below what the workload needs"),
        Dimension("enable_chunked_prefill", "enable_chunked_prefill", "bool", (DEFAULT, True, False),
                  FLAG_BY_FIELD["enable_chunked_prefill"].help),
        Dimension("enable_prefix_caching", "enable_prefix_caching", "bool", (DEFAULT, True, False),
                  FLAG_BY_FIELD["enable_prefix_caching"].help),
        Dimension("quantization", "quantization", "str", tuple(dict.fromkeys((DEFAULT, *plat.quantizations))),
                  "weight quantization (only what the backend supports)"),
        # "auto" is vLLM's own default: as a choice of its own it would measure the baseline again under
        # another name (and a lucky re-run would "win"). It stays valid in a space file.
        Dimension("kv_cache_dtype", "kv_cache_dtype", "str",
                  tuple(dict.fromkeys((DEFAULT, *(d for d in plat.kv_cache_dtypes if d != "auto")))),
                  "KV-cache element type (only what the backend supports)"),
        # ngram drafting needs no draft model, so it is the one method searched by default; a space
        # file may add others (they then need a draft model, which validation asks for).
        Dimension(SPEC_METHOD, "speculative_config", "str", (DEFAULT, "ngram"), "speculative decoding method"),
        Dimension(SPEC_TOKENS, "speculative_config", "int", (1, 2, 3, 4, 5),
                  "tokens drafted per step (K)", requires=SPEC_METHOD),
    )


class SuggestsCategorical(Protocol):
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions searched and the values fixed. Immutable; narrow with `narrowed()`."""

    dimensions: tuple[Dimension, ...]
    fixed: Mapping[str, Choice] = field(default_factory=dict)
    platform: platforms.Platform = field(default_factory=platforms.detect)
    # What the workload needs (max prompt + max output); max_model_len never goes below it.
    min_model_len: int | None = None

    @classmethod
    def default(
        cls, *, plat: platforms.Platform | None = None, min_model_len: int | None = None,
        model_max_len: int | None = None,
    ) -> SearchSpace:
        plat = plat or platforms.detect()
        dims = []
        for d in _dimensions(plat):
            if d.name == "max_model_len":
                d = replace(d, choices=_fit_model_len(d.choices, min_model_len, model_max_len))
            dims.append(d)
        return cls(tuple(dims), {}, plat, min_model_len)

    # -- lookup ---------------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions) + tuple(self.fixed)

    def dimension(self, name: str) -> Dimension:
        for d in _dimensions(self.platform):
            if d.name == name:
                found = next((x for x in self.dimensions if x.name == name), None)
                return found or d
        known = ", ".join(d.name for d in _dimensions(self.platform))
        raise ConfigError(f"search space: unknown dimension {name!r} (known: {known})")

    # -- narrowing ------------------------------------------------------------------------------

    def narrowed(self, spec: Mapping[str, Any], *, source: str = "search space") -> SearchSpace:
        """Apply a user's narrowing: a list searches those choices, a scalar fixes, {min,max} filters."""
        dims = {d.name: d for d in self.dimensions}
        fixed = dict(self.fixed)
        for raw_name, value in spec.items():
            name = str(raw_name).replace("-", "_")
            dim = self.dimension(name)
            if isinstance(value, Mapping):
                unknown = set(value) - {"min", "max"}
                if unknown:
                    raise ConfigError(f"{source}: {name}: only 'min' and 'max' narrow a range, not {sorted(unknown)}")
                if dim.kind != "int":
                    raise ConfigError(f"{source}: {name} is not numeric; give a list of choices or one value")
                lo, hi = value.get("min"), value.get("max")
                for bound, v in (("min", lo), ("max", hi)):
                    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                        raise ConfigError(f"{source}: {name}: {bound} must be a number, not {v!r}")
                keep = tuple(c for c in dim.choices if c is not None and (lo is None or c >= lo) and (hi is None or c <= hi))
                if not keep:
                    raise ConfigError(f"{source}: {name}: no choice of {dim.choices[1:]} lies in [{lo}, {hi}]")
                dims[name] = replace(dim, choices=keep)
                fixed.pop(name, None)
            elif isinstance(value, (list, tuple)):
                choices = tuple(dict.fromkeys(dim.parse(v) for v in value))
                if not choices:
                    raise ConfigError(f"{source}: {name}: an empty list leaves nothing to search")
                dims[name] = replace(dim, choices=choices)
                fixed.pop(name, None)
            else:
                fixed[name] = dim.parse(value)
                dims.pop(name, None)
        for name, choices in ((n, d.choices) for n, d in dims.items()):
            if name == "max_model_len":
                self._check_model_len(choices, source)
        if "max_model_len" in fixed:
            self._check_model_len((fixed["max_model_len"],), source)
        ordered = tuple(dims[d.name] for d in _dimensions(self.platform) if d.name in dims)
        return SearchSpace(ordered, fixed, self.platform, self.min_model_len)

    def _check_model_len(self, choices: Iterable[Choice], source: str) -> None:
        need = self.min_model_len
        low = [c for c in choices if c is not None and need is not None and c < need]
        if low:
            raise ConfigError(
                f"{source}: max_model_len {low[0]} is below what the workload needs ({need} tokens: "
                "longest prompt + longest output)"
            )

    def with_fixes(self, fixes: Iterable[str]) -> SearchSpace:
        """`--fix name=value` pairs from the command line."""
        spec: dict[str, Any] = {}
        for item in fixes:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"--fix {item!r}: write NAME=VALUE, e.g. --fix enable_prefix_caching=true")
            spec[name.strip()] = value
        return self.narrowed(spec, source="--fix")

    def with_file(self, path: Path) -> SearchSpace:
        data = load_yaml(path)
        if data is None:
            return self
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of dimension names to choices")
        return self.narrowed(data, source=str(path))

    # -- sampling -------------------------------------------------------------------------------

    def suggest(self, trial: SuggestsCategorical) -> dict[str, Choice]:
        """Ask the trial for each searched dimension, in declaration order (conditions respected)."""
        params: dict[str, Choice] = {}
        for d in self.dimensions:
            if d.requires is not None and self._value(d.requires, params) is None:
                continue
            params[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        return params

    def _value(self, name: str, params: Mapping[str, Choice]) -> Choice:
        return params[name] if name in params else self.fixed.get(name)

    def baseline_params(self) -> dict[str, Choice]:
        """Every searched dimension at vLLM's default (the baseline, as Optuna params)."""
        return {d.name: None for d in self.dimensions if d.requires is None and None in d.choices}

    def grid(self) -> list[dict[str, Choice]]:
        """Every combination of the searched choices (for small spaces run exhaustively)."""
        plain = [d for d in self.dimensions if d.requires is None]
        combos = []
        for values in product(*(d.choices for d in plain)):
            params = dict(zip((d.name for d in plain), values, strict=True))
            for d in self.dimensions:
                if d.requires is not None and self._value(d.requires, params) is not None:
                    params[d.name] = d.choices[0]
            combos.append(params)
        return combos

    def size(self) -> int:
        return len(self.grid())

    # -- from params to a launch ----------------------------------------------------------------

    def config_for(self, base: VllmConfig, params: Mapping[str, Choice], *, apply_fixed: bool = True) -> VllmConfig:
        """The launch config for a trial: base config + fixed values + the trial's params."""
        values = {**(dict(self.fixed) if apply_fixed else {}), **params}
        changes: dict[str, Any] = {}
        for name, value in values.items():
            dim = self.dimension(name)
            if dim.field != "speculative_config":
                changes[dim.field] = value
        method = values.get(SPEC_METHOD)
        if method is not None:
            k = values.get(SPEC_TOKENS) or self.dimension(SPEC_TOKENS).choices[0]
            spec: dict[str, Any] = {"method": method, "num_speculative_tokens": k}
            if method == "ngram":
                spec.update(prompt_lookup_min=2, prompt_lookup_max=5)
            changes["speculative_config"] = spec
        elif SPEC_METHOD in values:
            changes["speculative_config"] = None
        return base.with_changes(**changes)

    def params_for_delta(self, start: Mapping[str, Choice], delta: Mapping[str, Any]) -> dict[str, Choice] | None:
        """Turn a playbook remedy's config delta into trial params, snapped to the space's choices.

        Fields outside the searched dimensions are dropped (the remedy may still be partly useful);
        None when nothing of the delta can be expressed, or it changes nothing."""
        params = dict(start)
        changed = False
        searched = {d.name: d for d in self.dimensions}
        for fld, value in delta.items():
            if fld == "speculative_config":
                if SPEC_METHOD not in searched:
                    continue
                method = value.get("method") if isinstance(value, Mapping) else getattr(value, "method", None)
                params[SPEC_METHOD] = _snap(searched[SPEC_METHOD], method)
                if method is not None and SPEC_TOKENS in searched:
                    k = value.get("num_speculative_tokens") if isinstance(value, Mapping) else value.num_speculative_tokens
                    params[SPEC_TOKENS] = _snap(searched[SPEC_TOKENS], k)
                else:
                    params.pop(SPEC_TOKENS, None)
                changed = changed or params != dict(start)
                continue
            if fld not in searched:
                continue
            snapped = _snap(searched[fld], value)
            if params.get(fld) != snapped:
                params[fld] = snapped
                changed = True
        return params if changed else None

    def infeasible_reason(self, config: VllmConfig) -> str | None:
        """Why this config must not be launched (unsupported by the backend, rejected by vLLM), or None."""
        if config.quantization not in self.platform.quantizations:
            return (f"quantization {config.quantization!r} is not supported by the {self.platform.backend} "
                    f"backend (supported: {_show(self.platform.quantizations)})")
        if config.kv_cache_dtype not in self.platform.kv_cache_dtypes:
            return (f"kv_cache_dtype {config.kv_cache_dtype!r} is not supported by the {self.platform.backend} "
                    f"backend (supported: {_show(self.platform.kv_cache_dtypes)})")
        if self.min_model_len and config.max_model_len and config.max_model_len < self.min_model_len:
            return f"max_model_len {config.max_model_len} is below what the workload needs ({self.min_model_len})"
        try:
            validate_combination(config)
        except ConfigError as exc:
            return str(exc)
        return None

    def describe(self) -> list[dict[str, Any]]:
        """The space as rows (for docs, `--json` and the report)."""
        rows = [{"name": d.name, "flag": FLAG_BY_FIELD[d.field].flag, "kind": d.kind, "choices": list(d.choices),
                 "requires": d.requires, "help": d.help} for d in self.dimensions]
        rows += [{"name": n, "flag": FLAG_BY_FIELD[self.dimension(n).field].flag, "fixed": v} for n, v in self.fixed.items()]
        return rows


def _snap(dim: Dimension, value: Any) -> Choice:
    """The choice closest to a value: exact for categories, nearest (ties upward) for numbers."""
    if value in dim.choices:
        return value
    if dim.kind == "int" and isinstance(value, (int, float)):
        numbers = [c for c in dim.choices if c is not None]
        if numbers:
            return min(numbers, key=lambda c: (abs(c - value), -c))
    return dim.choices[0]


def _fit_model_len(choices: tuple[Choice, ...], need: int | None, model_max: int | None) -> tuple[Choice, ...]:
    kept = tuple(
        c for c in choices
        if c is None or ((need is None or c >= need) and (model_max is None or c <= model_max))
    )
    if need is not None and model_max is not None and need > model_max:
        raise ConfigError(f"the workload needs {need} tokens per request but the model handles at most {model_max}")
    if need is not None and not any(c is not None for c in kept):
        kept = (None, need)
    return kept


def _show(choices: Iterable[Choice]) -> str:
    return ", ".join("default" if c is None else str(c) for c in choices)


def model_max_len(model: str) -> int | None:
    """The model's own context length from its `config.json`, when it is a local directory."""
    cfg = Path(model) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings") or data.get("max_sequence_length")
    return int(value) if isinstance(value, int) else None

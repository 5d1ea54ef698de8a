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
    prompt_lookup_min: [1, 2]            # n-gram window (only searched with method ngram)

The KV-cache size (`kv_cache_gib`) is searched only up to a ceiling the user gives
(`slotune tune --kv-cache-max-gib N`): memory is the user's to hand out, so without a ceiling it is
not searched, and no choice, fix or remedy above the ceiling is ever tried.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any, Literal, Protocol

from slotune import platforms
from slotune.errors import ConfigError
from slotune.files import load_yaml, parse_yaml
from slotune.vllm_config import (
    FLAG_BY_FIELD,
    NGRAM_LOOKUP_MAX,
    SPEC_METHODS,
    VllmConfig,
    validate_combination,
)

Choice = Any  # None | bool | int | str: what Optuna's CategoricalDistribution accepts
DEFAULT = None  # the choice meaning "vLLM's default"

SPEC_METHOD = "speculative_method"
SPEC_TOKENS = "num_speculative_tokens"
LOOKUP_MIN = "prompt_lookup_min"
LOOKUP_MAX = "prompt_lookup_max"
SPEC_MAX_BATCH = "spec_draft_max_batch"
KV_GIB = "kv_cache_gib"
# The n-gram window when the space does not search it (the setting measured on the real model).
NGRAM_WINDOW = {LOOKUP_MIN: 2, LOOKUP_MAX: 4}


@dataclass(frozen=True)
class Dimension:
    """One searchable knob: its Optuna parameter name, the VllmConfig field it sets, its choices."""

    name: str
    field: str
    kind: Literal["int", "bool", "str"]
    choices: tuple[Choice, ...]
    help: str = ""
    # Only searched when this other dimension is set (not None): K only matters with a method;
    # with `requires_value`, only when it is set to that value (the n-gram window needs ngram).
    requires: str | None = None
    requires_value: Choice = None
    max_value: int | None = None  # for int dimensions: the largest value vLLM (or slotune) accepts

    def active(self, value_of_required: Choice) -> bool:
        if self.requires is None:
            return True
        if self.requires_value is None:
            return value_of_required is not None
        return bool(value_of_required == self.requires_value)

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
        if self.kind == "int" and self.max_value is not None and raw > self.max_value:
            raise ConfigError(f"search space: {self.name} must be at most {self.max_value}, not {raw}")
        if self.name == SPEC_METHOD and raw not in SPEC_METHODS:
            raise ConfigError(f"search space: unknown speculative method {raw!r} (known: {', '.join(SPEC_METHODS)})")
        return raw


def _dimensions(plat: platforms.Platform, kv_max_gib: int | None = None) -> tuple[Dimension, ...]:
    dims = (
        Dimension("max_num_seqs", "max_num_seqs", "int", (DEFAULT, *plat.batch_choices),
                  FLAG_BY_FIELD["max_num_seqs"].help),
        # 128 and 256 split a long prompt's prefill into chunks short enough to run beside the decodes
        # (vLLM 0.32 accepts a budget below max_model_len with chunked prefill on, its default, and
        # never below max_num_seqs: `validate_combination` refuses the rest before launch).
        Dimension("max_num_batched_tokens", "max_num_batched_tokens", "int",
                  (DEFAULT, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
                  FLAG_BY_FIELD["max_num_batched_tokens"].help),
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
        # The window's defaults never cross (every min <= every max); a space file that narrows them
        # so they do is refused, and a crossing pair is infeasible before launch.
        Dimension(LOOKUP_MIN, "speculative_config", "int", (1, 2, 3),
                  "shortest n-gram matched in the context before drafting", requires=SPEC_METHOD,
                  requires_value="ngram", max_value=NGRAM_LOOKUP_MAX),
        Dimension(LOOKUP_MAX, "speculative_config", "int", (3, 4, 5),
                  "longest n-gram matched in the context", requires=SPEC_METHOD, requires_value="ngram",
                  max_value=NGRAM_LOOKUP_MAX),
        # Speculation by load: vLLM 0.32 looks up K per step from `num_speculative_tokens_per_batch_size`
        # by the number of requests scheduled (scheduler.py) and the n-gram drafter proposes that
        # many (gpu_model_runner.py, which the CPU runner inherits). Default: K at every batch size.
        Dimension(SPEC_MAX_BATCH, "speculative_config", "int", (DEFAULT, 1, 2, 4, 8),
                  "draft K tokens only while at most this many requests share a step, none above",
                  requires=SPEC_METHOD),
    )
    if kv_max_gib is None:
        return dims
    default = platforms.default_kv_cache_gib(plat)
    sizes = sorted({*(2**i for i in range(kv_max_gib.bit_length()) if 2**i <= kv_max_gib), kv_max_gib})
    kv = Dimension(KV_GIB, "env" if plat.kv_cache_env else "kv_cache_memory_bytes", "int",
                   (DEFAULT, *(g for g in sizes if g != default)),
                   f"KV-cache size in GiB, at most {kv_max_gib} (" +
                   (plat.kv_cache_env or "--kv-cache-memory-bytes") + ")")
    return (*dims, kv)


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
    # The model's own context length (what vLLM uses when max_model_len is unset).
    model_max_len: int | None = None
    # The user's KV-cache ceiling in GiB: the kv_cache_gib dimension exists only with one.
    kv_cache_max_gib: int | None = None

    @classmethod
    def default(
        cls, *, plat: platforms.Platform | None = None, min_model_len: int | None = None,
        model_max_len: int | None = None, kv_cache_max_gib: int | None = None,
    ) -> SearchSpace:
        plat = plat or platforms.detect()
        if kv_cache_max_gib is not None and kv_cache_max_gib < 1:
            raise ConfigError(f"the KV-cache ceiling must be at least 1 GiB, not {kv_cache_max_gib}")
        dims = []
        for d in _dimensions(plat, kv_cache_max_gib):
            if d.name == "max_model_len":
                d = replace(d, choices=_fit_model_len(d.choices, min_model_len, model_max_len))
            dims.append(d)
        return cls(tuple(dims), {}, plat, min_model_len, model_max_len, kv_cache_max_gib)

    def _all(self) -> tuple[Dimension, ...]:
        return _dimensions(self.platform, self.kv_cache_max_gib)

    # -- lookup ---------------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions) + tuple(self.fixed)

    def dimension(self, name: str) -> Dimension:
        for d in self._all():
            if d.name == name:
                found = next((x for x in self.dimensions if x.name == name), None)
                return found or d
        known = ", ".join(d.name for d in self._all())
        hint = " (searched only with a KV-cache ceiling: --kv-cache-max-gib)" if name == KV_GIB else ""
        raise ConfigError(f"search space: unknown dimension {name!r}{hint} (known: {known})")

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
        self._check_kv_ceiling(dims, fixed, source)
        self._check_lookup_window(dims, fixed, source)
        ordered = tuple(dims[d.name] for d in self._all() if d.name in dims)
        return SearchSpace(ordered, fixed, self.platform, self.min_model_len, self.model_max_len,
                           self.kv_cache_max_gib)

    def _check_kv_ceiling(self, dims: Mapping[str, Dimension], fixed: Mapping[str, Choice], source: str) -> None:
        ceiling = self.kv_cache_max_gib
        values = list(dims[KV_GIB].choices) if KV_GIB in dims else []
        values += [fixed[KV_GIB]] if KV_GIB in fixed else []
        over = [v for v in values if v is not None and ceiling is not None and v > ceiling]
        if over:
            raise ConfigError(f"{source}: kv_cache_gib {over[0]} is above the KV-cache ceiling of {ceiling} GiB")

    def _check_lookup_window(self, dims: Mapping[str, Dimension], fixed: Mapping[str, Choice], source: str) -> None:
        def values(name: str) -> list[Choice]:
            if name in fixed:  # fixed at "default": vLLM fills it from the other end, nothing to compare
                return [v for v in [fixed[name]] if v is not None]
            return [c for c in (dims[name].choices if name in dims else ()) if c is not None]

        lows, highs = values(LOOKUP_MIN), values(LOOKUP_MAX)
        if lows and highs and min(lows) > max(highs):
            raise ConfigError(f"{source}: prompt_lookup_min ({min(lows)}) is above every prompt_lookup_max "
                              f"({max(highs)}): no n-gram window is left to search")

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
            if d.requires is not None and not d.active(self._value(d.requires, params)):
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
                if d.requires is not None and d.active(self._value(d.requires, params)):
                    params[d.name] = d.choices[0]
            combos.append(params)
        return combos

    def size(self) -> int:
        return len(self.grid())

    def random_params(self, rng: random.Random) -> dict[str, Choice]:
        """One config's params drawn uniformly, dimension by dimension (conditions respected)."""
        params: dict[str, Choice] = {}
        for d in self.dimensions:
            if d.requires is not None and not d.active(self._value(d.requires, params)):
                continue
            params[d.name] = rng.choice(d.choices)
        return params

    def neighbours(self, params: Mapping[str, Choice]) -> list[dict[str, Choice]]:
        """Every params one step from `params`: one searched dimension moved to another of its choices;
        the dimensions that depend on it dropped when it turns them off, at their `remedy_default`
        when it turns them on. In declaration order (the caller shuffles)."""
        out = []
        for d in self.dimensions:
            if d.name not in params:
                continue  # inactive here
            for choice in d.choices:
                if choice == params[d.name]:
                    continue
                moved = {**params, d.name: choice}
                for dep in self.dimensions:
                    if dep.requires != d.name:
                        continue
                    if dep.active(choice):
                        moved.setdefault(dep.name, remedy_default(dep))
                    else:
                        moved.pop(dep.name, None)
                out.append(moved)
        return out

    # -- from params to a launch ----------------------------------------------------------------

    def config_for(self, base: VllmConfig, params: Mapping[str, Choice], *, apply_fixed: bool = True) -> VllmConfig:
        """The launch config for a trial: base config + fixed values + the trial's params."""
        values = {**(dict(self.fixed) if apply_fixed else {}), **params}
        changes: dict[str, Any] = {}
        for name, value in values.items():
            dim = self.dimension(name)
            if name == KV_GIB:
                if value is not None:
                    changes.update(platforms.kv_cache_changes(self.platform, value, dict(base.env)))
            elif dim.field != "speculative_config":
                changes[dim.field] = value
        method = values.get(SPEC_METHOD)
        if method is not None:
            k = values.get(SPEC_TOKENS) or self.dimension(SPEC_TOKENS).choices[0]
            spec: dict[str, Any] = {"method": method, "num_speculative_tokens": k}
            if method == "ngram":
                spec.update(prompt_lookup_min=values.get(LOOKUP_MIN) or NGRAM_WINDOW[LOOKUP_MIN],
                            prompt_lookup_max=values.get(LOOKUP_MAX) or NGRAM_WINDOW[LOOKUP_MAX])
                # The built-in window's max is 4; a searched min above it raises the max with it.
                if LOOKUP_MAX not in values:
                    spec["prompt_lookup_max"] = max(spec["prompt_lookup_max"], spec["prompt_lookup_min"])
            batch = values.get(SPEC_MAX_BATCH)
            if batch is not None:
                spec["num_speculative_tokens_per_batch_size"] = draft_schedule(k, batch)
            changes["speculative_config"] = spec
        elif SPEC_METHOD in values:
            changes["speculative_config"] = None
        return base.with_changes(**changes)

    def params_for_delta(self, start: Mapping[str, Choice], delta: Mapping[str, Any]) -> dict[str, Choice] | None:
        """Turn a playbook remedy's config delta into trial params, snapped to the space's choices.

        Fields outside the searched dimensions are dropped (the remedy may still be partly useful);
        None when nothing of the delta can be expressed, or it changes nothing. Every dimension the
        remedy turns on and does not set gets its default choice (`remedy_default`): a param left out
        would be sampled by Optuna, so the trial would measure something else than the remedy (a
        sampled K-by-batch schedule once made a remedy the duplicate of another trial)."""
        params = dict(start)
        changed = False
        searched = {d.name: d for d in self.dimensions}
        for fld, value in delta.items():
            if fld == "speculative_config":
                if SPEC_METHOD not in searched:
                    continue
                spec = value.model_dump() if hasattr(value, "model_dump") else dict(value or {})
                method = spec.get("method")
                params[SPEC_METHOD] = _snap(searched[SPEC_METHOD], method)
                for name, key in ((SPEC_TOKENS, "num_speculative_tokens"), (LOOKUP_MIN, LOOKUP_MIN),
                                  (LOOKUP_MAX, LOOKUP_MAX)):
                    dim = searched.get(name)
                    if dim is not None and dim.active(params[SPEC_METHOD]) and spec.get(key) is not None:
                        params[name] = _snap(dim, spec[key])
                    elif dim is None or not dim.active(params[SPEC_METHOD]):
                        params.pop(name, None)
                if params[SPEC_METHOD] is None:
                    params.pop(SPEC_MAX_BATCH, None)
                for dim in self.dimensions:
                    if dim.requires == SPEC_METHOD and dim.active(params[SPEC_METHOD]) and dim.name not in params:
                        params[dim.name] = remedy_default(dim)
                changed = changed or params != dict(start)
                continue
            if fld == "env" and KV_GIB in searched and self.platform.kv_cache_env:
                gib = platforms.kv_cache_gib(self.platform, dict(value or {}), None)
                if gib is not None and params.get(KV_GIB) != (snapped := _snap(searched[KV_GIB], gib)):
                    params[KV_GIB], changed = snapped, True
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
        gib = platforms.kv_cache_gib(self.platform, dict(config.env), config.kv_cache_memory_bytes)
        if self.kv_cache_max_gib is not None and gib is not None and gib > self.kv_cache_max_gib:
            return f"a KV cache of {gib:g} GiB is above the ceiling of {self.kv_cache_max_gib} GiB"
        seqs = config.max_num_seqs or default_max_num_seqs(self.platform, config)
        try:
            validate_combination(config, effective_max_model_len=self.model_max_len, effective_max_num_seqs=seqs)
        except ConfigError as exc:
            return str(exc)
        return _schedule_changes_nothing(config, seqs)

    def describe(self) -> list[dict[str, Any]]:
        """The space as rows (for docs, `--json` and the report)."""
        rows = [{"name": d.name, "flag": self._flag(d), "kind": d.kind, "choices": list(d.choices),
                 "requires": d.requires, "help": d.help} for d in self.dimensions]
        rows += [{"name": n, "flag": self._flag(self.dimension(n)), "fixed": v} for n, v in self.fixed.items()]
        return rows

    def _flag(self, d: Dimension) -> str:
        if d.name == KV_GIB and self.platform.kv_cache_env:
            return self.platform.kv_cache_env
        return FLAG_BY_FIELD[d.field].flag


def remedy_default(dim: Dimension) -> Choice:
    """The choice a remedy that turns `dim` on without naming it runs with: vLLM's default where the
    space offers it, else the value `SearchSpace.config_for` fills in (the n-gram window measured on
    the real model, K's first choice)."""
    if DEFAULT in dim.choices:
        return DEFAULT
    if dim.name in NGRAM_WINDOW:
        return _snap(dim, NGRAM_WINDOW[dim.name])
    return dim.choices[0]


def draft_schedule(k: int, max_batch: int) -> list[tuple[int, int, int]]:
    """vLLM's `num_speculative_tokens_per_batch_size` for "K up to `max_batch` requests per step, none
    above": the last range carries its K on to max_num_seqs (vLLM's lookup), so K=0 there."""
    return [(1, max_batch, k), (max_batch + 1, max_batch + 1, 0)]


def _schedule_changes_nothing(config: VllmConfig, max_num_seqs: int | None) -> str | None:
    """Why a K-by-batch-size schedule is the same server as none (K at every batch size this server
    can run: e.g. K up to 8 requests per step with max_num_seqs 4), or None. Such a trial would only
    measure the config without the schedule again: a wasted trial. vLLM's lookup
    (`build_dynamic_sd_schedule_lookup`) carries a range's K on until the next range starts."""
    spec = config.speculative_config
    schedule = spec.num_speculative_tokens_per_batch_size if spec is not None else None
    if not schedule or not max_num_seqs:
        return None
    k = spec.num_speculative_tokens  # type: ignore[union-attr]
    ranges = sorted(schedule)
    for batch in range(1, max_num_seqs + 1):
        current = [r for r in ranges if r[0] <= batch]
        if current and min(current[-1][2], k) != k:
            return None
    return (f"its draft schedule {[list(r) for r in ranges]} drafts K={k} at every batch size up to max_num_seqs "
            f"{max_num_seqs}: the same server as no schedule (not launched)")


def default_max_num_seqs(plat: platforms.Platform, config: VllmConfig) -> int | None:
    """vLLM's batch limit when the config sets none (GPU: the smallest-GPU default, 256)."""
    if plat.backend == "none":
        return None
    return platforms.batch_defaults(plat.backend, config.tensor_parallel_size)[0]


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

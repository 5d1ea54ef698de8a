"""The one place where a vLLM launch configuration becomes a command line.

`VllmConfig` is the typed object everything else (tuner, sidecar, CLI, tests) passes around. Only the
fields declared here can reach vLLM; each maps to exactly one flag in `FLAGS`. Values are typed and
strings are checked against a conservative pattern, and the command is an argument vector (no shell),
so a config file can never inject a command.

`validate_combination` refuses the flag combinations vLLM is known to reject, before anything is
launched, with a message that says which rule was broken.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slotune.errors import ConfigError, validation_message

# A value that may appear on a command line: paths, model ids, dtype names. No spaces, quotes, `;`,
# `|`, `&`, `$`, backticks or redirections; argv needs no quoting, but the printed `vllm serve` line
# must paste safely too.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@+=-]+$")

# Environment variables a config may set for the server process. Everything else is refused.
ALLOWED_ENV = frozenset(
    {
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_CPU_OMP_THREADS_BIND",
        "VLLM_CPU_NUM_OF_RESERVED_CPU",
        "CUDA_VISIBLE_DEVICES",
        "VLLM_LOGGING_LEVEL",
        "OMP_NUM_THREADS",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    }
)

SPEC_METHODS = ("ngram", "draft_model", "eagle", "eagle3", "medusa", "mlp_speculator", "suffix")
# The longest n-gram window slotune passes to vLLM (prompt_lookup_min/max); a longer one finds no
# more drafts in real prompts and only costs lookup time.
NGRAM_LOOKUP_MAX = 64
# Counts and token budgets are C ints inside vLLM (int32 tensors, scheduler arithmetic); a JSON 1e20 or a
# 23-digit --fix must be refused here, not overflow in vLLM or in a BIGINT column.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Flag:
    """One vLLM flag slotune may set: the config field, the CLI flag, and how the value is written."""

    field: str
    flag: str
    kind: Literal["int", "float", "str", "bool", "json"]
    tunable: bool = False
    help: str = ""


# The allow-list: the flags slotune tunes, and the few it needs to run a server at all.
FLAGS: tuple[Flag, ...] = (
    Flag("served_model_name", "--served-model-name", "str"),
    Flag("dtype", "--dtype", "str"),
    Flag("seed", "--seed", "int"),
    Flag("max_num_seqs", "--max-num-seqs", "int", True, "concurrent sequences per batch"),
    Flag("max_num_batched_tokens", "--max-num-batched-tokens", "int", True, "token budget per engine step"),
    Flag("max_model_len", "--max-model-len", "int", True, "longest prompt + output"),
    Flag("enable_chunked_prefill", "--enable-chunked-prefill", "bool", True, "split long prefills"),
    Flag("enable_prefix_caching", "--enable-prefix-caching", "bool", True, "reuse KV of shared prefixes"),
    Flag("quantization", "--quantization", "str", True, "weight quantization method"),
    Flag("kv_cache_dtype", "--kv-cache-dtype", "str", True, "KV-cache element type"),
    Flag("speculative_config", "--speculative-config", "json", True, "speculative decoding"),
    Flag("long_prefill_token_threshold", "--long-prefill-token-threshold", "int", True),
    Flag("gpu_memory_utilization", "--gpu-memory-utilization", "float", False, "GPU memory share"),
    # GPU only (the CPU build sizes its cache from VLLM_CPU_KVCACHE_SPACE and ignores it).
    Flag("kv_cache_memory_bytes", "--kv-cache-memory-bytes", "int", True, "KV-cache size in bytes (GPU)"),
    Flag("num_gpu_blocks_override", "--num-gpu-blocks-override", "int", False, "KV blocks (testing)"),
    Flag("block_size", "--block-size", "int"),
    Flag("enforce_eager", "--enforce-eager", "bool"),
    Flag("optimization_level", "--optimization-level", "int"),
    Flag("tensor_parallel_size", "--tensor-parallel-size", "int"),
    Flag("max_logprobs", "--max-logprobs", "int"),
    Flag("custom_histogram_buckets", "--custom-histogram-buckets", "json", False,
         "histogram bucket bounds per family (slotune adds the SLO thresholds)"),
)
FLAG_BY_FIELD = {f.field: f for f in FLAGS}
TUNABLE_FIELDS = tuple(f.field for f in FLAGS if f.tunable)
# What a running server is, where it listens and what it runs with: set by whoever started it, never
# changed by a proposal or an applied recommendation (those change tuning flags only).
FIXED_FIELDS = ("model", "served_model_name", "host", "port", "env")


def fixed_changes(base: VllmConfig | None, proposed: dict[str, Any]) -> list[str]:
    """The fields of `FIXED_FIELDS` that `proposed` (a delta or a whole config, as a mapping) sets to
    something other than `base` has; with no base, every fixed field it names."""
    current = base.model_dump(mode="json") if base is not None else {}
    bad = [k for k in FIXED_FIELDS if k in proposed and (base is None or proposed[k] != current.get(k))]
    # A draft model is a path on the server like `model`: a proposal may switch drafting off, or change
    # K or the n-gram window, but not point vLLM at other weights.
    spec = proposed.get("speculative_config")
    if isinstance(spec, dict) and spec.get("model") is not None:
        had = (current.get("speculative_config") or {}).get("model")
        if spec["model"] != had:
            bad.append("speculative_config.model")
    return bad


def check_tuning_only(base: VllmConfig | None, proposed: dict[str, Any], *, source: str) -> None:
    """ConfigError (one line) when `proposed` would change an identity, network or environment field."""
    bad = fixed_changes(base, proposed)
    if bad:
        raise ConfigError(f"{source}: may change tuning flags only, not {', '.join(bad)} (model, served name, "
                          "host, port, environment and draft model stay as the server was started)")


class SpeculativeConfig(BaseModel):
    """`--speculative-config`, limited to the keys slotune sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    num_speculative_tokens: int = Field(ge=1, le=16)
    model: str | None = None
    prompt_lookup_max: int | None = Field(default=None, ge=1, le=NGRAM_LOOKUP_MAX)
    prompt_lookup_min: int | None = Field(default=None, ge=1, le=NGRAM_LOOKUP_MAX)
    # vLLM 0.32: K by batch size, `[start, end, K]` with inclusive ranges; the scheduler looks up K for
    # each step's number of scheduled requests (vllm/v1/core/sched/scheduler.py), carrying the last
    # K past the final range.
    num_speculative_tokens_per_batch_size: list[tuple[int, int, int]] | None = None

    @field_validator("num_speculative_tokens_per_batch_size")
    @classmethod
    def _schedule(cls, v: list[tuple[int, int, int]] | None) -> list[tuple[int, int, int]] | None:
        """vLLM's own checks (`validate_and_normalize_dynamic_sd_schedule`), made at config time."""
        if v is None:
            return v
        if not v:
            raise ValueError("num_speculative_tokens_per_batch_size must not be empty")
        previous_end = 0
        for start, end, k in sorted(v):
            if start < 1 or end < start:
                raise ValueError(f"batch-size range ({start}, {end}) must be positive with start <= end")
            if k < 0:
                raise ValueError(f"K {k} for batch sizes {start}-{end} must be >= 0")
            if start <= previous_end:
                raise ValueError("batch-size ranges must not overlap")
            previous_end = end
        if min(v)[0] != 1:
            raise ValueError("the first batch-size range must start at 1 (every batch size needs a K)")
        return sorted(v)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in SPEC_METHODS:
            raise ValueError(f"unknown speculative method {v!r} (known: {', '.join(SPEC_METHODS)})")
        return v

    @field_validator("model")
    @classmethod
    def _safe_model(cls, v: str | None) -> str | None:
        return _safe(v)


def _safe(v: str | None) -> str | None:
    """A value that becomes one command-line argument: safe characters, and no leading `-` (vLLM's
    argument parser would read `--trust-remote-code` given as a model name as that flag)."""
    if v == "":
        raise ValueError("is empty")
    if v is not None and not _SAFE_VALUE.match(v):
        bad = "".join(sorted({c for c in v if not _SAFE_VALUE.match(c)}))
        raise ValueError(f"value {v!r} has characters not allowed on a command line ({bad!r}; the printed "
                         "`vllm serve` line must paste unquoted: letters, digits and _./:@+=- only; "
                         "for a path with a space, use a symlink without one)")
    if v is not None and v.startswith("-"):
        raise ValueError(f"value {v!r} starts with '-' and would be read as a flag")
    return v


class VllmConfig(BaseModel):
    """A vLLM server launch: model, the tunable flags, and where/how to run it.

    `None` means "leave vLLM's default", so the baseline config is simply `VllmConfig(model=...)`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535, description="None picks a free port")

    served_model_name: str | None = None
    dtype: str | None = None
    seed: int | None = None
    max_num_seqs: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_model_len: int | None = Field(default=None, ge=16, le=INT32_MAX)
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    speculative_config: SpeculativeConfig | None = None
    long_prefill_token_threshold: int | None = Field(default=None, ge=0, le=INT32_MAX)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1, le=INT64_MAX)
    num_gpu_blocks_override: int | None = Field(default=None, ge=1, le=INT32_MAX)
    block_size: int | None = Field(default=None, ge=1, le=INT32_MAX)
    enforce_eager: bool | None = None
    optimization_level: int | None = Field(default=None, ge=0, le=3)
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_logprobs: int | None = Field(default=None, ge=0, le=INT32_MAX)
    # vLLM 0.32: bucket family -> strictly increasing, positive, finite bounds (slotune.slo_buckets).
    custom_histogram_buckets: dict[str, list[float]] | None = None

    env: dict[str, str] = Field(default_factory=dict, description="environment for the server process")

    @field_validator("model", "served_model_name", "dtype", "quantization", "kv_cache_dtype")
    @classmethod
    def _safe_strings(cls, v: str | None) -> str | None:
        return _safe(v)

    @field_validator("custom_histogram_buckets")
    @classmethod
    def _buckets(cls, v: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
        if v is None:
            return v
        for family, bounds in v.items():
            if not re.match(r"^[a-z_]+$", family):
                raise ValueError(f"bucket family {family!r} is not a family name (e.g. time_to_first_token)")
            if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds):
                raise ValueError(f"custom_histogram_buckets[{family!r}]: bounds must be finite and > 0")
            if any(a >= b for a, b in itertools.pairwise(bounds)):
                raise ValueError(f"custom_histogram_buckets[{family!r}]: bounds must be strictly increasing")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9.:][A-Za-z0-9.:-]*$", v):
            raise ValueError(f"host {v!r} is not a host name or address")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if key not in ALLOWED_ENV:
                raise ValueError(f"environment variable {key!r} is not allowed (allowed: {sorted(ALLOWED_ENV)})")
            if not _SAFE_VALUE.match(str(value)):  # an environment value, not an argument: "-1" is fine
                raise ValueError(f"value {value!r} of {key} has characters not allowed")
        return v

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> VllmConfig:
        """Validate user data (a config file, an API body) with a one-line error on failure."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_first_error(exc)}") from None

    def with_changes(self, **changes: Any) -> VllmConfig:
        """A copy with some fields changed, validated like user input."""
        data = self.model_dump(exclude_none=False)
        data.update(changes)
        return VllmConfig.from_mapping(data, source="config change")

    def flags(self) -> dict[str, Any]:
        """The allow-listed flags that are set (not None), by field name."""
        return {f.field: getattr(self, f.field) for f in FLAGS if getattr(self, f.field) is not None}

    def tuned_params(self) -> dict[str, Any]:
        """The tunable flags that are set: what distinguishes this config from vLLM's default."""
        return {k: v for k, v in self.flags().items() if FLAG_BY_FIELD[k].tunable}

    # -- the one place a config becomes a command line -------------------------------------------

    def flag_args(self) -> list[str]:
        """The flags after the model, as an argument vector."""
        args: list[str] = []
        for f in FLAGS:
            value = getattr(self, f.field)
            if value is None:
                continue
            if f.kind == "bool":
                args.append(f.flag if value else "--no-" + f.flag[2:])
            elif f.kind == "json":
                data = value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value
                args += [f.flag, json.dumps(data, separators=(",", ":"))]
            else:
                args += [f.flag, str(value)]
        return args

    def launch_argv(self, port: int) -> list[str]:
        """What slotune executes: vLLM's OpenAI server module under this Python."""
        # `python -m` rather than the `vllm` console script: the CPU distribution (`vllm-cpu`) ships a
        # script that fails to find its own distribution.
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--host",
            self.host,
            "--port",
            str(port),
            *self.flag_args(),
        ]

    def serve_command(self) -> str:
        """The `vllm serve` line a user would paste to run this config."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        where = (["--host", self.host] if self.host != "127.0.0.1" else []) + (
            ["--port", str(self.port)] if self.port else []
        )
        argv = ["vllm", "serve", self.model, *where, *self.flag_args()]
        line = " ".join(shlex.quote(a) for a in argv)
        return f"{env} {line}" if env else line

    def flag_file(self) -> str:
        """A YAML flag file for `vllm serve --config FILE` (vLLM's own config-file format)."""
        import yaml

        data: dict[str, Any] = {"model": self.model}
        for field, value in self.flags().items():
            key = FLAG_BY_FIELD[field].flag[2:]
            data[key] = value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value
        # vLLM reads its environment, not this file, for these: a comment says what to export.
        env = "".join(f"# export {k}={v}  (an environment variable: not read from this file)\n"
                      for k, v in sorted(self.env.items()))
        return env + yaml.safe_dump(data, sort_keys=False)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(VllmConfig.model_fields))
        return f"unknown flag {'.'.join(map(str, err['loc']))!r} (allowed: {allowed})"
    return validation_message(exc.errors())


# -- every flag `vllm serve` knows -----------------------------------------------------------------


@dataclass(frozen=True)
class ServeFlag:
    """One option of `vllm serve` as vLLM's own parser declares it (slotune/vllm_serve_flags.json)."""

    names: tuple[str, ...]  # the long name first, then `--no-` forms and short aliases (`-tp`)
    value: str | int  # words that follow: none, one, optional (0-1), many (1+), any (0+), or a count
    type: str | None = None  # human_readable_int(_or_auto): `32k` and `1K` are numbers too

    @property
    def name(self) -> str:
        """The long name (`--tensor-parallel-size`; vLLM lists `-h` before `--help`)."""
        return next((n for n in self.names if n.startswith("--")), self.names[0])

    def negates(self, name: str) -> bool:
        """`name` is this switch's `--no-` form (BooleanOptionalAction)."""
        return name != self.name and name == "--no-" + self.name[2:]


@lru_cache(maxsize=1)
def serve_flags() -> dict[str, ServeFlag]:
    """Every name `vllm serve` accepts (long names, `--no-` forms, short aliases) → its flag. Read from
    the data file generated from vLLM's parser (tests/support/vllm_flags.py), so what slotune accepts in
    a serve line is what vLLM accepts, not a hand-written list."""
    from importlib.resources import files

    data = json.loads(files("slotune").joinpath("vllm_serve_flags.json").read_text(encoding="utf-8"))
    out: dict[str, ServeFlag] = {}
    for entry in data["flags"]:
        flag = ServeFlag(tuple(entry["names"]), entry["value"], entry.get("type"))
        out.update(dict.fromkeys(flag.names, flag))
    return out


_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")


def human_readable_int(text: str) -> int:
    """vLLM's reading of a token count or byte size (vllm/utils/argparse_utils.py): `25.6k` = 25600
    (k m g t: powers of 1000), `1K` = 1024 (K M G T: powers of 1024, whole numbers only), else an int.
    ValueError for anything else."""
    m = _HUMAN_INT.fullmatch(text.strip())
    if not m:
        return int(text)
    number, suffix = m.groups()
    if suffix.islower():
        return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
    return int(number) * 1024 ** ("KMGT".index(suffix) + 1)


# -- combinations vLLM rejects --------------------------------------------------------------------


def validate_combination(cfg: VllmConfig, *, effective_max_model_len: int | None = None,
                         effective_max_num_seqs: int | None = None) -> None:
    """Raise ConfigError for flag combinations vLLM refuses at start-up.

    `effective_max_model_len` is the model's context length when `max_model_len` is unset (vLLM then
    uses the model's own), so the chunked-prefill rule can be checked for the baseline too;
    `effective_max_num_seqs` likewise is vLLM's default batch limit on the platform when
    `max_num_seqs` is unset (a 128-token budget is refused next to a default of 256 sequences).
    The rules are vLLM 0.32's `SchedulerConfig.verify_max_model_len` and the speculative config's.
    """
    seqs, budget = cfg.max_num_seqs or effective_max_num_seqs, cfg.max_num_batched_tokens
    max_len = cfg.max_model_len or effective_max_model_len
    if seqs is not None and budget is not None and budget < seqs:
        which = "max_num_seqs" if cfg.max_num_seqs else "vLLM's default max_num_seqs on this platform"
        raise ConfigError(
            f"max_num_batched_tokens ({budget}) must be >= {which} ({seqs}): "
            "every running sequence needs at least one token per step"
        )
    if cfg.enable_chunked_prefill is False and budget is not None and max_len is not None and budget < max_len:
        raise ConfigError(
            f"max_num_batched_tokens ({budget}) is smaller than max_model_len ({max_len}) with chunked "
            "prefill disabled: the longest prompt could never be scheduled; enable chunked prefill or "
            "raise max_num_batched_tokens"
        )
    spec = cfg.speculative_config
    if spec is not None:
        if spec.method == "ngram" and spec.model is not None:
            raise ConfigError("speculative method 'ngram' takes no draft model")
        if spec.method in ("draft_model", "eagle", "eagle3", "medusa", "mlp_speculator") and spec.model is None:
            raise ConfigError(f"speculative method {spec.method!r} needs a draft model")
        if (
            spec.prompt_lookup_min is not None
            and spec.prompt_lookup_max is not None
            and spec.prompt_lookup_min > spec.prompt_lookup_max
        ):
            raise ConfigError(
                f"prompt_lookup_min ({spec.prompt_lookup_min}) must be <= prompt_lookup_max ({spec.prompt_lookup_max})"
            )
        if spec.method != "ngram" and (spec.prompt_lookup_min is not None or spec.prompt_lookup_max is not None):
            raise ConfigError(f"prompt_lookup_min/max are n-gram settings; method {spec.method!r} takes none")
        over = [k for _s, _e, k in spec.num_speculative_tokens_per_batch_size or () if k > spec.num_speculative_tokens]
        if over:
            raise ConfigError(
                f"num_speculative_tokens_per_batch_size asks for K={over[0]} above num_speculative_tokens "
                f"({spec.num_speculative_tokens}); vLLM would silently cap it"
            )

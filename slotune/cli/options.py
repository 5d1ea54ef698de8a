"""Options several commands share, and how they turn into validated models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from slotune.errors import ConfigError
from slotune.files import load_yaml_mapping
from slotune.vllm_config import VllmConfig


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, with one-line errors naming the file."""
    return load_yaml_mapping(path, expected="a mapping of flag names to values")


F = TypeVar("F", bound=Callable[..., Any])
WORKLOAD_HELP = ("built-in (chat, long-context, mixed-tail, shared-prefix, sharegpt, edit, long-prompt), a "
                 "workload YAML file, or a .jsonl file of prompts (vllm bench serve's custom format, sent as chat)")


def finite_option(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback: `inf`/`nan` pass click's FloatRange (NaN compares false) but no request can carry them."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


def slo_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for every `--slo SPEC`: the spec is parsed when the command line is read, so a bad
    or empty one (`--slo ''` would check nothing, or silently fall back to the default) is one
    `error: --slo: ...` line (exit 1, as a bad spec always was) before any work starts. The text itself
    is passed on."""
    if value is None:
        return None
    from slotune.slo import SloSpec

    try:
        SloSpec.parse(value)
    except ConfigError as exc:
        raise ConfigError(f"--slo: {exc}") from None
    return value


def http_url_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for a server's base URL (`--grafana-url`): http(s), a host, a port that is a
    number; else one usage error ("expected http://HOST:PORT") instead of the HTTP client's own."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}; expected http://HOST:PORT", param=param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r}: expected http://HOST:PORT", param=param)
    return value


# How a `--model` value says it is a path on disk rather than a Hugging Face id (`org/name`).
MODEL_PATH_PREFIXES = ("/", "./", "../", "~")
# What makes a directory a model vLLM can load: a Hugging Face config, or Mistral's own format.
MODEL_CONFIG_FILES = ("config.json", "params.json")


def model_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for every `--model` slotune launches vLLM with: a model given as a path (absolute,
    `./`, `../`, `~`) that is not on disk is one `error: --model PATH: ...` line (exit 1) when the command
    line is read. vLLM would take it for a repo id and die at start-up ("Repo id must be in the form"),
    every trial infeasible. A value that exists on disk passes (`~` expanded: vLLM does not expand it);
    anything else, a Hugging Face id such as `org/name`, passes unchecked (it may be cached or downloaded).
    A directory with no `config.json` (or Mistral's `params.json`) is refused the same way: no vLLM loads it."""
    if value is None:
        return None
    what = param.opts[0] if isinstance(param, click.Option) else "model"
    if not value.strip():
        raise ConfigError(f"{what} is empty: give a model directory or a Hugging Face id ORG/NAME")
    return checked_model(value, what)


def checked_model(value: str, what: str) -> str:
    """`value` with `~` expanded when it is on disk, unchanged when it reads as a Hugging Face id;
    ConfigError `{what} {value}: no such file or directory ...` when it is path-shaped and missing,
    `... not a model directory ...` when it is a directory without a model config."""
    import os

    expanded = os.path.expanduser(value)
    if os.path.isdir(expanded) and not any(os.path.isfile(os.path.join(expanded, f)) for f in MODEL_CONFIG_FILES):
        # vLLM would die at every start-up (the defaults' included) with a truncated pydantic reason.
        raise ConfigError(f"{what} {value}: not a model directory (no {' or '.join(MODEL_CONFIG_FILES)} file in it)")
    if os.path.exists(expanded):
        return expanded
    if value in (".", "..") or value.startswith(MODEL_PATH_PREFIXES):
        raise ConfigError(f"{what} {value}: no such file or directory (a local model must exist; "
                          "a Hugging Face model id is written ORG/NAME)")
    return value


def storage_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for `--storage URL`: a URL SQLAlchemy cannot read, or whose dialect or driver is not
    installed (`bogus://x`, a bare file path), is one `error:` line when the command line is read, before
    anything is printed. Nothing is connected or created (an unreachable server is found when opened)."""
    if value is None:
        return None
    from sqlalchemy.engine import make_url

    from slotune.store import check_url

    check_url(value)
    url = make_url(value)
    if url.get_backend_name() != "sqlite":
        return value
    if url.database in (None, "", ":memory:"):
        # Each thread of a study (Optuna's heartbeat, the early-stop check) gets its own connection,
        # and an in-memory SQLite database is per connection: each would see an empty one.
        raise ConfigError(f"--storage {value}: an in-memory SQLite database cannot hold a study; "
                          "give a file (sqlite:///PATH) or a PostgreSQL URL")
    folder = Path(url.database).expanduser().parent
    if not folder.is_dir():
        raise ConfigError(f"--storage {value}: no directory {folder} to hold the database file")
    return value


def sampling_options(f: F) -> F:
    """`--temperature` and `--top-p` (as `vllm bench serve`): override the workload's sampling."""
    f = click.option("--top-p", "top_p", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
                     callback=finite_option,
                     metavar="P", help="nucleus sampling for every request (default: the workload's)")(f)
    return click.option("--temperature", type=click.FloatRange(min=0), default=None, metavar="T",
                        callback=finite_option,
                        help="sampling temperature for every request; 0 is greedy (default: the workload's; "
                             "a workload without one gets the server's default, 1.0 in vLLM)")(f)


def vllm_config_from(model: str | None, config_file: Path | None, overrides: dict[str, Any]) -> VllmConfig:
    """Merge a config file (VllmConfig fields; `-` or `_` spellings), then flags given on the CLI."""
    data: dict[str, Any] = {}
    source = "command line"
    if config_file is not None:
        data = {k.replace("-", "_"): v for k, v in load_yaml(config_file).items()}
        source = str(config_file)
    if model is not None:
        data["model"] = model
    data.update({k: v for k, v in overrides.items() if v is not None})
    if "model" not in data:
        raise ConfigError("no model given: pass --model DIR or set 'model' in the config file")
    if model is None and isinstance(data["model"], str) and data["model"]:  # --model was checked by its option
        data["model"] = checked_model(data["model"], f"{source}: model")
    return VllmConfig.from_mapping(data, source=source)


def writable_dir_option(_ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Click callback: an output directory is created and tried now, not after the long work. `~` is
    expanded (`--out=~/x` reaches us unexpanded by the shell: a folder named `~` was made)."""
    from slotune.files import writable_dir

    if value is None:
        return None
    return writable_dir(value.expanduser(), what=param.opts[0] if isinstance(param, click.Option) else "")


def writable_file_option(_ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Click callback: an output file's directory is created and tried now (`-` is stdout; `~` is
    expanded)."""
    from slotune.files import writable_file

    if value is None:
        return None
    return writable_file(value.expanduser(), what=param.opts[0] if isinstance(param, click.Option) else "")

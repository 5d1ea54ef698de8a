"""Reading user files and text as data: the one place where an unreadable file, bytes that are not
UTF-8, bad YAML, bad or too deeply nested JSON turn into a `ConfigError` naming the source.

Every command that reads a YAML or JSON file (configs, space files, workloads, playbooks, settings,
snapshots) goes through here, so a new reader cannot forget a kind of bad input.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from slotune.errors import ConfigError


def read_text(path: Path | str, *, what: str = "", max_bytes: int | None = None) -> str:
    """A file's text (UTF-8). Raises `ConfigError` when it cannot be read, is over `max_bytes` or is
    not UTF-8 (shape: `PATH: cannot read (reason)` / `PATH: not UTF-8 text (byte N)`)."""
    label = f"{what} {path}".strip()
    try:
        with Path(path).open("rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ConfigError(f"{label}: over the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text (byte {exc.start})") from None


def parse_yaml(text: str, source: str) -> Any:
    """YAML text → Python data. Raises `ConfigError("SOURCE: not valid YAML at line N")`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def _not_a_json_number(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, source: str) -> Any:
    """JSON text → Python data. Raises `ConfigError` for bad JSON (`NaN` and `Infinity` included: RFC 8259
    has no such numbers, and a figure that is one would pass every threshold check) or nesting too deep."""
    try:
        return json.loads(text, parse_constant=_not_a_json_number)
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            raise ConfigError(f"{source}: {exc}") from None
        raise ConfigError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ConfigError(f"{source}: JSON nested too deeply") from None


def to_json(data: Any, **kwargs: Any) -> str:
    """`json.dumps` for what slotune prints or writes: a figure that is not finite (a sum of huge counters
    that overflowed, say) becomes `null` ("unknown"), so the output is always RFC 8259 JSON."""
    return json.dumps(_finite(data), allow_nan=False, **kwargs)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def load_yaml(path: Path | str, *, what: str = "", max_bytes: int | None = None) -> Any:
    """A YAML (or JSON) file's data; see `read_text` and `parse_yaml` for the errors."""
    return parse_yaml(read_text(path, what=what, max_bytes=max_bytes), f"{what} {path}".strip())


def load_yaml_mapping(path: Path | str, *, what: str = "", expected: str = "a mapping") -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: `{}`). Raises `ConfigError` otherwise."""
    data = load_yaml(path, what=what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{f'{what} {path}'.strip()}: expected {expected}")
    return data


def writable_dir(path: Path | str, *, what: str = "") -> Path:
    """Make sure files can be written in directory `path` (created with its parents if missing), before any
    long work. Raises `ConfigError("WHAT PATH: cannot create (reason)" / "... not writable (reason)")`."""
    import errno
    import tempfile

    out = Path(path)
    label = f"{what} {out}".strip()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{label}: exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot create ({exc.strerror or exc})") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        # ENOENT on a directory that exists: a pseudo-filesystem (/proc, /sys) that takes no new files.
        why = "takes no new files" if exc.errno == errno.ENOENT else (exc.strerror or str(exc))
        raise ConfigError(f"{label}: not writable ({why})") from None
    return out


def writable_file(path: Path | str, *, what: str = "") -> Path:
    """Make sure file `path` can be written (its directory created if missing; an existing file must be
    writable), without creating the file. `-` (stdout) passes. Raises `ConfigError` naming the path."""
    import os

    out = Path(path)
    if str(out) == "-":
        return out
    label = f"{what} {out}".strip()
    if out.is_dir():
        raise ConfigError(f"{label}: is a directory")
    writable_dir(out.parent, what=f"{label}: directory")
    if out.exists() and not os.access(out, os.W_OK):
        raise ConfigError(f"{label}: not writable")
    return out


def write_output(path: Path, text: str) -> None:
    """`text` into file `path` (its directory created), or onto stdout when `path` is `-`, as every
    output option takes it. Raises `ConfigError("PATH: cannot write (reason)")`."""
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror or exc})") from None

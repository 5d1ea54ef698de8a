"""slotune's own error types. The CLI prints these as one line; the API maps them to 4xx."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import Any


class SlotuneError(Exception):
    """Base class: an expected failure with a message fit for a user."""


class ConfigError(SlotuneError):
    """Bad user input: a flag, a spec, a config file."""


class StoreError(SlotuneError):
    """The database could not be reached or written."""


class RefusedValueError(StoreError):
    """The database refused a value the caller sent (a NUL byte, a number out of its column's range):
    the caller's fault, so the API answers 4xx, not 503."""


class TargetError(SlotuneError):
    """A target server could not be reached or answered garbage."""


class NoStatsError(TargetError):
    """The target answered its /metrics, but the page carries none of vLLM's stats (the message names
    the known cause: `--disable-log-stats`, `--api-server-count` above 1, an engine before its first
    request, or not a vLLM page). The server is up; there is only nothing to measure."""


def validation_message(errors: Sequence[Mapping[str, Any]], *, limit: int = 1, skip: Container[str] = (),
                       top_level: str | None = "(top level)") -> str:
    """pydantic's errors (`exc.errors()`) as one line for a user: `where: what` for the first `limit`,
    then how many more. Location parts in `skip` (a tagged union's tag) and pydantic's
    `function-...` wrappers are left out: they name our validators, not the user's input. An error
    of the whole object is placed at `top_level` (a file's reader looks for it), or stands alone
    with None (a command line has no top level: the message names the options)."""
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if str(p) not in skip and not str(p).startswith("function-"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = loc or top_level
        parts.append(f"{where}: {msg}" if where else msg)
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def one_line(text: object, limit: int = 160) -> str:
    """A short excerpt of another program's message for a one-line error: HTML tags dropped, the first
    non-empty line, at most `limit` characters (`…` marks a cut). SQLAlchemy's "(Background on this
    error at ...)" and an HTTP error page's 14 lines both become one line."""
    import re

    raw = str(text)
    title = re.search(r"<title[^>]*>(.*?)</title>", raw, re.S | re.I)
    s = re.sub(r"<[^>]*>", " ", raw)
    line = next((ln.strip() for ln in s.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if title and (t := " ".join(title.group(1).split())) and t not in line:
        line = f"{line} {t}".strip()
    return line if len(line) <= limit else line[:limit - 1] + "…"

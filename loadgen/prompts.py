"""Prompt text of a given token length, deterministic for a seed.

Without the served model's tokenizer the text is built from plain English words, which most BPE
tokenizers (and the tiny model's, trained on these very words) encode as about one token each; the
ratio is calibrated once per run against vLLM's `/tokenize` when the server has it. With a local
tokenizer (`Workload.tokenizer`: a model directory or a tokenizer.json) lengths are exact: the text
is encoded, cut to N tokens and decoded. Either way the run reports the prompt tokens the server
counted (`usage`), so totals are exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slotune.errors import ConfigError

# The tiny model's tokenizer corpus (slotune/model.py): one token per word there.
WORDS = (
    "the", "a", "model", "server", "token", "latency", "queue", "cache", "batch", "request", "prompt",
    "output", "first", "time", "throughput", "memory", "speculative", "decode", "prefill", "chunk", "prefix",
    "user", "system", "assistant", "answer", "question", "why", "how", "what", "when", "which", "fast",
    "slow", "long", "short", "high", "low", "goodput", "slo",
)
CALIBRATION_WORDS = 512


def load_tokenizer(path: str) -> Any:
    """A `tokenizers.Tokenizer` from a model directory or a tokenizer.json."""
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"tokenizer {path!r}: no tokenizer.json there")
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers comes with the cpu/gpu extras
        raise ConfigError("a workload tokenizer needs the 'tokenizers' package") from None
    return Tokenizer.from_file(str(file))


def words(rng: np.random.Generator, n: int) -> str:
    idx = rng.integers(0, len(WORDS), size=max(n, 0))
    return " ".join(WORDS[i] for i in idx)


def calibration_text() -> str:
    return words(np.random.default_rng(12345), CALIBRATION_WORDS)


class PromptBuilder:
    """Texts of about (or, with a tokenizer, exactly) N tokens."""

    def __init__(self, tokens_per_word: float = 1.0, tokenizer: Any = None) -> None:
        self.tokens_per_word = tokens_per_word if tokens_per_word > 0 else 1.0
        self.tokenizer = tokenizer

    def text(self, n_tokens: int, rng: np.random.Generator) -> str:
        if n_tokens <= 0:
            return ""
        if self.tokenizer is not None:
            # A little extra text, then cut at exactly n tokens.
            ids = self.tokenizer.encode(words(rng, int(n_tokens / self.tokens_per_word * 1.3) + 8),
                                        add_special_tokens=False).ids
            return self.tokenizer.decode(ids[:n_tokens])
        return words(rng, max(1, round(n_tokens / self.tokens_per_word)))

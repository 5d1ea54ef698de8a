"""Where things are, computed once: the repository, the shared data beside it (`../shared`: real
vLLM /metrics captures, field cases) and the cache of built models."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# /work/wt/shared links to /work/shared, so worktrees find it the same way.
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "vllm-0.32.0-cpu"
FIELD_CASES = SHARED / "field-cases"
CACHE = Path(os.environ.get("SLOTUNE_TEST_CACHE", REPO / ".slotune-test"))


def model_dir(path: Path) -> Path:
    """`path` made a folder that passes slotune's `--model` check (it holds a `config.json`) for a
    test that launches nothing; returns it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n')
    return path

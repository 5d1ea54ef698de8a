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

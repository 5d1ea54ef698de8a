"""`slotune tune`'s options for the new search space: a KV-cache size above the user's ceiling, or
without one, and an n-gram window whose min is above its max, are one `error:` line before any server
starts; so is a prune factor that would stop trials meeting their targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from slotune.cli.main import main

TUNE = ["tune", "--model", "m", "--slo", "ttft_p95<=1s", "--trials", "1", "--input-len", "8", "--output-len", "8",
        "--startup-timeout", "1"]

CASES = {
    "KV size without a ceiling": (["--fix", "kv_cache_gib=2"], "searched only with a KV-cache ceiling"),
    "KV size above the ceiling": (["--kv-cache-max-gib", "4", "--fix", "kv_cache_gib=8"],
                                  "above the KV-cache ceiling of 4 GiB"),
    "no ceiling of 0": (["--kv-cache-max-gib", "0"], "--kv-cache-max-gib"),
    "n-gram window crossed": (["--fix", "prompt_lookup_min=5", "--fix", "prompt_lookup_max=3"], "no n-gram window"),
    "prune factor of 1": (["--prune-at", "1"], "--prune-at"),
    "prune factor of inf": (["--prune-at", "inf"], "must be a finite number"),
    "prune factor of nan": (["--prune-at", "nan"], "must be a finite number"),
    "n-gram window past vLLM's limit": (["--fix", "prompt_lookup_max=100"], "at most 64"),
}


@pytest.mark.parametrize(("args", "expected"), list(CASES.values()), ids=list(CASES))
def test_bad_space_options_are_one_error_line(args: list[str], expected: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    assert main([*TUNE, *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and expected in err[-1], err
    assert not (tmp_path / "data" / "logs").exists()  # refused before any vLLM was started

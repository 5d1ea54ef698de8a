"""Reading back vLLM's client (`slotune.loadgen.vllm_bench`): what its result becomes, without running
it (the run itself: tests/integration/test_real_model.py, against an echo server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slotune.loadgen.vllm_bench import VllmBenchError, VllmBenchResult, custom_dataset_args

RAW = {
    "completed": 3, "failed": 1, "request_goodput": None, "p95_ttft_ms": 12.5, "duration": 2.0,
    "ttfts": [0.1, 0.2, 0.0, 0.3], "latencies": [1.1, 0.2, 0.0, 2.3], "output_lens": [11, 1, 0, 5],
    "input_lens": [8, 8, 8, 8], "start_times": [100.0, 100.5, 101.0, 101.5],
}


def test_per_request_lists_and_the_summary_are_kept_apart() -> None:
    r = VllmBenchResult.from_dict(RAW)
    assert r.completed == 3 and r.ttfts == (0.1, 0.2, 0.0, 0.3) and r.start_times[0] == 100.0
    assert r.summary == {"completed": 3, "failed": 1, "request_goodput": None, "p95_ttft_ms": 12.5, "duration": 2.0}


def test_tpot_is_time_after_the_first_token_per_later_token() -> None:
    tpots = VllmBenchResult.from_dict(RAW).tpots()
    assert tpots[0] == pytest.approx((1.1 - 0.1) / 10) and tpots[3] == pytest.approx((2.3 - 0.3) / 4)
    assert tpots[1] is None and tpots[2] is None  # one output token, and a failed request


def test_lists_of_different_lengths_are_refused_not_truncated() -> None:
    with pytest.raises(ValueError):
        VllmBenchResult.from_dict({**RAW, "output_lens": [11, 1, 0]}).tpots()


def test_a_failed_run_says_its_exit_code_and_the_end_of_its_stderr() -> None:
    err = VllmBenchError(2, "x" * 5000 + "error: unrecognized arguments: --nope")
    assert str(err).startswith("vllm.benchmarks.serve failed (exit 2):\n")
    assert str(err).endswith("--nope") and len(str(err)) < 3100 and err.returncode == 2


def test_a_prompt_file_is_sent_as_it_is_in_file_order() -> None:
    args = custom_dataset_args(Path("/p.jsonl"))
    assert args[:4] == ["--dataset-name", "custom", "--dataset-path", "/p.jsonl"]
    assert {"--skip-chat-template", "--disable-shuffle"} <= set(args)
    # each row's own output_tokens: vLLM's default of 256 would override them
    assert args[args.index("--custom-output-len") + 1] == "-1"

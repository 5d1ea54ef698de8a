"""Time to parse and derive one real vLLM 0.32 /metrics page (the shared captures, ~55 KB),
against prometheus_client's plain parse of the same page as the baseline. Target: < 5 ms per page.

    .venv/bin/python bench/bench_parse.py [--repeat N]

Prints per-page median and p95 (ms) for each step on this host."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from slotune.collectors.exposition import parse
from slotune.collectors.vllm_metrics import derive

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support is not installed: the checkout's
from tests.support.paths import FIXTURES


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    before_text = (FIXTURES / "vllm-0.32-cpu-specdecode-under-load.prom").read_text()
    text = (FIXTURES / "vllm-0.32-cpu-specdecode-after-load.prom").read_text()
    before = parse(before_text, timestamp=1.0)

    cases = {
        "prometheus_client parse (baseline)": lambda: list(text_string_to_metric_families(text)),
        "slotune parse": lambda: parse(text, timestamp=2.0),
        "slotune parse + derive (window)": lambda: derive(before, parse(text, timestamp=2.0), "t"),
        "slotune parse + derive (cumulative)": lambda: derive(None, parse(text, timestamp=2.0), "t"),
    }
    print(f"page: {len(text) / 1024:.1f} KiB, {text.count(chr(10))} lines; {args.repeat} runs each")
    base_med = None
    for name, fn in cases.items():
        ms = timed(fn, args.repeat)
        med, p95 = statistics.median(ms), sorted(ms)[int(0.95 * len(ms)) - 1]
        base_med = base_med or med
        print(f"{name:40s} median {med:6.2f} ms   p95 {p95:6.2f} ms   ({base_med / med:4.1f}x baseline)")


if __name__ == "__main__":
    main()

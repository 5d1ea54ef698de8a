"""The real model's TTFT and TPOT in bf16 and fp32 on the CPU vLLM: which dtype serves the demo's
workload faster on this host. Not a CI test; prints figures with their spread, asserts nothing.

One server per dtype (vLLM on the last core, clients on the others), then `--repeats` rounds of:
a 128-token prompt with exactly 32 tokens out at concurrency 1 (TTFT: the prefill; TPOT: one stream),
and `--demo-requests` of the demo's ShareGPT workload (prompts up to 512 tokens, replies up to 128) at
concurrency 4 (req/s, TTFT and TPOT p50).

    flock /tmp/slotune-vllm.lock .venv/bin/python bench/bench_dtype.py [--repeats 3] [--dtypes bfloat16 float32]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_realmodel import CACHE, NAME, p50, serve, spread, stamp

from slotune.loadgen.runner import run_load
from slotune.loadgen.workload import Workload, load_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--demo-requests", type=int, default=8)
    ap.add_argument("--demo-workload", default=None, help="a workload file (default: the demo's)")
    a = ap.parse_args()

    from slotune.cli.demo import demo_workload_file
    from slotune.smollm2 import build_smollm2

    model = build_smollm2(CACHE / "models" / "smollm2")
    avail = sorted(os.sched_getaffinity(0))
    cpus = (avail[-1],) if len(avail) >= 2 else None
    if cpus:
        os.sched_setaffinity(0, set(avail) - set(cpus))
    work = Path(tempfile.mkdtemp(prefix="bench-dtype-"))
    os.environ.setdefault("SLOTUNE_DATA_DIR", str(work))
    demo_wl = load_workload(a.demo_workload or demo_workload_file("sharegpt")).with_tokenizer(model)
    fixed = dataclasses.replace(Workload.fixed(128, 32), tokenizer=str(model), endpoint="completions")
    print(f"real model {model}; vLLM on {list(cpus) if cpus else 'every core'}; {stamp()}", flush=True)
    for dtype in a.dtypes:
        with serve(model, cpus, work / dtype, dtype=dtype) as srv:
            url = srv.base_url
            run_load(url, NAME, Workload.fixed(64, 8), concurrency=1, num_requests=2, seed=1)  # warm-up
            ttft1, tpot1, thr, ttft4, tpot4 = [], [], [], [], []
            for rep in range(a.repeats):
                d = run_load(url, NAME, fixed, concurrency=1, num_requests=2, seed=100 + rep).to_dict()
                ttft1.append(p50(d, "ttft_seconds"))
                tpot1.append(p50(d, "tpot_seconds"))
                d = run_load(url, NAME, demo_wl, concurrency=4, num_requests=a.demo_requests, seed=200 + rep,
                             request_timeout=600).to_dict()
                thr.append(d["request_throughput"])
                ttft4.append(p50(d, "ttft_seconds"))
                tpot4.append(p50(d, "tpot_seconds"))
                print(f"   {dtype} repeat {rep + 1}: c=1 TTFT {ttft1[-1]:.3f} s TPOT {tpot1[-1] * 1000:.1f} ms; "
                      f"demo c=4 {thr[-1]:.3f} req/s, TTFT p50 {ttft4[-1]:.2f} s, TPOT p50 {tpot4[-1] * 1000:.1f} ms "
                      f"({d['completed']} ok, {d['duration']:.1f} s)", flush=True)
            print(f"FIGURE {dtype} c=1 128-token prompt TTFT p50: {spread(ttft1, 1.0, 's')}", flush=True)
            print(f"FIGURE {dtype} c=1 TPOT p50: {spread(tpot1)}", flush=True)
            print(f"FIGURE {dtype} demo c=4 throughput: {spread(thr, 1.0, 'req/s')}; TTFT p50 {spread(ttft4, 1.0, 's')}; "
                  f"TPOT p50 {spread(tpot4)} ({stamp()})", flush=True)


if __name__ == "__main__":
    main()

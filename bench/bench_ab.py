"""Two vLLM configs measured interleaved on the real model (`make bench-ab`): A, B, A, B, ... in rounds,
so the host's drift falls on both alike. A benchmark that answers one question about a flag with the
noise shown; it asserts nothing.

Each run is one `tuner.measure.ServerMeasure` window (a fresh server, one warm-up request, then
`--requests` at `--concurrency`), the tuner's own measurement. Printed per run: goodput, TPOT p50/p95,
ITL p50/p99, TTFT p95. Then per figure: each side's mean over rounds with its 95 % Student-t
interval, and B - A paired by round with its interval (`tuner.confidence.run_interval`): B differs
from A beyond the noise only where that interval excludes 0. Runs are recorded in `--out` as they
end; a rerun with the same file measures only what is missing.

The default question is the one `playbooks/rules/prefill_stalls_decode.yaml` needed answered: with
long prompts at concurrency 2, does cutting the prefill budget from vLLM's 2,048 tokens to 256 lower
TPOT p95 too, not only ITL's tail?

    flock /tmp/slotune-vllm.lock .venv/bin/python bench/bench_ab.py [--b max_num_batched_tokens=256]
        [--a FLAG=VALUE ...] [--workload YAML] [--slo SPEC] [--concurrency 2] [--requests 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the testing package (tests.support) is not installed: read it from the checkout
from tests.support.paths import CACHE  # noqa: E402  (the built models, $SLOTUNE_TEST_CACHE as in the tests)

# Long real code (600-1,000 tokens asked) and short answers: prefills long enough to stall the decodes.
LONG_SHORT_YAML = """\
name: long-short
description: long real code (600-1000 tokens), short answers
endpoint: chat
prompts: {source: document}
prompt_len: {dist: uniform, min: 600, max: 1000}
output_len: {dist: uniform, min: 32, max: 64}
ignore_eos: true
"""
FIGURES = ("goodput", "tpot_p50", "tpot_p95", "itl_p50", "itl_p99", "ttft_p95")


def flags(pairs: list[str]) -> dict[str, Any]:
    """`["max_num_batched_tokens=256"]` -> `{"max_num_batched_tokens": 256}` (values read as YAML).
    Raises SystemExit with one line for a pair without `=`, a value YAML cannot read, a flag given twice."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or not key:
            raise SystemExit(f"error: {pair!r} is not FLAG=VALUE")
        if key in out:
            raise SystemExit(f"error: {key} is given twice")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SystemExit(f"error: {pair!r}: the value is not YAML ({' '.join(str(exc).split())})") from None
    return out


def configs(model: str, a: list[str], b: list[str]) -> dict[str, Any]:
    """Sides A and B as `VllmConfig`s serving `model`. Raises SystemExit with one line for a flag vLLM's
    config does not have or a value it refuses, and where both sides serve the same server."""
    from pydantic import ValidationError

    from slotune.vllm_config import VllmConfig

    sides = {}
    for side, pairs in (("A", a), ("B", b)):
        try:
            sides[side] = VllmConfig(model=model, **flags(pairs))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise SystemExit(f"error: side {side}: {where}: {first['msg']}") from None
    if sides["A"].serve_command() == sides["B"].serve_command():
        raise SystemExit(f"error: A ({' '.join(a) or 'the defaults'}) and B ({' '.join(b) or 'the defaults'}) "
                         "serve the same server: nothing to compare")
    return sides


def figures(m: Any) -> dict[str, Any]:
    c = m.client

    def q(name: str, stat: str) -> float | None:
        quantiles = getattr(c, name) if c is not None else None
        return getattr(quantiles, stat) if quantiles else None

    return {"ok": m.ok, "goodput": m.goodput, "seconds": m.seconds,
            "tpot_p50": q("tpot", "p50"), "tpot_p95": q("tpot", "p95"), "itl_p50": q("itl", "p50"),
            "itl_p99": q("itl", "p99"), "ttft_p95": q("ttft", "p95"), "findings": [f.playbook for f in m.findings]}


def summary(rows: list[dict[str, Any]], rounds: int) -> None:
    from slotune.tuner.confidence import run_interval

    def fmt(ci: tuple[float, float] | None) -> str:
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[-]"

    by = {(r["round"], r["side"]): r for r in rows}
    print(f"\n{'figure':<9} {'A: mean [95 %]':>26} {'B: mean [95 %]':>26} {'B - A, paired [95 %]':>30}")
    for name in FIGURES:
        a = [by[(i, "A")][name] for i in range(rounds) if (i, "A") in by and by[(i, "A")][name] is not None]
        b = [by[(i, "B")][name] for i in range(rounds) if (i, "B") in by and by[(i, "B")][name] is not None]
        d = [by[(i, "B")][name] - by[(i, "A")][name] for i in range(rounds)
             if (i, "A") in by and (i, "B") in by and None not in (by[(i, "A")][name], by[(i, "B")][name])]
        if not a or not b:
            continue
        diff = run_interval(d)
        beyond = diff is not None and (diff[0] > 0 or diff[1] < 0)
        print(f"{name:<9} {statistics.mean(a):>9.3f} {fmt(run_interval(a)):>16} {statistics.mean(b):>9.3f} "
              f"{fmt(run_interval(b)):>16} {statistics.mean(d) if d else float('nan'):>+9.3f} {fmt(diff):>16}"
              f"  {'beyond the noise' if beyond else 'within the noise'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs="*", default=[], help="side A's flags, FLAG=VALUE (default: vLLM's defaults)")
    p.add_argument("--b", nargs="*", default=["max_num_batched_tokens=256"], help="side B's flags, FLAG=VALUE")
    p.add_argument("--workload", type=Path, default=None, help="a workload YAML (default: long prompts, short answers)")
    p.add_argument("--slo", default="tpot_p95<=150ms")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=CACHE / "bench-ab" / "runs.json")
    a = p.parse_args()

    from slotune.errors import SlotuneError
    from slotune.loadgen.workload import load_workload
    from slotune.slo import SloSpec
    from slotune.smollm2 import build_smollm2
    from slotune.tuner.measure import LoadSpec, ServerMeasure

    configs("model", a.a, a.b)  # bad input fails here, before any file is written or the model built
    try:
        slo = SloSpec.parse(a.slo)
        workload = load_workload(a.workload) if a.workload is not None else None
    except SlotuneError as exc:
        raise SystemExit(f"error: {exc}") from None
    a.out.parent.mkdir(parents=True, exist_ok=True)
    wl = a.workload or a.out.parent / "long-short.yaml"
    if workload is None:
        wl.write_text(LONG_SHORT_YAML)
        workload = load_workload(wl)
    sides = configs(str(build_smollm2(CACHE / "models" / "smollm2")), a.a, a.b)
    for side, cfg in sides.items():
        print(f"{side}: {cfg.serve_command()}", flush=True)
    cores = sorted(os.sched_getaffinity(0))
    server_cpus = (cores[-1],)  # vLLM on the last core, the client on the others (as bench_tune)
    measure = ServerMeasure(LoadSpec(workload=workload, slo=slo, concurrency=a.concurrency,
                                     num_requests=a.requests, warmup_requests=1),
                            log_dir=a.out.parent / "logs", startup_timeout=900, server_cpus=server_cpus)
    key = {"a": a.a, "b": a.b, "workload": wl.read_text(), "slo": a.slo, "concurrency": a.concurrency,
           "requests": a.requests}
    stored = json.loads(a.out.read_text()) if a.out.exists() else {}
    rows = stored.get("rows", []) if stored.get("key") == key else []
    for i in range(a.rounds):
        for side, cfg in sides.items():
            if any(r["round"] == i and r["side"] == side for r in rows):
                continue
            row = {"round": i, "side": side, **figures(measure(cfg, lambda s: None)),
                   "at": time.strftime("%Y-%m-%d %H:%M:%S"), "load": os.getloadavg()[0]}
            rows.append(row)
            a.out.write_text(json.dumps({"key": key, "rows": rows}, indent=1))
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    summary(rows, a.rounds)


if __name__ == "__main__":
    main()

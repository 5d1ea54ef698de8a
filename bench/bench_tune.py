"""Benchmark the tuner (not a CI test; `make bench-tune`). Prints figures; asserts nothing.

One part per figure of issue #16, each run with `--part NAME` (several allowed; default: all, in the
order below). Every unit of work (a study, a re-measured config, a grid config) is recorded in a JSON
results file (`--results`, default `.slotune-test/bench-tune/results.json`) as soon as it ends, so a
part can be run in several short chunks (`--budget-min M`: start no new unit after M minutes) and
resumed where it stopped; `--report` prints the recorded figures without starting anything,
`--fresh PART` forgets a part's record and its stored studies. Sizes are small on purpose: on a
2-core AVX2 host the real model (SmolLM2-135M-Instruct, fp32) decodes one stream at ~100 ms per
output token (docs/loadgen.md: 99 ms [97-104]) and every vLLM start costs ~30-60 s. Hence the
`edit` and `grid` target of `tpot_p95<=60ms`: at 100 ms the defaults would meet or miss it by chance.

- `false-wins` (d): `--fw-studies` (10) short studies on the tiny random-weight model (`slotune model
  tiny`, the tests' `tiny_model`) at low load, where vLLM's defaults already serve every request well
  inside the SLOs: 64+16 tokens at 2 req/s, 20 requests per trial, `ttft_p95<=1s,tpot_p95<=200ms`,
  3 trials (the baseline and two others), the best candidate re-measured in 1 interleaved round;
  seed = study number. Figure: how many recommend a change (target 0).
- `edit` (a): the real model on a short `edit` workload (rename-this-function prompts of 64-160
  tokens, replies capped at 96 tokens, greedy) at concurrency 1, with `tpot_p95<=60ms`, which vLLM's
  defaults miss at one stream. A short study (3 trials, 6 requests each, 1 warm-up; best re-measured
  in 1 round), then vLLM's default and the study's recommended config (its best measured one when it
  recommends none, said so) each served again and measured with `vllm.benchmarks.serve` on the very
  prompts the study measured (the same JSONL, vLLM's `custom` dataset, `runner.prompt_lines`),
  `--bench-repeats` (2) runs each, `--goodput tpot:60`. Figure: both goodputs (median and every run)
  and their ratio (target >= 2x; a default goodput of 0 with a tuned one above 0 counts).
- `early-stop` (e): one study on the tiny model (256+32 tokens at 20 req/s, `--es-requests` per
  trial (2400: a 2-minute window, long against vLLM's ~30 s start-up, as windows are in production),
  `ttft_p95<=300ms,tpot_p95<=20ms`, 6 trials, seed 0, best re-measured in 1 round) run twice: with
  early stopping (each window judged as its requests finish, `SloPruner`, `--prune-at 2`; and the
  study ends after a baseline that leaves nothing to win, `verdict.nothing_to_win`) and without
  (`--no-prune`). The trials after the baseline are its remedies and TPE's random start-up
  (seeded: the same configs in both when the baseline's findings are; from the sixth finished trial
  on TPE reads each study's own outcomes, and a stopped trial is not a complete one, so later draws
  may differ). Figure: wall time with / without (target <= half), both verdicts, and how much of the
  time the far-missing trials took without early stopping it gave back.
- `early-stop-knee` (e, a second regime): the same pair of studies on the real model at the
  defaults' knee, the `sharegpt` part's load (`--sharegpt-rate`, `ttft_p95<=3s,tpot_p95<=250ms`),
  `--es-knee-requests` (96: a 2-minute window at 0.8 req/s) per trial, 6 trials: at the knee most
  changes to the defaults push the server over it, which is where a study spends trials that early
  stopping can end.
- `grid` (c): the real model on the short `edit` workload at concurrency 2 (`--grid-requests` per
  config, 24; 1 warm-up), an exhaustive grid of 12 configs: speculative decoding {default (off), n-gram K 4
  window 2-4} x `max_num_seqs` {default, 1} x `max_num_batched_tokens` {default, 256, 128}, the
  default config among them (no two configs serve alike: `max_num_seqs` 2 at concurrency 2 would be
  the default's twin, and the best of two twins is luck); each measured `--grid-rounds` (3) times,
  every round visiting every config in its own seeded shuffled order (a drifting host then favours
  no corner of the grid, and the grid's best is judged on all of a config's rounds: of 12 configs
  measured once, the best is partly the luckiest run). Then the tuner's own study (TPE, seeds
  0..`--seeds`-1, the default's remedies first, as in a real study) is replayed on those
  measurements, each config answered by one of its rounds drawn by the seed (a study sees one noisy
  run, as a real one does; the findings drawn again from that window by the playbooks as they are
  now), up to twice the grid's size in trials. Figure: trials (as `--trials` counts them:
  duplicates aside), servers started and the measured wall time they stand for, to reach a config
  within 5 % of the grid's best goodput, median over seeds, against the grid's size (target <= 1/4);
  the same for the best config meeting the SLO (the tuner's own objective: feasible first), and for
  a config within the best's noise (its 95 % goodput interval over all its rounds overlaps the
  best's).
- `sharegpt` (b): the real model on short `sharegpt` prompts (4-128 tokens, replies capped at 32)
  at `--sharegpt-rate` (0.8 req/s: the defaults' knee on the 2-core host, vLLM on one core, measured
  2026-12-01 with `slotune bench --find-max-rate`, 30 requests a step, at 1.0 and 0.56 req/s with
  seeds 0 and 1; at 0.5 req/s every request met both SLOs) with
  `ttft_p95<=3s,tpot_p95<=250ms`; the same study + `vllm.benchmarks.serve` re-measurement as `edit`.
  Figure: the ratio (target >= 1.5x) or the study's verdict "keep vLLM's defaults" with its intervals.

The real model is served in the platform's dtype like every server slotune starts: float32 on a
CPU without native bf16 (slotune/platforms.py; on this AVX2-only host bf16 prefill is ~6x slower),
the baseline included, and the `vllm serve` lines printed say so.
vLLM runs on the last core, every client on the others.

    .venv/bin/python bench/bench_tune.py [--part false-wins edit early-stop early-stop-knee grid sharegpt]
        [--budget-min M] [--results FILE] [--report] [--fresh PART]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the testing package (tests.support) is not installed: read it from the checkout
from tests.support.paths import CACHE  # noqa: E402  (the built models, $SLOTUNE_TEST_CACHE as in the tests)

PARTS = ("false-wins", "edit", "early-stop", "early-stop-knee", "grid", "sharegpt")
NAME = "bench"  # the served model name in the vllm.benchmarks.serve runs

EDIT_YAML = """\
name: edit-short
description: the edit workload, short (this host's prefill and decode are slow)
endpoint: chat
prompts: {source: edit}
prompt_len: {dist: uniform, min: 64, max: 160}
output_len: {dist: uniform, min: 16, max: 96}
temperature: 0
ignore_eos: false
"""
SHAREGPT_YAML = """\
name: sharegpt-short
description: real ShareGPT prompts, short (this host's prefill and decode are slow)
endpoint: chat
prompts: {source: sharegpt}
prompt_len: {dist: uniform, min: 4, max: 128}
output_len: {dist: uniform, min: 4, max: 32}
ignore_eos: true
"""
GRID_YAML = """\
speculative_method: [null, ngram]
num_speculative_tokens: [4]
prompt_lookup_min: [2]
prompt_lookup_max: [4]
spec_draft_max_batch: null
max_num_seqs: [null, 1]
max_num_batched_tokens: [null, 256, 128]
max_model_len: null
enable_chunked_prefill: null
enable_prefix_caching: null
quantization: null
kv_cache_dtype: null
"""


GRID_SLO = "tpot_p95<=60ms"


class OutOfBudget(Exception):
    """The part's chunk of time is spent: what is done is recorded, the rest runs on the next call."""


# -- the results file ------------------------------------------------------------------------------


class Record:
    """The results file: `{part: {"settings": {...}, "units": {unit: {...}}}}`, written after each unit."""

    def __init__(self, path: Path, budget_min: float | None) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.started = time.monotonic()
        self.budget = None if budget_min is None else budget_min * 60

    def part(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        part = self.data.setdefault(name, {"settings": settings, "units": {}})
        if part["settings"] != settings:
            sys.exit(f"error: {self.path} holds part {name!r} measured with other settings "
                     f"({part['settings']}); use --fresh {name} or another --results file")
        return part["units"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def check_budget(self) -> None:
        if self.budget is not None and time.monotonic() - self.started > self.budget:
            raise OutOfBudget


def stamp() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.1f}"


def spread(xs: list[float], fmt: str = ".3f") -> str:
    if not xs:
        return "-"
    return (f"median {statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}] "
            f"(n={len(xs)}: {', '.join(f'{x:{fmt}}' for x in xs)})")


# -- models and workloads ------------------------------------------------------------------------


def tiny_model() -> Path:
    from slotune.model import build_tiny_model

    return build_tiny_model(CACHE / "models" / "tiny-llama")


def real_model() -> Path:
    """SmolLM2 as built by `slotune model smollm2` (served in the platform's dtype)."""
    from slotune.smollm2 import build_smollm2

    return build_smollm2(CACHE / "models" / "smollm2")


def workload_file(work: Path, name: str, text: str) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(text)
    return path


# -- a study, and its result in short --------------------------------------------------------------


def say(n: int, s: str) -> None:
    print(f"    trial {n}: {s}", flush=True)


def brief(result: Any) -> dict[str, Any]:
    d = result.to_dict()
    v = d["verdict"]
    return {"use": d["recommendation"]["use"], "message": d["recommendation"]["message"],
            "recommended_command": d["recommendation"]["command"],
            "winner": v["winner"], "ratio": v["ratio"], "trials": d["trials"], "wall_s": d["wall_seconds"],
            "baseline": {k: d["baseline"].get(k) for k in ("trial", "goodput", "feasible", "ttft_p95", "tpot_p95",
                                                          "command")} if d["baseline"] else None,
            "best": {k: d["best"].get(k) for k in ("trial", "goodput", "feasible", "ttft_p95", "tpot_p95", "params",
                                                  "command")} if d["best"] else None,
            "samples": {t: {"goodputs": s["goodputs"], "goodput_ci": s["goodput_ci"],
                            "slo": {k: {"estimate": f.get("estimate"), "ci": f.get("ci"), "outcome": f.get("outcome")}
                                    for k, f in s["slo"].items()}}
                        for t, s in v["samples"].items()},
            "rows": [{k: r.get(k) for k in ("trial", "origin", "state", "goodput", "ttft_p95", "tpot_p95", "params",
                                            "reason", "wall_seconds")} for r in d["rows"]]}


def run_study_in_chunks(spec: Any, rec: Record) -> Any:
    """Run the study one trial per call (each call resumes it), checking the budget between trials;
    then re-measure. An interrupted study resumes from its storage on the next call."""
    import optuna

    from slotune.tuner.study import FINISHED, run_study

    target = spec.trials
    while True:
        try:
            done = len(optuna.load_study(study_name=spec.study_name, storage=spec.storage)
                       .get_trials(deepcopy=False, states=FINISHED))
        except KeyError:
            done = 0
        if done >= target:
            break
        rec.check_budget()
        run_study(spec.model_copy(update={"trials": done + 1, "remeasure_top": 0}), events=say)
    rec.check_budget()
    return run_study(spec, events=say)


def print_study(tag: str, b: dict[str, Any]) -> None:
    print(f"  {tag}: {b['trials']['total']} trials in {b['wall_s']['study'] / 60:.1f} min; verdict: {b['message']}",
          flush=True)
    for r in b["rows"]:
        wall = f"{r['wall_seconds']:.0f} s" if r.get("wall_seconds") is not None else "-"
        print(f"    #{r['trial']} {r['origin']:9s} {r['state']:10s} {wall} goodput {r['goodput']} ttft_p95 "
              f"{r['ttft_p95']} tpot_p95 {r['tpot_p95']} {r['params'] or ''} {r['reason'] or ''}", flush=True)


# -- vllm.benchmarks.serve on the study's prompts --------------------------------------------------


def vllm_bench_runs(command: str, model: Path, prompts: Path, n: int, workload: Any, slo: Any,
                    load: dict[str, Any], repeats: int, cpus: tuple[int, ...] | None, logs: Path) -> list[dict]:
    """Serve `command` (renamed NAME) and measure it `repeats` times with vLLM's client on `prompts`."""
    from slotune.loadgen.runner import run_load
    from slotune.loadgen.vllm_bench import custom_dataset_args, run_vllm_bench
    from slotune.server import ManagedServer
    from slotune.tuner.command import parse_serve_command

    cfg = parse_serve_command(command).with_changes(served_model_name=NAME)
    runs = []
    with ManagedServer(cfg, log_dir=logs, cpus=cpus, startup_timeout=900) as server:
        url = server.base_url
        run_load(url, NAME, workload, concurrency=1, num_requests=1, seed=999, request_timeout=600)  # warm-up
        endpoint = (["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"] if workload.endpoint == "chat"
                    else ["--backend", "vllm", "--endpoint", "/v1/completions"])
        pace = (["--max-concurrency", str(load["concurrency"]), "--request-rate", "inf"] if load.get("concurrency")
                else ["--request-rate", str(load["rate"])])
        for rep in range(repeats):
            argv = [*endpoint, "--base-url", url, "--model", NAME, "--tokenizer", str(model),
                    *custom_dataset_args(prompts), "--num-prompts", str(n), *pace, "--seed", str(rep),
                    "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95",
                    "--goodput", *slo.vllm_goodput_args(), "--ready-check-timeout-sec", "120"]
            if workload.temperature is not None:
                argv += ["--temperature", str(workload.temperature)]
            if workload.ignore_eos:
                argv.append("--ignore-eos")
            s = run_vllm_bench(argv, timeout=1800).summary
            runs.append({k: s.get(k) for k in ("request_goodput", "request_throughput", "completed", "p95_ttft_ms",
                                               "p95_tpot_ms", "median_tpot_ms", "duration")})
            print(f"    run {rep + 1}: goodput {s.get('request_goodput')} req/s, throughput "
                  f"{s.get('request_throughput'):.3f} req/s, p95 TTFT {s.get('p95_ttft_ms', 0):.0f} ms, "
                  f"p95 TPOT {s.get('p95_tpot_ms', 0):.1f} ms, {s.get('completed')} ok", flush=True)
    return runs


def tuned_vs_default(part: str, rec: Record, a: argparse.Namespace, cpus: tuple[int, ...] | None,
                     model: Path, wl_path: Path, slo_text: str, load: dict[str, Any], requests: int,
                     target: float) -> None:
    """(a) and (b): a short study, then default vs recommended, each measured with vllm.benchmarks.serve."""
    from slotune.loadgen.runner import prompt_lines
    from slotune.slo import SloSpec
    from slotune.tuner.study import TuneSpec, load_spec_workload

    settings = {"model": str(model), "workload": wl_path.read_text(), "slo": slo_text, **load,
                "requests": requests, "trials": a.study_trials, "bench_repeats": a.bench_repeats}
    units = rec.part(part, settings)
    work = a.work / part
    work.mkdir(parents=True, exist_ok=True)
    spec = TuneSpec(model=str(model), workload=str(wl_path), slo=slo_text, trials=a.study_trials,
                    num_requests=requests, warmup_requests=1, storage=f"sqlite:///{work}/study.db",
                    study_name=part, out_dir=work / "out", remeasure_top=1, remeasure_repeats=1,
                    server_cpus=cpus, startup_timeout=900, **load)
    if "study" not in units:
        print(f"  study ({stamp()})", flush=True)
        units["study"] = brief(run_study_in_chunks(spec, rec))
        rec.save()
    b = units["study"]
    print_study("study", b)
    slo = SloSpec.parse(slo_text)
    workload = load_spec_workload(spec)
    prompts = work / "prompts.jsonl"  # the prompts every measured run of the study sent (seed 0)
    prompts.write_text("".join(prompt_lines(workload, spec.seed, requests)))
    commands = {"default": b["baseline"]["command"]}
    which = None
    if b["use"] == "tuned" and b.get("recommended_command"):
        commands["tuned"], which = b["recommended_command"], "recommended"
    elif b["best"] and b["best"].get("command") and b["best"]["trial"] != b["baseline"]["trial"]:
        commands["tuned"], which = b["best"]["command"], "the study's best measured config, not recommended"
    for label, command in commands.items():
        key = f"vllm-bench:{label}"
        if key in units:
            continue
        rec.check_budget()
        print(f"  vllm.benchmarks.serve on {label}: {command} ({stamp()})", flush=True)
        units[key] = {"command": command, "runs": vllm_bench_runs(command, model, prompts, requests, workload, slo,
                                                                  load, a.bench_repeats, cpus, work / "logs"),
                      "at": stamp()}
        rec.save()
    report_tuned(part, units, target, which)


def report_tuned(part: str, units: dict[str, Any], target: float, which: str | None = None) -> None:
    b = units.get("study")
    if not b:
        return
    print(f"\nFIGURE {part}: study verdict: {b['message']}")
    for t, s in b["samples"].items():
        print(f"  trial {t}: goodputs {s['goodputs']} CI {s['goodput_ci']}; "
              + "; ".join(f"{k} {f['estimate']} CI {f['ci']} {f['outcome']}" for k, f in s["slo"].items()))
    d, t = units.get("vllm-bench:default"), units.get("vllm-bench:tuned")
    if d:
        g0 = [float(r["request_goodput"] or 0) for r in d["runs"]]
        print(f"  default goodput (vllm.benchmarks.serve, req/s): {spread(g0)}; p95 TPOT ms "
              f"{[round(r['p95_tpot_ms'] or 0, 1) for r in d['runs']]}")
    if t:
        g1 = [float(r["request_goodput"] or 0) for r in t["runs"]]
        print(f"  tuned goodput ({which or 'tuned'}, {t['command']}): {spread(g1)}; p95 TPOT ms "
              f"{[round(r['p95_tpot_ms'] or 0, 1) for r in t['runs']]}")
    if d and t:
        m0, m1 = statistics.median(g0), statistics.median(g1)
        if m0 > 0:
            ratios = [y / x for x in g0 for y in g1 if x > 0]
            outcome = "met" if m1 / m0 >= target else "MISSED"
            if outcome == "MISSED" and b["use"] != "tuned" and part == "sharegpt":
                # The alternative for this part: the study's own verdict, with its intervals.
                outcome = "the study's verdict is \"keep vLLM's defaults\" (its intervals above): met by the verdict"
            print(f"  ratio of medians x{m1 / m0:.2f} (every run pair: {spread(ratios, '.2f')}); "
                  f"target >= {target}x: {outcome}")
        else:
            print(f"  default goodput 0, tuned {m1:.3f}: ratio unbounded; "
                  f"{'counts as met (issue: 0 vs > 0)' if m1 > 0 else 'both 0: MISSED'}")
    elif not t:
        print("  no tuned config to re-measure (the study measured nothing besides the default)")


# -- (d) false wins ------------------------------------------------------------------------------


def part_false_wins(rec: Record, a: argparse.Namespace, cpus: tuple[int, ...] | None) -> None:
    from slotune.tuner.study import TuneSpec

    model = tiny_model()
    settings = {"model": "tiny-llama", "input_len": 64, "output_len": 16, "rate": 2.0, "requests": 20,
                "slo": "ttft_p95<=1s,tpot_p95<=200ms", "trials": 3, "remeasure": "top 1, 1 round"}
    units = rec.part("false-wins", settings)
    work = a.work / "false-wins"
    work.mkdir(parents=True, exist_ok=True)
    for i in range(a.fw_studies):
        key = f"study-{i}"
        if key in units:
            continue
        rec.check_budget()
        print(f"  study {i} (seed {i}, {stamp()})", flush=True)
        spec = TuneSpec(model=str(model), input_len=64, output_len=16, slo=settings["slo"], trials=3, rate=2.0,
                        num_requests=20, warmup_requests=2, storage=f"sqlite:///{work}/studies.db",
                        study_name=f"fw-{i}", seed=i, remeasure_top=1, remeasure_repeats=1, server_cpus=cpus)
        units[key] = brief(run_study_in_chunks(spec, rec))
        rec.save()
        print(f"    verdict: {units[key]['message']}", flush=True)
    report_false_wins(units)


def report_false_wins(units: dict[str, Any]) -> None:
    studies = [units[k] for k in sorted(units, key=lambda k: int(k.split("-")[1]))]
    if not studies:
        return
    changed = [s for s in studies if s["use"] == "tuned"]
    walls = [s["wall_s"]["study"] / 60 for s in studies]
    print(f"\nFIGURE false-wins: {len(changed)} of {len(studies)} studies recommend a change (target 0); "
          f"study wall time {spread(walls, '.1f')} min")
    for k, s in zip(sorted(units, key=lambda k: int(k.split("-")[1])), studies, strict=True):
        base = s["samples"].get(str(s["rows"][0]["trial"])) if s["rows"] else None
        print(f"  {k}: {s['use']}: {s['message'][:220]}" + (f" | baseline goodputs {base['goodputs']}" if base else ""))


# -- (e) early stopping ----------------------------------------------------------------------------


def part_early_stop(rec: Record, a: argparse.Namespace, cpus: tuple[int, ...] | None) -> None:
    model = tiny_model()
    settings = {"model": "tiny-llama", "input_len": 256, "output_len": 32, "rate": 20.0, "requests": a.es_requests,
                "slo": "ttft_p95<=300ms,tpot_p95<=20ms", "trials": 6, "seed": 0, "remeasure": "top 1, 1 round",
                "early_stop": "window judged as its requests finish"}
    study_pair("early-stop", rec, a, settings, model=str(model), input_len=256, output_len=32, slo=settings["slo"],
               trials=6, rate=20.0, num_requests=a.es_requests, warmup_requests=4, seed=0, server_cpus=cpus)


def part_early_stop_knee(rec: Record, a: argparse.Namespace, cpus: tuple[int, ...] | None) -> None:
    model = real_model()
    wl = workload_file(a.work, "sharegpt-short", SHAREGPT_YAML)
    slo = "ttft_p95<=3s,tpot_p95<=250ms"
    settings = {"model": str(model), "workload": SHAREGPT_YAML, "rate": a.sharegpt_rate,
                "requests": a.es_knee_requests, "slo": slo, "trials": 6, "seed": 0, "remeasure": "top 1, 1 round",
                "early_stop": "window judged as its requests finish"}
    study_pair("early-stop-knee", rec, a, settings, model=str(model), workload=str(wl), slo=slo, trials=6,
               rate=a.sharegpt_rate, num_requests=a.es_knee_requests, warmup_requests=1, seed=0, server_cpus=cpus,
               startup_timeout=900)


def study_pair(part: str, rec: Record, a: argparse.Namespace, settings: dict[str, Any], **spec_kw: Any) -> None:
    """One study run twice, with early stopping (`--prune-at 2`) and without (`--no-prune`)."""
    from slotune.tuner.study import TuneSpec

    units = rec.part(part, settings)
    work = a.work / part
    work.mkdir(parents=True, exist_ok=True)
    for label, factor in (("pruned", 2.0), ("full", None)):
        if label in units:
            continue
        rec.check_budget()
        print(f"  study {label} ({stamp()})", flush=True)
        spec = TuneSpec(storage=f"sqlite:///{work}/studies.db", study_name=f"es-{label}", remeasure_top=1,
                        remeasure_repeats=1, prune_factor=factor, **spec_kw)
        units[label] = brief(run_study_in_chunks(spec, rec))
        rec.save()
    report_early_stop(units, part)


def report_early_stop(units: dict[str, Any], part: str = "early-stop") -> None:
    for label in ("pruned", "full"):
        if label in units:
            print_study(label, units[label])
    if "pruned" in units and "full" in units:
        p, f = units["pruned"], units["full"]
        wp, wf = p["wall_s"]["study"], f["wall_s"]["study"]
        tp = sum(v for v in (p["wall_s"].get("per_trial") or {}).values())
        tf = sum(v for v in (f["wall_s"].get("per_trial") or {}).values())
        same = (p["use"], p["winner"]) == (f["use"], f["winner"])
        print(f"\nFIGURE {part}: study wall {wp / 60:.1f} min with early stopping vs {wf / 60:.1f} min without "
              f"= {wp / wf:.2f} (target <= 0.5: {'met' if wp / wf <= 0.5 else 'MISSED'}); trials alone "
              f"{tp / 60:.1f} vs {tf / 60:.1f} min = {tp / tf if tf else float('nan'):.2f}; pruned trials "
              f"{p['trials'].get('pruned')} vs {f['trials'].get('pruned')}; same verdict: {same} "
              f"({p['use']} / {f['use']})")
        # What early stopping can give back at most: the time the trials it stopped took in full.
        full_by = {json.dumps(r["params"], sort_keys=True): r for r in f["rows"]}
        stopped = [(r, full_by.get(json.dumps(r["params"], sort_keys=True))) for r in p["rows"] if r["state"] == "pruned"]
        pairs = [(r["wall_seconds"], twin["wall_seconds"]) for r, twin in stopped if twin and twin["wall_seconds"]]
        if pairs:
            cut, whole = sum(a for a, _ in pairs), sum(b for _, b in pairs)
            print(f"  the {len(pairs)} stopped trial(s) took {cut:.0f} s with early stopping and {whole:.0f} s in "
                  f"full ({whole / wf:.0%} of the study without it): {1 - cut / whole:.0%} of their time given "
                  f"back; had they cost nothing at all, the study would still take {(wf - whole) / wf:.2f} "
                  f"of its wall time without early stopping")


# -- (c) trials to near-best on an exhaustive grid -------------------------------------------------


class Replay:
    """A `Measure` that answers from the grid's stored measurements (no server): each config from one
    of its rounds, drawn by `seed` (so a replayed study, like a real one, sees one noisy run of each
    config it tries, and different seeds see different runs). The findings (what queues remedies) are
    drawn again from that window and its client figures by the playbooks as they are now, so a replay
    shows what this tree's tuner would do with those measurements."""

    def __init__(self, stored: dict[str, list[dict[str, Any]]], slo: Any, seed: int) -> None:
        self.stored = stored
        self.slo = slo
        self.seed = seed

    def __call__(self, config: Any, progress: Any = None) -> Any:
        from dataclasses import replace

        from slotune.playbooks.engine import diagnose
        from slotune.tuner.measure import TUNER_MIN_REQUESTS, Measurement

        cmd = config.serve_command()
        runs = self.stored.get(cmd)
        if not runs:  # a remedy outside the grid: the study spends a trial on it, as it would for real
            return Measurement(ok=False, status="invalid_config", reason="not in the grid")
        m = runs[random.Random(f"{self.seed}|{cmd}").randrange(len(runs))]
        measured = Measurement.from_dict(m)
        if measured.server is None:
            return measured
        again = diagnose([measured.server], slo=self.slo, server_config=config, client=measured.client,
                         min_requests=TUNER_MIN_REQUESTS)
        return replace(measured, findings=again.findings)


def grid_rounds(units: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The grid's rounds, `n` of them, each `{serve command: measurement}`: round 0 is `measured` (the
    only one in records from before 2026-12-01 20:30), the others `rounds`."""
    rounds = [units.setdefault("measured", {}), *units.setdefault("rounds", [])]
    while len(rounds) < n:
        units["rounds"].append({})
        rounds.append(units["rounds"][-1])
    return rounds[:n]


def part_grid(rec: Record, a: argparse.Namespace, cpus: tuple[int, ...] | None) -> None:
    import optuna

    from slotune.tuner.measure import LoadSpec, ServerMeasure
    from slotune.tuner.study import TuneSpec, build_space, load_spec_workload, run_study, workload_need

    model = real_model()
    work = a.work / "grid"
    work.mkdir(parents=True, exist_ok=True)
    wl_path = workload_file(work, "edit-short", EDIT_YAML)
    space_path = work / "grid.yaml"
    space_path.write_text(GRID_YAML)
    slo_text = GRID_SLO
    settings = {"model": str(model), "workload": EDIT_YAML, "space": GRID_YAML, "slo": slo_text, "concurrency": 2,
                "requests": a.grid_requests}
    units = rec.part("grid", settings)
    base = TuneSpec(model=str(model), workload=str(wl_path), slo=slo_text, trials=1, concurrency=2,
                    num_requests=a.grid_requests,
                    warmup_requests=1, remeasure_top=0, space_file=space_path, prune_factor=None,
                    storage=f"sqlite:///{work}/replay.db")
    workload = load_spec_workload(base)
    space = build_space(base, workload_need(workload))
    bconf = base.base_config()
    configs = [space.config_for(bconf, p) for p in space.grid()]
    commands = [c.serve_command() for c in configs]
    print(f"  grid: {len(configs)} configs (the default among them: "
          f"{bconf.serve_command() in commands}), {a.grid_rounds} round(s)", flush=True)
    measure = ServerMeasure(LoadSpec(workload=workload, slo=base_slo(slo_text), concurrency=2,
                                     num_requests=a.grid_requests,
                                     warmup_requests=1), log_dir=work / "logs", startup_timeout=900, server_cpus=cpus)
    rounds = grid_rounds(units, a.grid_rounds)
    for r, measured in enumerate(rounds):
        # Every round visits every config, each in its own seeded order: drift over the rounds falls
        # on all configs alike, and a config's runs spread over the whole measurement.
        order = list(zip(configs, commands, strict=True))
        random.Random(r).shuffle(order)
        for cfg, cmd in order:
            if cmd in measured:
                continue
            rec.check_budget()
            print(f"  round {r}: measuring {cmd} ({stamp()})", flush=True)
            m = measure(cfg, lambda s: None)
            measured[cmd] = m.to_dict()
            units.pop("replay", None)  # a replay of fewer rounds is stale
            rec.save()
            print(f"    goodput {m.goodput:.3f} req/s, {m.seconds:.0f} s, {m.status} {m.reason}", flush=True)
    if any(len(measured) < len(commands) for measured in rounds):
        return
    stored = {cmd: [measured[cmd] for measured in rounds] for cmd in commands}
    if (units.get("replay") or {}).get("rounds") != len(rounds):
        from slotune.tuner.objective import ORIGIN

        truth = grid_truth(stored, slo_text)
        best = max(t["goodput"] for t in truth.values())
        meeting = {c for c, t in truth.items() if t["meets_slo"]}
        best_slo = max((truth[c]["goodput"] for c in meeting), default=None)
        near = within_noise_of_best(truth)
        targets = {  # what "the grid's best" is: the highest goodput, or the tuner's own objective
            "goodput": lambda cmd: truth[cmd]["goodput"] >= 0.95 * best,
            "slo": lambda cmd: best_slo is not None and cmd in meeting and truth[cmd]["goodput"] >= 0.95 * best_slo,
            "noise": lambda cmd: cmd in near,
        }
        reached: dict[str, list[list[float]]] = {k: [] for k in targets}
        (work / "replay.db").unlink(missing_ok=True)  # a study's name seeds its draws: the same each replay
        for seed in range(a.seeds):
            name = f"replay-{seed}"
            # As many trials as twice the grid (a duplicate draw is not one: tuner/study.py).
            run_study(base.model_copy(update={"study_name": name, "trials": 2 * len(commands), "seed": seed}),
                      measure=Replay(stored, base_slo(slo_text), seed), workload=workload)
            trials = sorted(optuna.load_study(study_name=name, storage=base.storage).get_trials(),
                            key=lambda t: t.number)
            for key, hit in targets.items():
                reached[key].append(first_reaching(trials, stored, hit))
            spent = [t for t in trials if t.user_attrs.get("state") != "duplicate"]  # as first_reaching counts
            print(f"    seed {seed}: within 5 % of the best goodput at trial {reached['goodput'][-1][0]} "
                  f"({reached['goodput'][-1][1]} servers, {reached['goodput'][-1][2] / 60:.1f} min measured), "
                  f"of the best meeting the SLO at trial {reached['slo'][-1][0]}, within the best's noise at "
                  f"trial {reached['noise'][-1][0]}: "
                  f"{', '.join(str(t.user_attrs.get(ORIGIN)) for t in spent[:int(reached['goodput'][-1][0])])}",
                  flush=True)
        units["replay"] = {"rounds": len(rounds), "best_goodput": best, "best_meeting_slo": best_slo,
                           "meeting_slo": sorted(meeting), "near_best": sorted(near), "reached": reached}
        rec.save()
    report_grid(units)


def first_reaching(trials: list[Any], stored: dict[str, list[dict[str, Any]]], hit: Any) -> list[float]:
    """`[trials, servers, seconds]` a replayed study spent up to its first trial whose config `hit`
    accepts: trials as the budget counts them (duplicates aside), servers started (a config outside
    the grid is refused, unlaunched), and the measured wall time they stand for (a config's mean over
    its rounds). Past the study's end: one more than it spent."""
    from slotune.vllm_config import VllmConfig

    spent, started, wall = 0, 0, 0.0
    for t in trials:
        if t.user_attrs.get("state") == "duplicate":  # no server, not counted against --trials
            continue
        # The trial's `command` attr is the served line (platform flags added): no key here.
        cmd = VllmConfig(**t.user_attrs["config"]).serve_command() if "config" in t.user_attrs else ""
        spent += 1
        if cmd in stored:
            started += 1
            wall += statistics.mean(float(m.get("seconds") or 0.0) for m in stored[cmd])
            if hit(cmd):
                return [spent, started, wall]
    return [spent + 1, started + 1, wall]


def grid_truth(stored: dict[str, list[dict[str, Any]]], slo_text: str) -> dict[str, dict[str, Any]]:
    """What each grid config serves, judged on all its rounds (what the grid's "best" is measured
    on, where one run each would crown the luckiest): `{command: {"goodput": req/s (the mean over
    rounds), "ci": its 95 % interval (tuner.confidence.goodput_figure: bootstrap over requests within
    each round, Student-t over the rounds, Wilson on the share of good requests; the widest), "runs":
    [each round's goodput], "meets_slo": every target's figure on the pooled requests within its
    threshold, "slo": {key: that figure}}`."""
    from slotune.tuner.confidence import RunRequests, goodput_figure, judge_slos

    slo = base_slo(slo_text)
    out = {}
    for cmd, ms in stored.items():
        runs = [r for r in (RunRequests.from_dict(m.get("requests")) for m in ms) if r is not None]
        fig = goodput_figure(runs) if runs else None
        judged = judge_slos(runs, slo) if runs else {}
        out[cmd] = {
            "goodput": fig.estimate if fig is not None and fig.estimate is not None
            else statistics.mean(float(m["goodput"]) for m in ms),
            "ci": fig.ci if fig is not None else None,
            "runs": [float(m["goodput"]) for m in ms],
            "meets_slo": bool(judged) and all(s.figure.estimate is not None and s.figure.estimate <= s.target.threshold
                                              for s in judged.values()),
            "slo": {k: s.figure.estimate for k, s in judged.items()},
            "seconds": [float(m.get("seconds") or 0.0) for m in ms],
        }
    return out


def within_noise_of_best(truth: dict[str, dict[str, Any]]) -> set[str]:
    """The grid's configs whose goodput interval (over all rounds) overlaps the best config's (the best
    included; a config without an interval counts as its point estimate)."""
    def interval(t: dict[str, Any]) -> tuple[float, float]:
        return tuple(t["ci"]) if t["ci"] else (t["goodput"],) * 2  # type: ignore[return-value]

    best = max(truth, key=lambda c: truth[c]["goodput"])
    lo = interval(truth[best])[0]
    return {c for c, t in truth.items() if interval(t)[1] >= lo}


def base_slo(text: str) -> Any:
    from slotune.slo import SloSpec

    return SloSpec.parse(text)


def report_grid(units: dict[str, Any]) -> None:
    measured = units.get("measured") or {}
    if not measured:
        return
    rounds = [r for r in (measured, *(units.get("rounds") or [])) if r]  # reads only: a bench may be writing
    common = [c for c in measured if all(c in r for r in rounds)]  # configs measured in every round so far
    truth = grid_truth({c: [r[c] for r in rounds] for c in common}, GRID_SLO)
    print(f"\n  grid measurements ({len(common)} configs, {len(rounds)} round(s) each; goodput: mean over rounds "
          f"[95 % interval], each round's; TPOT p95 on the pooled requests):")
    for cmd, t in sorted(truth.items(), key=lambda kv: -kv[1]["goodput"]):
        ci = f"[{t['ci'][0]:.3f}, {t['ci'][1]:.3f}]" if t["ci"] else "[no interval]"
        tpot = t["slo"].get("tpot_p95")
        print(f"    goodput {t['goodput']:.3f} {ci} req/s ({', '.join(f'{g:.3f}' for g in t['runs'])}), "
              f"TPOT p95 {'-' if tpot is None else f'{tpot * 1e3:.0f} ms'}, {statistics.mean(t['seconds']):.0f} s: "
              f"{cmd.split(' ', 2)[-1] if ' --' in cmd else '(defaults)'}")
    r = units.get("replay")
    if r and "reached" in r:
        n = len(common)
        total = sum(statistics.mean(t["seconds"]) for t in truth.values())
        slo_best = r.get("best_meeting_slo")
        on = f"over {r.get('rounds', 1)} round(s)"
        labels = {
            "goodput": f"the grid's best goodput ({r['best_goodput']:.3f} req/s {on}, SLO or not)",
            "slo": (f"the grid's best meeting the SLO ({len(r['meeting_slo'])} of {n} configs meet it {on}; best "
                    f"{slo_best:.3f} req/s: the tuner's own objective)" if slo_best is not None
                    else "the grid's best meeting the SLO (none meets it)"),
            "noise": f"the best's noise ({len(r['near_best'])} of {n} configs' 95 % goodput intervals overlap it)",
        }
        for key, label in labels.items():
            runs = r["reached"][key]
            if not runs or (key == "slo" and slo_best is None):
                continue
            mt, ms, mw = (statistics.median(x[i] for x in runs) for i in range(3))
            verdict = "met" if mt / n <= 0.25 else "MISSED"
            print(f"\nFIGURE grid, to within {'5 % of ' if key != 'noise' else ''}{label}: median {mt:g} trials "
                  f"(seeds: {[int(x[0]) for x in runs]}) of a {n}-config grid = {mt / n:.2f} (target <= 0.25: "
                  f"{verdict}); {ms:g} servers ({ms / n:.2f}); {mw / 60:.1f} min measured vs {total / 60:.1f} min "
                  f"for one round of the whole grid")
    elif r:  # a record from before 2026-12-01 18:00 (trials counted duplicates too)
        n = len(measured)
        med = statistics.median(r["trials_needed"])
        print(f"\nFIGURE grid (old record): trials to within 5 % of the grid's best ({r['best_goodput']:.3f} req/s): "
              f"median {med} (seeds: {r['trials_needed']}) of a {n}-config grid = {med / n:.2f}")


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--results", type=Path, default=CACHE / "bench-tune" / "results.json")
    p.add_argument("--work", type=Path, default=CACHE / "bench-tune")
    p.add_argument("--budget-min", type=float, default=None, help="start no new unit after this many minutes")
    p.add_argument("--report", action="store_true", help="print the recorded figures; start nothing")
    p.add_argument("--fresh", nargs="+", choices=PARTS, default=[], help="forget these parts' records first")
    p.add_argument("--fw-studies", type=int, default=10)
    p.add_argument("--study-trials", type=int, default=3, help="trials per study in edit and sharegpt")
    p.add_argument("--bench-repeats", type=int, default=2, help="vllm.benchmarks.serve runs per config")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--sharegpt-rate", type=float, default=0.8)
    p.add_argument("--grid-requests", type=int, default=24, help="requests per grid config (after 1 warm-up)")
    p.add_argument("--grid-rounds", type=int, default=3,
                   help="times each grid config is measured (each round in its own seeded order)")
    p.add_argument("--es-requests", type=int, default=2400, help="requests per early-stop trial (at 20 req/s)")
    p.add_argument("--es-knee-requests", type=int, default=96,
                   help="requests per early-stop-knee trial (at --sharegpt-rate)")
    p.add_argument("--server-cpus", default="last",
                   help="cores for each vLLM ('last': the last core where there are two or more; 'none': shared)")
    a = p.parse_args()
    from slotune.errors import ConfigError
    from slotune.platforms import parse_cpus

    rec = Record(a.results, a.budget_min)
    if a.fresh and not a.report:
        for part in a.fresh:
            rec.data.pop(part, None)
            shutil.rmtree(a.work / part, ignore_errors=True)  # its studies too: a resume would reuse them
        rec.save()
    if a.report:  # reads the records only: a running bench may be writing them
        reporters = {"false-wins": report_false_wins, "early-stop": report_early_stop, "grid": report_grid,
                     "early-stop-knee": lambda units: report_early_stop(units, "early-stop-knee")}
        for part in a.part:
            units = (rec.data.get(part) or {}).get("units") or {}
            print(f"\n== {part}: {(rec.data.get(part) or {}).get('settings')}")
            if part in reporters:
                reporters[part](units)
            else:
                report_tuned(part, units, 2.0 if part == "edit" else 1.5)
        return
    cores = sorted(os.sched_getaffinity(0))
    if a.server_cpus == "last":
        cpus = (cores[-1],) if len(cores) > 1 else None
    elif a.server_cpus == "none":
        cpus = None
    else:
        try:
            cpus = parse_cpus(a.server_cpus)
        except ConfigError as exc:
            sys.exit(f"error: --server-cpus: {exc}")
    if cpus:
        os.sched_setaffinity(0, set(cores) - set(cpus))  # ours, and vLLM's client as our child
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"results {a.results}; vLLM on cores {cpus or 'all'}; {stamp()}", flush=True)
    for part in a.part:
        print(f"\n== {part} ({stamp()})", flush=True)
        try:
            if part == "false-wins":
                part_false_wins(rec, a, cpus)
            elif part == "early-stop":
                part_early_stop(rec, a, cpus)
            elif part == "early-stop-knee":
                part_early_stop_knee(rec, a, cpus)
            elif part == "grid":
                part_grid(rec, a, cpus)
            elif part == "edit":
                model = real_model()
                wl = workload_file(a.work, "edit-short", EDIT_YAML)
                tuned_vs_default("edit", rec, a, cpus, model, wl, "tpot_p95<=60ms", {"concurrency": 1}, 6, 2.0)
            elif part == "sharegpt":
                model = real_model()
                wl = workload_file(a.work, "sharegpt-short", SHAREGPT_YAML)
                tuned_vs_default("sharegpt", rec, a, cpus, model, wl, "ttft_p95<=3s,tpot_p95<=250ms",
                                 {"rate": a.sharegpt_rate}, 12, 1.5)
        except OutOfBudget:
            rec.save()
            print(f"\nbudget of {a.budget_min} min spent: stopped after the last whole unit; run again to go on "
                  f"({stamp()})", flush=True)
            return
    print(f"\ndone ({stamp()})", flush=True)


if __name__ == "__main__":
    main()

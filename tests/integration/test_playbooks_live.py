"""Each playbook reproduced on a real vLLM (CPU backend, tiny random-weight model) and diagnosed; a
healthy, lightly loaded server yields no finding. Every load is bounded in requests and time.

Thresholds are chosen for this slow 2-core host so each scenario is decisive; the scenario, not the
threshold, is what makes a playbook fire (each test also checks the evidence behind it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from slotune.cli.main import main
from slotune.collectors.gpu import GpuCollector
from slotune.loadgen.workload import Length, LongTail, Workload
from slotune.measurement import LoadPlan, measure_window
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig

pytestmark = pytest.mark.integration

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
# Generous for a 2-core CPU: latency alone never fails the SLO in the scenarios that are not about it.
LENIENT = SloSpec.parse("ttft_p95<=5s,e2e_p95<=30s")


def run(server: Any, workload: Workload, *, concurrency: int, num_requests: int, slo: SloSpec = LENIENT,
        **flags: Any) -> dict[str, Any]:
    config = VllmConfig(model="tiny", served_model_name="tiny", **flags)
    plan = LoadPlan(workload, concurrency=concurrency, num_requests=num_requests, request_timeout=120.0)
    measured = measure_window(server.base_url, plan, model="tiny", slo=slo, server_config=config, gpu=GpuCollector())
    assert measured.diagnosis is not None
    assert measured.client is not None
    failed = [(r.index, r.error) for r in measured.client.records if not r.ok]
    assert measured.client.completed == num_requests, failed
    return measured.diagnosis.to_dict()


def by_id(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["playbook"]: f for f in d["findings"]}


def evidence(f: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in f["evidence"] if e["field"] == name)


def deltas(f: dict[str, Any]) -> list[dict[str, Any]]:
    return [r["config_delta"] for r in f["remedies"]]


def test_healthy_lightly_loaded_server_has_no_finding(vllm_server: Any) -> None:
    # A few sequential short requests on the default server: nothing to report.
    d = run(vllm_server, Workload.fixed(16, 16), concurrency=1, num_requests=4)
    assert (d["status"], d["findings"]) == ("healthy", []), json.dumps(d, indent=1)


def test_a_server_slotune_started_reports_its_engine_processes_cpu(vllm_server: Any) -> None:
    # vLLM 0.32 runs its engine in a process of its own (VLLM::EngineCore), which the API server's
    # process_cpu_seconds_total does not cover: slotune reads the whole process group it started.
    import psutil

    from slotune.collectors.process_cpu import read_group_cpu

    pgid = vllm_server.process_group
    group = read_group_cpu(pgid)
    assert group is not None and group.processes >= 2, group
    names = {p.name() for p in psutil.process_iter() if _in_group(p.pid, pgid)}
    assert any("EngineCore" in n for n in names), names
    plan = LoadPlan(Workload.fixed(16, 32), concurrency=2, num_requests=4, request_timeout=120.0)
    measured = measure_window(vllm_server.base_url, plan, model="tiny", slo=LENIENT,
                              server_config=VllmConfig(model="tiny", served_model_name="tiny"), process_group=pgid)
    cpu = measured.server.engine_cpu_utilization
    assert cpu is not None and 0 < cpu <= 1
    assert measured.diagnosis is not None and measured.diagnosis.facts["engine_cpu_utilization"] == cpu


def _in_group(pid: int, pgid: int) -> bool:
    import os

    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False


def test_long_tail_mix_is_inconsistent_latency(vllm_server: Any) -> None:
    # Mostly 8-token answers, a fifth of them 2000 tokens: p99 far above p50 (the tiny model makes
    # ~1000 tokens/s here, so the long ones take seconds and the short ones a fraction of one).
    mix = Workload(name="tail", prompt_len=Length(value=32), output_len=Length(value=8),
                   long_tail=LongTail(fraction=0.2, output_len=Length(value=2000)))
    d = run(vllm_server, mix, concurrency=4, num_requests=30, slo=SloSpec.parse("ttft_p95<=5s,e2e_p95<=1s"))
    f = by_id(d).get("inconsistent_latency")
    assert f is not None, json.dumps(d, indent=1)
    assert evidence(f, "e2e_p99_over_p50")["value"] > 4
    assert f["cause"] == "length_spread"
    assert {"long_prefill_token_threshold", "enable_chunked_prefill"} <= set(deltas(f)[0])


def test_ngram_speculation_on_random_weights_gives_no_speedup(start_vllm: Callable[..., Any]) -> None:
    # Greedy decoding makes the random-weight model loop, which ngram drafting predicts perfectly;
    # light sampling (temperature 0.2) keeps the loops (many drafts) but breaks the drafts' tails
    # (calibrated here: ~800 drafts, ~3 % accepted).
    server = start_vllm(speculative_config=NGRAM, max_num_seqs=8, max_num_batched_tokens=512, startup_timeout=480.0)
    sampled = Workload(name="sampled", prompt_len=Length(value=64), output_len=Length(value=256), temperature=0.2)
    try:
        d = run(server, sampled, concurrency=2, num_requests=8, speculative_config=NGRAM,
                max_num_seqs=8, max_num_batched_tokens=512)
    finally:
        server.stop()
    f = by_id(d).get("spec_decode_no_speedup")
    assert f is not None, json.dumps(d, indent=1)
    assert evidence(f, "spec_acceptance_rate")["value"] < 0.5
    assert evidence(f, "spec_drafts")["value"] >= 20
    assert {"speculative_config": None} in deltas(f)
    assert {"speculative_config": {**NGRAM, "num_speculative_tokens": 2}} in deltas(f)


def test_ngram_on_text_without_repeats_drafts_nothing(start_vllm: Callable[..., Any]) -> None:
    # n-gram drafting proposes a continuation only where the last n tokens (here 5) occurred before in
    # the prompt or output. Prompts of random plain words and outputs sampled at temperature 1 from a
    # random-weight model over 512 tokens hold no repeated 5-gram: the draft counter stays at 0.
    never = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 5, "prompt_lookup_min": 5}
    # Drafting servers start slowly on a busy 2-core host: room beyond the default 240 s.
    server = start_vllm(speculative_config=never, max_num_seqs=8, max_num_batched_tokens=512, startup_timeout=480.0)
    plain = Workload(name="no-repeats", prompt_len=Length(value=24), output_len=Length(value=48), temperature=1.0)
    try:
        d = run(server, plain, concurrency=2, num_requests=8, speculative_config=never,
                max_num_seqs=8, max_num_batched_tokens=512)
    finally:
        server.stop()
    f = by_id(d).get("spec_decode_no_speedup")
    assert f is not None, json.dumps(d, indent=1)
    assert f["cause"] == "never_drafts"
    assert evidence(f, "spec_drafts")["value"] == 0
    assert evidence(f, "generation_tokens")["value"] >= 64
    assert evidence(f, "engine_steps")["value"] > 0
    assert deltas(f)[0] == {"speculative_config": None}


def test_kv_cache_too_small_for_the_load(start_vllm: Callable[..., Any]) -> None:
    # 1000-token requests need 8 blocks of 128; 10 blocks hold one and a bit: 4 concurrent long
    # requests are preempted and wait for capacity. Prefix caching off: the load generator's
    # same-length prompts would otherwise share their blocks.
    flags = {"max_model_len": 1024, "num_gpu_blocks_override": 10, "enable_prefix_caching": False}
    server = start_vllm(**flags)
    try:
        d = run(server, Workload.fixed(500, 500), concurrency=4, num_requests=8, **flags)
    finally:
        server.stop()
    f = by_id(d).get("kv_cache_pressure")
    assert f is not None, json.dumps(d, indent=1)
    assert f["cause"] == "runtime"
    assert evidence(f, "preemptions")["value"] > 0
    assert {"num_gpu_blocks_override": None} in deltas(f)
    assert any(set(x) == {"max_num_seqs"} and x["max_num_seqs"] < 128 for x in deltas(f))


def test_long_prompts_without_chunked_prefill_or_prefix_caching_have_high_ttft(
        start_vllm: Callable[..., Any]) -> None:
    # 4000-token prompts, one prefill per step (no chunking), 4 at a time: each waits for the others.
    flags = {"enable_chunked_prefill": False, "enable_prefix_caching": False, "max_model_len": 4096}
    server = start_vllm(**flags)
    try:
        d = run(server, Workload.fixed(4000, 8), concurrency=4, num_requests=12,
                slo=SloSpec.parse("ttft_p95<=100ms,e2e_p95<=30s"), **flags)
    finally:
        server.stop()
    f = by_id(d).get("high_ttft")
    assert f is not None, json.dumps(d, indent=1)
    assert f["cause"] in ("queueing", "prefill")
    assert evidence(f, "ttft_at_slo")["threshold"] == 0.1
    assert evidence(f, "prompt_len_mean")["value"] > 3000
    assert {"enable_chunked_prefill": True} in deltas(f)
    assert {"enable_prefix_caching": True} in deltas(f)


def test_cli_diagnoses_an_underused_server_and_stores_findings(
        start_vllm: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # max_num_seqs 256 against 4 concurrent requests; no NVML here, so engine evidence decides.
    # Long answers keep each request in the engine for most of its life.
    server = start_vllm(max_num_seqs=256)
    workload = tmp_path / "short.yaml"
    workload.write_text(yaml.safe_dump({"name": "short", "prompt_len": 32, "output_len": 512}))
    db = f"sqlite:///{tmp_path / 'slotune.db'}"
    try:
        rc = main(["diagnose", "--target", server.base_url, "--load", str(workload), "--concurrency", "4",
                   "--num-requests", "16", "--slo", "ttft_p95<=5s,e2e_p95<=30s",
                   "--serve-command", "vllm serve tiny --max-num-seqs 256", "--json", "--save", "--db", db])
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert rc == 0, out
    d = json.loads(out)
    f = by_id(d).get("low_gpu_utilization")
    assert f is not None, out
    # The tiny model outruns a Python client sharing 2 cores with it, so the client may be what keeps
    # the batch small; the cause must agree with the in-flight evidence either way.
    inflight = d["facts"]["client_inflight_share"]
    assert f["cause"] == ("client_bottleneck" if inflight < 0.5 else "low_offered_load"), out
    assert evidence(f, "nvml_available")["value"] == 0
    assert evidence(f, "batch_occupancy")["value"] < 0.25
    assert evidence(f, "max_num_seqs")["value"] == 256

    from slotune import store as dbm

    store = dbm.open_store(db)
    with store.session() as s:
        rows = s.query(dbm.Finding).all()
        snap_ids = {r.id for r in s.query(dbm.Snapshot).all()}
    assert {r.playbook for r in rows} == {x["playbook"] for x in d["findings"]}
    assert all(r.snapshot_id in snap_ids for r in rows)


def test_cli_diagnoses_a_failed_start(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 6 blocks of 128 tokens cannot hold one 1024-token request: vLLM refuses to start.
    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_model), "served_model_name": "tiny", "max_model_len": 1024,
                                   "num_gpu_blocks_override": 6}))
    rc = main(["diagnose", "--launch", str(cfg), "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    d = json.loads(out)
    f = by_id(d).get("kv_cache_pressure")
    assert f is not None, out
    assert f["cause"] == "startup"
    assert {"max_model_len": 512} in deltas(f)
    assert {"num_gpu_blocks_override": None} in deltas(f)

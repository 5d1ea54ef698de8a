"""The playbooks under saturation, on the real model (SmolLM2-135M-Instruct): beyond its knee the
sidecar (recommend mode) and `slotune diagnose` both report the SLO burn and a saturation finding whose
remedies help there, never "underused / offer more load"; one request at a time, nothing alarming.

One vLLM for the module, on core 1 (the test process and what it starts on core 0). Short real
prompts (ShareGPT questions of 4-64 tokens) and 16 output tokens keep every phase within seconds.
The SLO is one this host meets with margin one request at a time (measured on a busy 2-core host:
TTFT p95 ~1.2 s, TPOT p95 ~0.4 s in fp32) and cannot meet with 16 requests arriving at once on one
core (they share every step: TTFT p95 ~9 s, TPOT p95 ~0.76 s): the TTFT target burns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from slotune.loadgen.workload import Length, load_workload
from slotune.measurement import LoadPlan, measure_window
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig
from tests.support.polling import wait_until
from tests.support.sidecar_process import sidecar

pytestmark = pytest.mark.integration

NAME = "smollm2"
SLO_TEXT = "ttft_p95<=2.5s,tpot_p95<=1s"
SLO = SloSpec.parse(SLO_TEXT)
# fp32: on an AVX2-only host bf16 prefill is ~5x slower (docs/playbooks.md, scenario matrix).
DTYPE = "float32"
BEYOND_CONCURRENCY, BEYOND_REQUESTS = 16, 32
BEYOND_TICK = 10.0  # the sidecar's interval beyond the knee, s
ALARMING = {"warning", "critical"}
UNDERUSED = {"low_offered_load", "client_bottleneck", "batch_limits"}
COMPUTE = {"host_cpu", "compute_per_step"}


def _short_chat(model: Path) -> Any:
    wl = load_workload("sharegpt").with_tokenizer(model)
    return dataclasses.replace(wl, name="sharegpt-short", prompt_len=Length(dist="uniform", min=4, max=64),
                               output_len=Length(value=16))


@pytest.fixture(scope="module")
def seats() -> Iterator[tuple[int, ...] | None]:
    """vLLM on the last core allowed, this process (and the clients and sidecar it starts) on the
    others (a cpuset container may not hold cores 0 and 1)."""
    before = os.sched_getaffinity(0)
    cores = sorted(before)
    if len(cores) < 2:
        yield None
        return
    os.sched_setaffinity(0, set(cores[:-1]))
    try:
        yield (cores[-1],)
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def server(smollm2: Path, seats: tuple[int, ...] | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slotune.server import ManagedServer

    cfg = VllmConfig(model=str(smollm2), served_model_name=NAME, dtype=DTYPE, max_model_len=1024)
    srv = ManagedServer(cfg, log_dir=tmp_path_factory.mktemp("vllm-saturation"), cpus=seats, slo=SLO,
                        startup_timeout=600)
    result = srv.start()
    try:
        if not result.ok:
            pytest.fail(f"vLLM did not start on the real model: {result.status.value}: {result.message}")
        # A fresh server's first request is its slowest (lazy set-up): served here, before any
        # sidecar watches, so no light-load window judges it.
        httpx.post(f"{srv.base_url}/v1/chat/completions", timeout=300, json={
            "model": NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]}).raise_for_status()
        yield srv
    finally:
        srv.stop()


class FindingLog:
    """Every state of the sidecar's findings seen while it runs (polled faster than it ticks), so a
    finding that was active for one tick only is still caught."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    items = client.get("/api/v1/findings", params={"limit": 200}).json()["items"]
                except (httpx.HTTPError, KeyError, ValueError):
                    items = []
                self.seen += [f for f in items if f["status"] == "active"]
                self.stop.wait(0.5)

    def __enter__(self) -> FindingLog:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _sidecar_settings(target: str, workdir: Path, interval: float = 3) -> dict[str, Any]:
    return {"target": target, "interval": interval, "slo": SLO_TEXT, "mode": "recommend", "persist_windows": 1,
            "data_dir": str(workdir / "data")}


def _cli_diagnose(target: str, workload_file: Path, concurrency: int, num_requests: int) -> dict[str, Any]:
    """`slotune diagnose --target --load` as a user runs it (a subprocess, on this process's core)."""
    argv = [sys.executable, "-m", "slotune.cli.main", "diagnose", "--target", target, "--load", str(workload_file),
            "--concurrency", str(concurrency), "--num-requests", str(num_requests), "--model", NAME,
            "--slo", SLO_TEXT, "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _workload_file(smollm2: Path, path: Path) -> Path:
    wl = _short_chat(smollm2)
    path.write_text(yaml.safe_dump({
        "name": wl.name, "endpoint": "chat", "prompts": {"source": "sharegpt"},
        "prompt_len": {"dist": "uniform", "min": 4, "max": 64}, "output_len": {"dist": "fixed", "value": 16},
        "ignore_eos": True, "tokenizer": str(smollm2)}))
    return path


@pytest.fixture(scope="module")
def beyond_knee(server: Any, smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One load beyond the knee, seen twice: the CLI drives it and diagnoses its window, the sidecar
    (recommend mode) watches the same traffic tick by tick."""
    work = tmp_path_factory.mktemp("beyond-knee")
    wl = _workload_file(smollm2, work / "short-chat.yaml")
    # Ticks of 10 s (the default is 15): beyond the knee a request lives ~10-20 s, and a tick much
    # shorter sees its first token and its end in different windows, where latency cannot be judged
    # (then the sidecar claims nothing about utilization; it never says "underused").
    settings = _sidecar_settings(server.base_url, work, interval=BEYOND_TICK)
    with sidecar(settings, work) as sc, FindingLog(sc.url) as log:
        cli = _cli_diagnose(server.base_url, wl, BEYOND_CONCURRENCY, BEYOND_REQUESTS)
        wait_until(lambda: any(f["playbook"] == "slo_burn" for f in log.seen) and any(
            f["playbook"] == "low_gpu_utilization" for f in log.seen), 3 * BEYOND_TICK, "the sidecar's findings")
        recs = httpx.get(f"{sc.url}/api/v1/recommendations", params={"limit": 200}).json()["items"]
    return {"cli": cli, "sidecar": log.seen, "recommendations": recs}


# Light load first: nothing of the saturated phase is left in the server's counters.
def test_one_request_at_a_time_nothing_alarming(server: Any, smollm2: Path, tmp_path: Path) -> None:
    cfg = VllmConfig(model=str(smollm2), served_model_name=NAME, dtype=DTYPE, max_model_len=1024)
    plan = LoadPlan(_short_chat(smollm2), concurrency=1, num_requests=4, warmup_requests=1, request_timeout=120)
    with sidecar(_sidecar_settings(server.base_url, tmp_path), tmp_path) as sc, FindingLog(sc.url) as log:
        m = measure_window(server.base_url, plan, model=NAME, slo=SLO, server_config=cfg,
                           process_group=server.process_group)
        time.sleep(4)  # one more tick of the sidecar over the load's last requests
    assert m.client is not None and m.client.completed == 4
    assert m.diagnosis is not None
    d = m.diagnosis.to_dict()
    # The SLO is met with margin (the figures the findings would cite are below their targets) ...
    assert d["facts"]["latency_slo_ratio"] is not None and d["facts"]["latency_slo_ratio"] < 1, d["facts"]
    # ... and nothing alarming: from the CLI's pipeline, nor from the sidecar watching it.
    assert not [f for f in d["findings"] if f["severity"] in ALARMING], json.dumps(d, indent=1)
    alarming = [f for f in log.seen if f["severity"] in ALARMING]
    assert not alarming, json.dumps([{k: f[k] for k in ("playbook", "severity", "summary")} | {
        "window": f["data"].get("window"), "facts": {e["field"]: e["value"] for e in f["data"].get("evidence", [])}}
        for f in alarming], indent=1)


def _no_underused(findings: list[dict[str, Any]]) -> None:
    for f in findings:
        cause = f.get("cause") if "cause" in f else f.get("data", {}).get("cause")
        remedies = f.get("remedies") if "remedies" in f else f.get("data", {}).get("remedies", [])
        assert cause not in UNDERUSED, json.dumps({k: f.get(k) for k in ("playbook", "summary", "data")}, indent=1)
        assert not any("more concurrency" in r["action"].lower() or "more load" in r["action"].lower()
                       for r in remedies), json.dumps(f, indent=1)


def _saturation_remedies(remedies: list[dict[str, Any]], tpot_at_risk: bool | None = None) -> None:
    actions = {r["action"] for r in remedies}
    assert {"Serve a smaller or quantized model", "Add replicas"} <= actions, actions
    # Never a larger batch. Fewer sequences per step protect TPOT at TTFT's cost: proposed only while the
    # SLO's TPOT target is at risk (tpot_slo_ratio >= 0.5, review 3). Here TTFT is what burns (measured:
    # TPOT p95 0.44 s against 1 s, TTFT p95 ~2x its target), so usually no cap either.
    caps = [r["config_delta"].get("max_num_seqs") for r in remedies if "max_num_seqs" in r["config_delta"]]
    assert all(c < 128 for c in caps), remedies
    if tpot_at_risk is not None:
        assert bool(caps) == tpot_at_risk, remedies


def test_beyond_the_knee_the_cli_reports_the_burn_and_saturation_not_underuse(beyond_knee: dict[str, Any]) -> None:
    d = beyond_knee["cli"]
    found = {f["playbook"]: f for f in d["findings"]}
    # The SLO burns: the worst latency figure is over its target, and high_ttft names it.
    assert d["facts"]["latency_slo_ratio"] > 1, json.dumps(d["facts"], indent=1)
    assert "high_ttft" in found, json.dumps(d, indent=1)
    # All 16 were admitted at once (no queue): TTFT is prefill in steps the whole batch shares.
    assert found["high_ttft"]["cause"] == "shared_steps", found["high_ttft"]["summary"]
    util = found.get("low_gpu_utilization")
    assert util is not None and util["cause"] in COMPUTE, json.dumps(d, indent=1)
    _saturation_remedies(util["remedies"], tpot_at_risk=d["facts"]["tpot_slo_ratio"] >= 0.5)
    _no_underused(d["findings"])


def test_beyond_the_knee_the_sidecar_reports_the_burn_and_saturation_not_underuse(
        beyond_knee: dict[str, Any]) -> None:
    seen = beyond_knee["sidecar"]
    burns = [f for f in seen if f["playbook"] == "slo_burn"]
    assert burns and all(f["severity"] in ALARMING for f in burns)
    assert any("tpot_p95" in f["summary"] or "ttft_p95" in f["summary"] for f in burns), burns[-1]
    saturation = [f for f in seen if f["playbook"] == "low_gpu_utilization"]
    causes = [f["data"]["cause"] for f in saturation]
    # A tick's window is 3 s: one that saw no first token has no TTFT figure and may name the API
    # server (outside_engine) instead; never an underused cause, and the compute limit is named.
    _no_underused(seen)
    computed = [f for f in saturation if f["data"]["cause"] in COMPUTE]
    assert computed, causes
    # A tick that saw fewer than 8 requests finish shows the finding without flag changes.
    for f in computed:
        _saturation_remedies(f["data"]["remedies"])
    # Recommend mode turns the saturation finding into a change that helps there, never more load.
    recs = [r for r in beyond_knee["recommendations"] if r["source"] == "low_gpu_utilization"]
    assert all(r["evidence"]["config_delta"].get("max_num_seqs", 128) < 128 or
                        "quantization" in r["evidence"]["config_delta"] for r in recs), recs

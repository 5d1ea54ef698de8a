"""The built-in playbooks on windows derived from real vLLM 0.32 /metrics captures (shared fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slotune.collectors.exposition import parse
from slotune.collectors.snapshot import Snapshot
from slotune.collectors.vllm_metrics import derive
from slotune.playbooks.engine import diagnose
from slotune.slo import SloSpec
from slotune.vllm_config import SpeculativeConfig, VllmConfig

NGRAM = SpeculativeConfig(method="ngram", num_speculative_tokens=3, prompt_lookup_max=4, prompt_lookup_min=2)


def window(fixtures_dir: Path, before: str, after: str, seconds: float = 10.0) -> Snapshot:
    b = parse((fixtures_dir / before).read_text(), timestamp=1000.0)
    a = parse((fixtures_dir / after).read_text(), timestamp=1000.0 + seconds)
    return derive(b, a, target="http://127.0.0.1:8000")


def test_ngram_on_random_weights_is_diagnosed(fixtures_dir: Path) -> None:
    w = window(fixtures_dir, "vllm-0.32-cpu-specdecode-under-load.prom", "vllm-0.32-cpu-specdecode-after-load.prom")
    cfg = VllmConfig(model="tiny", max_num_seqs=8, max_num_batched_tokens=512, speculative_config=NGRAM)
    d = diagnose([w], slo=SloSpec.parse("ttft_p95<=10s,e2e_p95<=10s"), server_config=cfg).to_dict()
    ids = [f["playbook"] for f in d["findings"]]
    assert ids == ["spec_decode_no_speedup"], d["findings"]
    f = d["findings"][0]
    assert f["cause"] == "none_accepted"
    ev = {e["field"]: e for e in f["evidence"]}
    assert {"value": 0.0, "op": "<", "threshold": 0.05}.items() <= ev["spec_acceptance_rate"].items()
    assert ev["spec_mean_acceptance_length"]["value"] == 1.0
    # The capture's window drafted once (3 tokens): named, but too small a sample to switch drafting
    # off or change K on (review 3); test_playbooks_rules covers those remedies on enough drafting.
    assert [r["config_delta"] for r in f["remedies"] if r["config_delta"]] == []
    assert "Too small a sample to change a flag on" in f["summary"], f["summary"]
    assert f["window"] == {"start": 1000.0, "end": 1010.0, "seconds": 10.0}


def test_spec_capture_ttft_breaks_the_default_target_and_is_queueing(fixtures_dir: Path) -> None:
    # 20 concurrent requests on max_num_seqs 8: TTFT p95 4.4 s, mostly time queued.
    w = window(fixtures_dir, "vllm-0.32-cpu-specdecode-under-load.prom", "vllm-0.32-cpu-specdecode-after-load.prom")
    cfg = VllmConfig(model="tiny", max_num_seqs=8, max_num_batched_tokens=512, speculative_config=NGRAM)
    found = {f["playbook"]: f for f in diagnose([w], server_config=cfg).to_dict()["findings"]}
    assert found["high_ttft"]["cause"] == "queueing"
    # Steps of ~8 tokens against a budget of 512: the 8 batch slots bind, not the budget.
    deltas = [r["config_delta"] for r in found["high_ttft"]["remedies"]]
    assert {"max_num_seqs": 16} in deltas
    assert not any("max_num_batched_tokens" in d for d in deltas), deltas
    assert "kv_cache_pressure" not in found


def test_diagnose_snapshot_cli_raises_the_binding_limit(fixtures_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`collect --once --json` of the spec capture, judged offline with the server's flags: the
    remedy raises max_num_seqs (8 slots, 20 requests), never a token budget no step reaches."""
    from slotune.cli.main import main
    from slotune.files import to_json

    snap = derive(None, parse((fixtures_dir / "vllm-0.32-cpu-specdecode-after-load.prom").read_text(),
                              timestamp=1000.0), target="http://127.0.0.1:8000")
    (tmp_path / "snap.json").write_text(to_json(snap.to_dict()))
    assert main(["diagnose", "--snapshot", str(tmp_path / "snap.json"), "--json", "--serve-command",
                 "vllm serve tiny --max-num-seqs 8 --max-num-batched-tokens 512"]) == 0
    d = json.loads(capsys.readouterr().out)
    ttft = next(f for f in d["findings"] if f["playbook"] == "high_ttft")
    deltas = [r["config_delta"] for r in ttft["remedies"]]
    assert deltas == [{"max_num_seqs": 16}], deltas
    assert d["facts"]["step_budget_reached"] == 0


def test_default_server_under_40_concurrent(fixtures_dir: Path) -> None:
    w = window(fixtures_dir, "vllm-0.32-cpu-under-load.prom", "vllm-0.32-cpu-after-load.prom")
    d = diagnose([w], slo=SloSpec.parse("e2e_p95<=5s"), server_config=VllmConfig(model="tiny"))
    found = {f.playbook: f for f in d.findings}
    # Fast and consistent: no latency finding; 40-way load on 128 slots leaves most of the batch empty.
    assert set(found) == {"low_gpu_utilization"}
    f = found["low_gpu_utilization"]
    assert f.cause == "low_offered_load"
    assert any(e.field == "nvml_available" and e.value == 0 for e in f.evidence)
    assert any("NVML unavailable" in n for n in d.notes)


def test_a_window_that_cannot_judge_ttft_calls_nothing_underused(fixtures_dir: Path) -> None:
    # The capture's second page came after the load: its window saw requests finish but no first
    # token, so TTFT's target is not judged there and "offer more load" could feed a TTFT burn (the
    # sidecar's 3 s ticks on the real model beyond its knee did exactly that).
    w = window(fixtures_dir, "vllm-0.32-cpu-under-load.prom", "vllm-0.32-cpu-after-load.prom")
    assert w.ttft is None or not w.ttft.count
    d = diagnose([w], slo=SloSpec.parse("ttft_p95<=1s,e2e_p95<=5s"), server_config=VllmConfig(model="tiny"))
    assert not [f for f in d.findings if f.playbook == "low_gpu_utilization"], d.findings


def test_cumulative_page_without_traffic_is_insufficient_data(fixtures_dir: Path) -> None:
    page = parse((fixtures_dir / "vllm-0.32-cpu-specdecode-under-load.prom").read_text(), timestamp=1000.0)
    d = diagnose([derive(None, page, target="x")])
    assert d.status == "insufficient_data" and d.findings == ()


def test_same_window_with_a_missed_latency_target_is_a_cpu_limit_not_low_load(fixtures_dir: Path) -> None:
    # The window above, judged against an e2e target it misses: the small batch is not short of
    # load (the steps are already too slow for the target), and on this CPU backend the limit named
    # is the host's CPU; no remedy asks for more load.
    w = window(fixtures_dir, "vllm-0.32-cpu-under-load.prom", "vllm-0.32-cpu-after-load.prom")
    d = diagnose([w], slo=SloSpec.parse("ttft_p95<=1s,e2e_p95<=100ms"), server_config=VllmConfig(model="tiny"))
    f = {x.playbook: x for x in d.findings}["low_gpu_utilization"]
    assert f.cause == "host_cpu", f.summary
    assert d.facts["cpu_backend"] == 1 and d.facts["latency_slo_ratio"] > 1
    assert not any("concurrency" in r.action.lower() for r in f.remedies)

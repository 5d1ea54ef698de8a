"""diagnose(): the JSON contract, start-up failures, remedies the tuner can use, and storage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from slotune import platforms
from slotune import store as db
from slotune.collectors.exposition import parse
from slotune.collectors.persist import load_snapshot, save_snapshot
from slotune.collectors.snapshot import Snapshot
from slotune.collectors.vllm_metrics import derive
from slotune.playbooks.engine import diagnose
from slotune.playbooks.persist import save_findings
from slotune.server import StartResult, StartStatus
from slotune.tuner.space import SPEC_METHOD, SPEC_TOKENS, SearchSpace
from slotune.vllm_config import SpeculativeConfig, VllmConfig

IDS = {"low_gpu_utilization", "high_ttft", "kv_cache_pressure", "spec_decode_no_speedup", "inconsistent_latency"}
NGRAM5 = SpeculativeConfig(method="ngram", num_speculative_tokens=5, prompt_lookup_max=5, prompt_lookup_min=2)


def spec_window(fixtures_dir: Path) -> Snapshot:
    b = parse((fixtures_dir / "vllm-0.32-cpu-specdecode-under-load.prom").read_text(), timestamp=50.0)
    a = parse((fixtures_dir / "vllm-0.32-cpu-specdecode-after-load.prom").read_text(), timestamp=60.0)
    return derive(b, a, target="http://127.0.0.1:9")


def test_json_contract(fixtures_dir: Path) -> None:
    d = diagnose([spec_window(fixtures_dir)], server_config=VllmConfig(model="m", speculative_config=NGRAM5))
    out = json.loads(json.dumps(d.to_dict()))  # plain JSON, no custom types
    assert out["status"] == "findings" and out["findings"]
    assert out["window"] == {"start": 50.0, "end": 60.0, "seconds": 10.0}
    for f in out["findings"]:
        assert f["playbook"] in IDS
        assert f["severity"] in ("critical", "warning", "info")
        assert isinstance(f["summary"], str) and f["summary"]
        assert {"start", "end", "seconds"} <= set(f["window"])
        for e in f["evidence"]:
            assert set(e) == {"field", "value", "op", "threshold", "description", "bounds"}
            assert e["value"] is None or isinstance(e["value"], (int, float))  # numbers stay numbers
            assert e["bounds"] is None or (len(e["bounds"]) == 2 and isinstance(e["bounds"][0], (int, float)))
        for r in f["remedies"]:
            assert set(r) == {"action", "why", "config_delta"} and isinstance(r["config_delta"], dict)
    severities = [f["severity"] for f in out["findings"]]
    assert severities == sorted(severities, key=["critical", "warning", "info"].index)


def test_startup_failure_kv_too_small_is_kv_pressure(tmp_path: Path) -> None:
    failure = StartResult(StartStatus.KV_CACHE_TOO_SMALL, "KV cache too small", tmp_path / "log",
                          ("ValueError: max seq len 4096 is larger than the maximum number of tokens ...",))
    cfg = VllmConfig(model="m", max_model_len=4096, num_gpu_blocks_override=8)
    d = diagnose([], server_config=cfg, startup_failure=failure)
    (f,) = d.findings
    assert (d.status, f.playbook, f.cause, f.severity) == ("findings", "kv_cache_pressure", "startup", "critical")
    assert f.evidence[0].field == "startup_kv_too_small"
    deltas = [r.config_delta for r in f.remedies]
    assert deltas[:2] == [{"max_model_len": 2048}, {"num_gpu_blocks_override": None}]


def test_other_startup_failures_find_nothing(tmp_path: Path) -> None:
    failure = StartResult(StartStatus.INVALID_CONFIG, "bad flag", tmp_path / "log")
    d = diagnose([], server_config=VllmConfig(model="m"), startup_failure=failure)
    assert (d.status, d.findings) == ("healthy", ())


def test_remedies_feed_the_tuner_space(fixtures_dir: Path) -> None:
    plat = platforms.CPU
    cfg = VllmConfig(model="m", speculative_config=NGRAM5)
    # The capture drafted 3 tokens, too few to change a flag on: scaled to a window with enough drafting
    # (this test is about the remedies' mapping to the tuner's space, not the sample).
    w = dataclasses.replace(spec_window(fixtures_dir), spec_decode_drafts=100.0, spec_decode_draft_tokens=300.0)
    d = diagnose([w], server_config=cfg)
    spec = next(f for f in d.findings if f.playbook == "spec_decode_no_speedup")
    space = SearchSpace.default(plat=plat)
    start = {**space.baseline_params(), SPEC_METHOD: "ngram", SPEC_TOKENS: 5}
    params = [space.params_for_delta(start, r.config_delta) for r in spec.remedies if r.config_delta]
    disabled = next(p for p in params if p is not None and p.get(SPEC_METHOD) is None)
    assert SPEC_TOKENS not in disabled
    lowered = next(p for p in params if p is not None and p.get(SPEC_TOKENS) == 3)
    assert lowered[SPEC_METHOD] == "ngram"
    config = space.config_for(VllmConfig(model="m"), lowered)
    assert config.speculative_config is not None and config.speculative_config.num_speculative_tokens == 3


def test_findings_are_stored_with_their_snapshot(fixtures_dir: Path, tmp_path: Path) -> None:
    store = db.open_store(f"sqlite:///{tmp_path / 'slotune.db'}")
    window = spec_window(fixtures_dir)
    snap_id = save_snapshot(store, window)
    d = diagnose([load_snapshot(store, snap_id)], server_config=VllmConfig(model="m", speculative_config=NGRAM5))
    ids = save_findings(store, d, snap_id)
    assert len(ids) == len(d.findings) >= 1
    with store.session() as s:
        rows = [s.get(db.Finding, i) for i in ids]
    assert [r.playbook for r in rows] == [f.playbook for f in d.findings]
    assert all(r.snapshot_id == snap_id and r.target == "http://127.0.0.1:9" for r in rows)
    assert rows[0].data == json.loads(json.dumps(d.findings[0].to_dict()))
    assert save_findings(store, diagnose([]), snap_id) == []

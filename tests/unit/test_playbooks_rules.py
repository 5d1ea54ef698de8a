"""Each built-in rule against hand-written facts, in the spirit of promtool's rule tests: input facts,
the findings expected, and cases that must not fire; then the relations table (which findings
exclude or qualify which) and low_gpu_utilization judged with latency (issue 18)."""

from __future__ import annotations

from typing import Any

import pytest

from slotune.playbooks.engine import judge
from slotune.playbooks.facts import FACTS, Facts
from slotune.playbooks.model import builtin_playbooks
from slotune.playbooks.relations import apply_to_dicts, builtin_relations, decide
from slotune.slo import SloSpec
from slotune.vllm_config import SpeculativeConfig, VllmConfig
from tests.support.playbook_facts import HEALTHY

BOOKS = {pb.id: pb for pb in builtin_playbooks()}
CFG = VllmConfig(model="m")



def facts(**overrides: float | None) -> Facts:
    f: Facts = dict.fromkeys(FACTS)
    f.update(HEALTHY)
    f.update(overrides)
    return f


def fired(f: Facts, *, slo: str | None = None, config: VllmConfig | None = CFG, windows: list[Facts] | None = None,
          only: str | None = None) -> dict[str, dict[str, Any]]:
    books = [BOOKS[only]] if only else list(BOOKS.values())
    d = judge(windows or [f], slo=SloSpec.parse(slo) if slo else None, server_config=config, playbooks=books)
    return {x.playbook: x.to_dict() for x in d.findings}


def test_the_healthy_window_fires_nothing() -> None:
    assert fired(facts()) == {}


# (playbook, facts that must make it fire, expected cause)
FIRES = [
    ("high_ttft", {"ttft_at_slo": 0.9, "ttft_queue_share": 0.8}, "queueing"),
    ("high_ttft", {"ttft_at_slo": 0.9, "ttft_queue_share": 0.2, "ttft_prefill_share": 0.8, "prompt_len_p95": 3000},
     "prefill"),  # long prompts: prefill itself, whatever the batch
    ("high_ttft", {"ttft_at_slo": 0.9, "ttft_queue_share": 0.2, "ttft_prefill_share": 0.8}, "shared_steps"),
    ("high_ttft", {"ttft_at_slo": 0.9, "ttft_queue_share": 0.2, "ttft_prefill_share": 0.8, "batch_requests": 1},
     "prefill"),
    ("kv_cache_pressure", {"preemptions": 3}, "runtime"),
    ("kv_cache_pressure", {"waiting_capacity": 2}, "runtime"),
    ("kv_cache_pressure", {"kv_cache_usage": 0.97}, "runtime"),
    ("kv_cache_pressure", {"startup_failed": 1, "startup_kv_too_small": 1}, "startup"),
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 50, "spec_acceptance_rate": 0.01}, "none_accepted"),
    # V0 pages: no draft counter, drafted tokens only (K unknown): nothing accepted still decides.
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_draft_tokens": 8784, "spec_acceptance_rate": 0.0},
     "none_accepted"),
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 50, "spec_acceptance_rate": 0.1,
                                "spec_mean_acceptance_length": 1.3}, "few_tokens_per_step"),
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 0, "generation_tokens": 2000,
                                "engine_steps": 700}, "never_drafts"),
    ("inconsistent_latency", {"e2e_p50": 0.5, "e2e_p99": 5.0, "e2e_p99_over_p50": 10.0, "output_len_p99_over_p50": 8},
     "length_spread"),
    ("inconsistent_latency", {"ttft_p50": 0.1, "ttft_p99": 2.0, "ttft_p99_over_p50": 20.0, "preemptions": 0,
                              "ttft_queue_share": 0.9}, "queueing"),
    ("low_gpu_utilization", {"mean_concurrency": 2, "batch_occupancy": 2 / 256, "max_num_seqs": 256},
     "low_offered_load"),
    ("low_gpu_utilization", {"batch_occupancy": 1.0, "requests_waiting": 30, "step_tokens_share": 0.1},
     "batch_limits"),
    ("low_gpu_utilization", {"nvml_available": 1, "gpu_utilization": 0.4, "mean_concurrency": 3,
                             "batch_occupancy": 0.02, "client_concurrency": 16, "client_inflight_share": 3 / 16},
     "client_bottleneck"),
    # The client offered 4 at once, the engine saw 1.2 in flight: the client is the bottleneck.
    ("low_gpu_utilization", {"mean_concurrency": 1.2, "batch_occupancy": 0.01, "client_concurrency": 4,
                             "client_inflight_share": 0.3}, "client_bottleneck"),
]


@pytest.mark.parametrize(("playbook", "overrides", "cause"), FIRES, ids=[f"{p}-{c}" for p, _, c in FIRES])
def test_rule_fires_with_cause(playbook: str, overrides: dict[str, float], cause: str) -> None:
    found = fired(facts(**overrides), only=playbook)
    assert playbook in found, f"{playbook} did not fire on {overrides}"
    assert found[playbook]["cause"] == cause
    crossed = [e for e in found[playbook]["evidence"] if e["op"] is not None]
    assert crossed and all(e["threshold"] is not None for e in crossed)


# Near misses: each must leave its playbook silent.
MUST_NOT_FIRE = [
    ("high_ttft", {"ttft_at_slo": 0.5}),  # at the target is meeting it
    ("high_ttft", {"ttft_at_slo": None}),  # no data is no finding
    ("kv_cache_pressure", {"kv_cache_usage": 0.85}),
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 50, "spec_acceptance_rate": 0.7}),
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 0, "spec_acceptance_rate": None}),
    # Long drafts: a quarter of K=12 drafted tokens accepted is still 4 tokens per step: a gain.
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 50, "spec_acceptance_rate": 0.25,
                                "spec_mean_acceptance_length": 4.0, "spec_k": 12}),
    # Measured faster wins over a low acceptance figure.
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 50, "spec_acceptance_rate": 0.2,
                                "spec_mean_acceptance_length": 1.2, "spec_tpot_speedup": 1.4}),
    ("spec_decode_no_speedup", {"spec_enabled": 1, "spec_drafts": 0, "generation_tokens": 10}),  # idle
    ("spec_decode_no_speedup", {"spec_enabled": 0, "spec_drafts": None, "generation_tokens": 2000}),
    ("inconsistent_latency", {"e2e_p50": 0.1, "e2e_p99": 1.0, "e2e_p99_over_p50": 10.0}),  # tail meets the SLO
    ("inconsistent_latency", {"e2e_p50": 0.5, "e2e_p99": 5.0, "e2e_p99_over_p50": 10.0, "requests_finished": 5}),
    ("low_gpu_utilization", {"mean_concurrency": 0.9, "batch_occupancy": 0.007}),  # idle, not underused
    ("low_gpu_utilization", {"mean_concurrency": 0.9, "batch_occupancy": 0.007, "client_concurrency": 1,
                             "client_inflight_share": 0.9}),  # one sequential client: lightly loaded
    ("low_gpu_utilization", {"mean_concurrency": 2, "batch_occupancy": 0.02, "preemptions": 4}),  # KV-bound
    ("low_gpu_utilization", {"nvml_available": 1, "gpu_utilization": 0.92, "batch_occupancy": 0.02}),
]


@pytest.mark.parametrize(("playbook", "overrides"), MUST_NOT_FIRE, ids=[p for p, _ in MUST_NOT_FIRE])
def test_rule_stays_silent(playbook: str, overrides: dict[str, float | None]) -> None:
    assert playbook not in fired(facts(**overrides), only=playbook)


def test_thresholds_follow_the_users_slo() -> None:
    f = facts(ttft_at_slo=0.9, ttft_p95=0.9)
    assert "high_ttft" in fired(f)  # default target 500 ms
    assert "high_ttft" not in fired(f, slo="ttft_p95<=1s")
    found = fired(facts(ttft_at_slo=0.3, ttft_p95=0.3), slo="ttft_p95<=200ms")["high_ttft"]
    assert found["evidence"][0] == {**found["evidence"][0], "field": "ttft_at_slo", "value": 0.3, "threshold": 0.2}


def test_remedies_are_concrete_flag_changes() -> None:
    cfg = VllmConfig(model="m", max_num_seqs=64, enable_chunked_prefill=False, enable_prefix_caching=False,
                     speculative_config=SpeculativeConfig(method="ngram", num_speculative_tokens=5,
                                                          prompt_lookup_max=4, prompt_lookup_min=2))
    ttft = fired(facts(ttft_at_slo=2.0, ttft_queue_share=0.2, ttft_prefill_share=0.8, prompt_len_p95=3000,
                       chunked_prefill_enabled=0, prefix_caching_enabled=0, max_num_seqs=64), config=cfg)
    deltas = [r["config_delta"] for r in ttft["high_ttft"]["remedies"]]
    assert {"enable_chunked_prefill": True} in deltas and {"enable_prefix_caching": True} in deltas
    # Cap the input length at what requests need: p99 prompt + output rounded up to 256.
    assert {"max_model_len": 768} in deltas

    spec = fired(facts(spec_enabled=1, spec_drafts=90, spec_draft_tokens=270, spec_acceptance_rate=0.3,
                       spec_mean_acceptance_length=1.2), config=cfg)
    deltas = [r["config_delta"] for r in spec["spec_decode_no_speedup"]["remedies"]]
    assert deltas[0] == {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3,
                                                "prompt_lookup_max": 4, "prompt_lookup_min": 2}}
    assert {"speculative_config": None} in deltas

    kv = fired(facts(preemptions=5, max_num_seqs=64, kv_cache_tokens=None), config=cfg)
    assert {"max_num_seqs": 32} in [r["config_delta"] for r in kv["kv_cache_pressure"]["remedies"]]


def test_kv_remedy_fits_max_num_seqs_to_the_cache() -> None:
    # 5120 cached tokens / (p95 prompt 400 + p95 output 240) = 8 sequences fit.
    kv = fired(facts(preemptions=5, kv_cache_tokens=5120, prompt_len_p95=400, output_len_p95=240))
    assert kv["kv_cache_pressure"]["remedies"][0]["config_delta"] == {"max_num_seqs": 8}


def test_no_remedy_repeats_the_running_config() -> None:
    # Chunked prefill and prefix caching already on: neither is proposed.
    found = fired(facts(ttft_at_slo=2.0), config=VllmConfig(model="m", enable_chunked_prefill=True))
    actions = [r["action"] for r in found["high_ttft"]["remedies"]]
    assert not any("chunked prefill" in a or "prefix caching" in a for a in actions)


def test_for_needs_consecutive_windows() -> None:
    book = BOOKS["high_ttft"].model_copy(update={"for_": 2})
    bad, good = facts(ttft_at_slo=2.0), facts()

    def run(ws):
        return judge(ws, playbooks=[book], server_config=CFG).findings

    assert run([bad]) == ()  # one window is not enough
    assert run([bad, good]) == ()
    assert run([good, bad]) == ()
    (f,) = run([good, bad, bad])
    assert f.windows == 2


@pytest.mark.parametrize(("overrides", "raised"), [
    ({"batch_occupancy": 1.0, "requests_waiting": 30, "step_tokens_share": 0.1, "step_tokens_p99": 300},
     {"max_num_seqs"}),  # the slots bind; the budget has room
    ({"nvml_available": 1, "gpu_utilization": 0.5, "batch_occupancy": 0.5, "requests_waiting": 30,
      "step_tokens_share": 0.95, "step_tokens_p99": 2048},
     {"max_num_batched_tokens"}),  # the budget binds; half the slots are free
    ({"nvml_available": 1, "gpu_utilization": 0.5, "batch_occupancy": 1.0, "requests_waiting": 30,
      "step_tokens_share": 0.95, "step_tokens_p99": 2048},
     {"max_num_seqs", "max_num_batched_tokens"}),
])
def test_batch_limits_raises_only_the_limit_that_binds(overrides: dict[str, float], raised: set[str]) -> None:
    found = fired(facts(**overrides), only="low_gpu_utilization")["low_gpu_utilization"]
    assert found["cause"] == "batch_limits"
    keys = {k for r in found["remedies"] for k in r["config_delta"]} & {"max_num_seqs", "max_num_batched_tokens"}
    assert keys == raised


@pytest.mark.parametrize(("p99", "budget", "expected"), [
    (27.5, 512, None),  # steps of ~8-30 tokens never come near 512: doubling it changes no step
    (300, 512, {"max_num_batched_tokens": 1024}),
    (None, 512, {"max_num_batched_tokens": 1024}),  # no step histogram: cannot tell, the remedy stays
])
def test_a_token_budget_no_step_reaches_is_never_raised(p99: float | None, budget: int,
                                                        expected: dict[str, int] | None) -> None:
    from slotune.playbooks.facts import build_facts
    from slotune.playbooks.remedies import raise_max_num_batched_tokens

    f = facts(max_num_batched_tokens=budget, step_tokens_p99=p99)
    f["step_budget_reached"] = None if p99 is None else float(2 * p99 > budget)
    assert raise_max_num_batched_tokens(f, None) == expected
    assert "step_budget_reached" in build_facts(None)


def test_insufficient_data_and_healthy() -> None:
    assert judge([], server_config=CFG).status == "insufficient_data"
    empty = dict.fromkeys(FACTS)
    assert judge([empty], server_config=CFG).status == "insufficient_data"
    d = judge([facts()], server_config=CFG)
    assert (d.status, d.findings) == ("healthy", ())


def test_spec_decode_compares_tpot_with_earlier_windows_without_drafting() -> None:
    cfg = VllmConfig(model="m", speculative_config=SpeculativeConfig(method="ngram", num_speculative_tokens=4))
    before = facts(tpot_p50=0.010, spec_drafts=None)
    # Acceptance 70 % looks fine, but TPOT did not improve on the windows without drafting.
    slower = facts(tpot_p50=0.012, spec_enabled=1, spec_drafts=300, spec_draft_tokens=1200, spec_acceptance_rate=0.7)
    found = judge([before, slower], server_config=cfg, playbooks=[BOOKS["spec_decode_no_speedup"]]).findings
    (f,) = found
    assert f.cause == "no_faster"
    ev = {e.field: e for e in f.evidence}
    assert ev["spec_tpot_speedup"].op == "<=" and abs(ev["spec_tpot_speedup"].value - 0.010 / 0.012) < 1e-9
    assert ev["tpot_p50_without_drafting"].value == 0.010
    assert f.remedies[0].config_delta["speculative_config"]["num_speculative_tokens"] == 2  # K 4 -> 2
    # Faster with drafting: silent.
    faster = facts(tpot_p50=0.006, spec_enabled=1, spec_drafts=300, spec_acceptance_rate=0.7)
    assert judge([before, faster], server_config=cfg, playbooks=[BOOKS["spec_decode_no_speedup"]]).findings == ()


# -- relations and utilization judged with latency ------------------------------------------------

SIDECAR_ONLY = {"slo_burn"}  # the sidecar's own finding (slotune.sidecar.loop.SLO_BURN)


def test_the_table_names_real_findings_and_causes_and_never_excludes_both_ways() -> None:
    from slotune.sidecar.loop import SLO_BURN

    assert {SLO_BURN} == SIDECAR_ONLY
    excludes = set()
    for r in builtin_relations():
        assert r.finding in BOOKS, r
        assert set(r.against) <= set(BOOKS) | SIDECAR_ONLY, r
        assert set(r.causes or ()) <= {c.id for c in BOOKS[r.finding].causes}, r
        if r.effect == "exclude":
            excludes |= {(r.finding, a) for a in r.against}
    assert not {(a, b) for a, b in excludes if (b, a) in excludes}


# Underused by its own rule (2 in flight on 128 slots, no preemptions), and a KV cache 97 % full.
KV_AND_IDLE = {"mean_concurrency": 2, "batch_occupancy": 2 / 128, "kv_cache_usage": 0.97}


def test_the_engine_drops_underused_while_the_kv_cache_limits_the_batch() -> None:
    f = facts(**KV_AND_IDLE)
    assert "low_gpu_utilization" in fired(f, only="low_gpu_utilization")  # each rule alone fires
    assert "kv_cache_pressure" in fired(f, only="kv_cache_pressure")
    d = judge([f], playbooks=list(BOOKS.values()))
    assert {x.playbook for x in d.findings} == {"kv_cache_pressure"}
    assert any(n.startswith("low_gpu_utilization left out while kv_cache_pressure is active") for n in d.notes)


def test_queueing_for_ttft_is_qualified_by_kv_pressure() -> None:
    found = fired(facts(ttft_at_slo=0.9, ttft_queue_share=0.8, kv_cache_usage=0.97))
    assert found["high_ttft"]["cause"] == "queueing"
    assert "KV-cache room" in found["high_ttft"]["summary"]
    assert "KV-cache room" not in fired(facts(ttft_at_slo=0.9, ttft_queue_share=0.8))["high_ttft"]["summary"]


@pytest.mark.parametrize(("cause", "kept"), [("low_offered_load", False), ("client_bottleneck", False),
                                             ("batch_limits", False), ("host_cpu", True), ("compute_per_step", True)])
def test_the_sidecars_burn_excludes_underused_but_not_a_compute_limit(cause: str, kept: bool) -> None:
    found: list[dict[str, Any]] = [{"playbook": "slo_burn", "summary": "burning"},
                                   {"playbook": "low_gpu_utilization", "cause": cause, "summary": "s"}]
    out, notes = apply_to_dicts(found)
    assert [f["playbook"] for f in out] == (["slo_burn", "low_gpu_utilization"] if kept else ["slo_burn"])
    assert bool(notes) is not kept
    assert decide([("low_gpu_utilization", cause)]) == [None]  # alone, nothing to settle


# Issue 18's window: TPOT p95 400 ms against a 50 ms target, 20 requests in flight on 128 slots,
# 2.56 tokens per step against 2048, on the CPU backend.
SATURATED_CPU = {"tpot_p95": 0.4, "tpot_at_slo": 0.4, "tpot_p50": 0.3, "latency_slo_ratio": 8.0, "tpot_slo_ratio": 8.0,
                 "cpu_backend": 1,
                 "mean_concurrency": 20, "batch_occupancy": 20 / 128, "step_tokens_mean": 2.56,
                 "step_tokens_share": 2.56 / 2048, "requests_running": 20}


def _actions(f: dict[str, Any]) -> list[str]:
    return [r["action"] for r in f["remedies"]]


def test_underused_batch_with_burning_latency_names_the_host_cpu_and_never_asks_for_load() -> None:
    f = fired(facts(**SATURATED_CPU), slo="ttft_p95<=500ms,tpot_p95<=50ms")["low_gpu_utilization"]
    assert f["cause"] == "host_cpu"
    assert "host's CPU" in f["summary"] and "underused" not in f["summary"]
    assert not any("concurrency" in a.lower() or "load" in a.lower() for a in _actions(f))
    deltas = [r["config_delta"] for r in f["remedies"]]
    assert {"max_num_seqs": 10} in deltas  # half the 20 in flight: TPOT protected at TTFT's cost
    assert "Serve a smaller or quantized model" in _actions(f) and "Add replicas" in _actions(f)
    assert "Draft tokens at small batch (speculative decoding)" not in _actions(f)  # not on a CPU


def test_tpot_growing_with_the_batch_is_a_compute_limit_on_an_accelerator() -> None:
    light = facts(mean_concurrency=4, batch_occupancy=4 / 128, tpot_p50=0.02, cpu_backend=0)
    heavy = facts(mean_concurrency=20, batch_occupancy=20 / 128, tpot_p50=0.05, cpu_backend=0)
    f = fired(heavy, windows=[light, heavy])["low_gpu_utilization"]
    assert f["cause"] == "compute_per_step"
    growth = next(e for e in f["evidence"] if e["field"] == "tpot_batch_growth")
    assert growth["value"] == pytest.approx(2.5)
    assert "Draft tokens at small batch (speculative decoding)" in _actions(f)
    assert not any("concurrency" in a.lower() for a in _actions(f))
    # The same batch without the lighter window to compare with: nothing says the steps slow down.
    assert fired(heavy)["low_gpu_utilization"]["cause"] == "low_offered_load"


def test_a_prefill_budget_no_step_reaches_is_not_lowered() -> None:
    # Beyond the knee on the real model (16 short prompts at once on one CPU core): TTFT is mostly
    # "prefill" because every step is shared, and the steps hold ~65 tokens against a 2048 budget.
    # Halving the budget would cut no step: the remedy is left out. Steps that fill it keep it.
    slow = {"ttft_at_slo": 9.4, "ttft_queue_share": 0.0, "ttft_prefill_share": 1.0, "prompt_len_p95": 3000}
    lower = "Lower max_num_batched_tokens"
    assert lower not in _actions(fired(facts(**slow, step_tokens_p99=120))["high_ttft"])
    kept = fired(facts(**slow, step_tokens_p99=1900))["high_ttft"]
    assert {"max_num_batched_tokens": 1024} in [r["config_delta"] for r in kept["remedies"] if r["action"] == lower]
    # Unmeasured steps: the remedy stays (nothing says it cuts nothing).
    assert lower in _actions(fired(facts(**slow))["high_ttft"])


def test_ttft_of_a_batch_sharing_every_step_is_named_as_such() -> None:
    # The real model beyond its knee: no queue, 14.6 requests in the batch, short prompts.
    busy = {"ttft_at_slo": 9.4, "ttft_queue_share": 0.0, "ttft_prefill_share": 1.0, "batch_requests": 14.6,
            "prompt_len_p95": 90, "step_tokens_p99": 120}
    f = fired(facts(**busy))["high_ttft"]
    assert f["cause"] == "shared_steps" and "14.6 requests sharing each engine step" in f["summary"]
    assert "Add replicas" in _actions(f)
    # One request at a time: its prefill is its own.
    assert fired(facts(**{**busy, "batch_requests": 0.95}))["high_ttft"]["cause"] == "prefill"


def test_underused_needs_every_latency_target_judged_unless_one_surely_misses() -> None:
    # A sidecar tick on the real model beyond its knee: 16 requests finished, none got its first token
    # in the 3 s window, TPOT at half its target. "Offer more load" there fed a TTFT burn.
    idle_batch = {"mean_concurrency": 16, "batch_occupancy": 16 / 128, "latency_slo_ratio": 0.55}
    assert fired(facts(**idle_batch, latency_targets_unjudged=0))["low_gpu_utilization"]["cause"] == "low_offered_load"
    assert "low_gpu_utilization" not in fired(facts(**idle_batch, latency_targets_unjudged=1))
    # A target it can judge surely misses: the compute limit is named, whatever the other target.
    burning = fired(facts(**{**idle_batch, "latency_slo_ratio": 3.0}, latency_targets_unjudged=1, cpu_backend=1))
    assert burning["low_gpu_utilization"]["cause"] == "host_cpu"

"""The remedies the tuner's space needs (issue 16): n-gram drafting when TPOT misses at small batch,
a small prefill budget when long prompts stall the decodes; each fires on its evidence and not on
the look-alikes, and its config delta lands in the search space as a trial's params."""

from __future__ import annotations

from typing import Any

import pytest

from slotune import platforms
from slotune.collectors.snapshot import Quantiles, Snapshot
from slotune.playbooks.engine import judge
from slotune.playbooks.facts import FACTS, Facts, _budget_to_cut, _div, build_facts
from slotune.playbooks.model import builtin_playbooks
from slotune.slo import SloSpec
from slotune.tuner.space import LOOKUP_MAX, LOOKUP_MIN, SPEC_METHOD, SPEC_TOKENS, SearchSpace
from slotune.vllm_config import VllmConfig

BOOKS = {pb.id: pb for pb in builtin_playbooks()}
CFG = VllmConfig(model="m")

# One stream decoding slowly (the real model at concurrency 1): TPOT p95 40 ms, short prompts.
SLOW_ONE_STREAM: dict[str, float] = {
    "window_seconds": 60, "requests_finished": 20, "nvml_available": 0, "cpu_backend": 1,
    "tpot_p50": 0.019, "tpot_p95": 0.04, "tpot_at_slo": 0.04, "itl_p50": 0.019, "itl_p99": 0.03,
    "itl_at_slo": 0.025, "itl_p99_over_p50": 1.6, "mean_concurrency": 1.0, "max_num_seqs": 128,
    "max_num_batched_tokens": 2048, "spec_enabled": 0, "chunked_prefill_enabled": 1,
    "prompt_len_p50": 300, "prompt_len_p95": 400, "output_len_p50": 200,
}
# Long prompts arriving while others decode: ITL p99 1.6 s against a p50 of 40 ms.
STALLS: dict[str, float] = {
    **SLOW_ONE_STREAM, "mean_concurrency": 6.0, "tpot_p50": 0.25, "tpot_p95": 0.4, "tpot_at_slo": 0.4,
    "itl_p50": 0.04, "itl_p99": 1.6, "itl_at_slo": 0.9, "itl_p99_over_p50": 40.0,
    "prompt_len_p50": 1024, "prompt_len_p95": 1024, "prefill_mean": 1.2,
    "prefill_over_itl_p50": 30.0, "itl_p99_over_prefill": 1.33,
}
# The grid's baseline in issue 16 (the real model on one CPU core, concurrency 2): prompts of ~200
# tokens, each prefill 0.65 s = 5 decode steps; ITL p99 0.6 s, 4.8x its p50.
CPU_STALLS: dict[str, float] = {
    **SLOW_ONE_STREAM, "mean_concurrency": 1.94, "tpot_p50": 0.134, "tpot_p95": 0.159, "tpot_at_slo": 0.159,
    "itl_p50": 0.125, "itl_p99": 0.599, "itl_at_slo": 0.159, "itl_p99_over_p50": 4.8,
    "prompt_len_p50": 145, "prompt_len_p95": 194, "prefill_mean": 0.647,
    "prefill_over_itl_p50": 5.2, "itl_p99_over_prefill": 0.93,
}


def facts(base: dict[str, float], **overrides: float | None) -> Facts:
    """The facts of `base` with `overrides`; the budget that cuts the prompts and its two ratios are
    derived as `build_facts` derives them (unless overridden)."""
    f: Facts = dict.fromkeys(FACTS)
    f.update(base)
    f.update(overrides)
    derived = {"prefill_budget_to_cut": _budget_to_cut(f["prompt_len_p95"], f["max_num_seqs"])}
    derived["prompt_over_budget_to_cut"] = _div(f["prompt_len_p95"], derived["prefill_budget_to_cut"])
    derived["budget_over_budget_to_cut"] = _div(f["max_num_batched_tokens"], derived["prefill_budget_to_cut"])
    f.update({k: v for k, v in derived.items() if k not in overrides})
    return f


def fired(f: Facts, playbook: str, *, slo: str = "tpot_p95<=25ms", config: VllmConfig = CFG) -> dict[str, Any] | None:
    d = judge([f], slo=SloSpec.parse(slo), server_config=config, playbooks=[BOOKS[playbook]])
    return next((x.to_dict() for x in d.findings), None)


NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}


def test_tpot_missed_at_small_batch_proposes_ngram_drafting():
    f = fired(facts(SLOW_ONE_STREAM), "slow_decode_small_batch")
    assert f is not None and f["remedies"][0]["config_delta"] == {"speculative_config": NGRAM}
    assert "TPOT 0.04 s is above its target of 0.025 s" in f["summary"]


@pytest.mark.parametrize(("why", "overrides", "slo"), [
    ("TPOT met", {}, "tpot_p95<=50ms"),
    ("a large batch: verification competes with other decodes", {"mean_concurrency": 24.0}, "tpot_p95<=25ms"),
    ("drafting already on (spec_decode_no_speedup judges it)", {"spec_enabled": 1}, "tpot_p95<=25ms"),
    ("no window of requests in flight", {"mean_concurrency": None}, "tpot_p95<=25ms"),
])
def test_ngram_drafting_is_not_proposed_on_the_wrong_evidence(why, overrides, slo):
    assert fired(facts(SLOW_ONE_STREAM, **overrides), "slow_decode_small_batch", slo=slo) is None, why


def test_long_prompts_stalling_decodes_propose_a_small_prefill_budget():
    f = fired(facts(STALLS), "prefill_stalls_decode")
    assert f is not None
    assert f["remedies"][0]["config_delta"] == {"max_num_batched_tokens": 256, "enable_chunked_prefill": True}
    # The budget never goes below the batch limit (vLLM refuses that).
    f = fired(facts(STALLS, max_num_seqs=512, max_num_batched_tokens=8192), "prefill_stalls_decode")
    assert f["remedies"][0]["config_delta"]["max_num_batched_tokens"] == 512
    # ... and where that limit keeps it above the prompts, nothing would be cut: no finding.
    assert fired(facts(STALLS, max_num_seqs=2048, max_num_batched_tokens=8192), "prefill_stalls_decode") is None


def test_a_prefill_that_lasts_several_decode_steps_stalls_them_whatever_its_tokens():
    # On one CPU core a 200-token prefill is a long step: the rule once asked for 512 tokens and
    # stayed silent here, against an ITL target too. The budget it proposes cuts these prompts (256
    # would not).
    f = fired(facts(CPU_STALLS, itl_slo_ratio=0.159 / 0.15), "prefill_stalls_decode", slo="itl_p95<=150ms")
    assert f is not None
    assert f["remedies"][0]["config_delta"] == {"max_num_batched_tokens": 128, "enable_chunked_prefill": True}
    # Against TPOT alone, no: a budget cut spreads a prefill's delay over more tokens of the decodes
    # it overlaps, and their TPOT keeps it (measured: no goodput gain under a TPOT target).
    assert fired(facts(CPU_STALLS), "prefill_stalls_decode", slo="tpot_p95<=60ms") is None
    # The same evidence of long prefills in 200-token prompts fires against the user's ITL target.
    assert fired(facts(STALLS, **ITL_TARGET, prompt_len_p95=200), "prefill_stalls_decode",
                 slo="tpot_p95<=25ms,itl_p95<=100ms") is not None
    # A 256-token budget does not cut 200-token prompts: the rule fires there too, for 128.
    at_256 = fired(facts(CPU_STALLS, itl_slo_ratio=0.159 / 0.15, max_num_batched_tokens=256),
                   "prefill_stalls_decode", slo="itl_p95<=150ms")
    assert at_256["remedies"][0]["config_delta"]["max_num_batched_tokens"] == 128
    # vLLM before 0.7 exports no prefill time: 512-token prompts still count on their own.
    old = facts(STALLS, prefill_mean=None, prefill_over_itl_p50=None, itl_p99_over_prefill=None)
    assert fired(old, "prefill_stalls_decode") is not None


# Against an ITL target of 100 ms (missed 9x): what the time-based test of a long prefill reads.
ITL_TARGET = {"itl_slo_ratio": 9.0}


@pytest.mark.parametrize(("why", "overrides"), [
    ("short prefills: a prefill lasts 2.5 decode steps, the spikes are something else",
     {**ITL_TARGET, "prompt_len_p95": 200, "prefill_mean": 0.1, "prefill_over_itl_p50": 2.5,
      "itl_p99_over_prefill": 16.0}),
    ("stalls far shorter than a prefill: not one prefill per step",
     {**ITL_TARGET, "prompt_len_p95": 200, "itl_p99_over_prefill": 0.3}),
    ("no prefill time (vLLM before 0.7) and short prompts",
     {**ITL_TARGET, "prompt_len_p95": 200, "prefill_mean": None, "prefill_over_itl_p50": None,
      "itl_p99_over_prefill": None}),
    ("long prefills in time but no ITL target of the user's: TPOT keeps a spread delay",
     {"prompt_len_p95": 200}),
    ("prompts no budget cuts (at most the smallest, 128 tokens)", {**ITL_TARGET, "prompt_len_p95": 120}),
    ("steady ITL: nothing stalls", {"itl_p99": 0.06, "itl_p99_over_p50": 1.5}),
    ("the budget is already small", {"max_num_batched_tokens": 256}),
    ("the budget already cuts these 200-token prompts", {**ITL_TARGET, "prompt_len_p95": 200,
                                                           "max_num_batched_tokens": 128}),
    ("every latency target met", {"tpot_at_slo": 0.02, "itl_at_slo": 0.02}),
])
def test_small_budget_is_not_proposed_on_the_wrong_evidence(why, overrides):
    slo = ("tpot_p95<=1s,itl_p95<=1s" if why.startswith("every")
           else "tpot_p95<=25ms,itl_p95<=100ms" if "itl_slo_ratio" in overrides else "tpot_p95<=25ms")
    assert fired(facts(STALLS, **overrides), "prefill_stalls_decode", slo=slo) is None, why


def test_the_remedies_become_trials_in_the_space():
    space = SearchSpace.default(plat=platforms.CPU)
    start = space.baseline_params()
    drafting = space.params_for_delta(start, {"speculative_config": NGRAM})
    assert (drafting[SPEC_METHOD], drafting[SPEC_TOKENS], drafting[LOOKUP_MIN], drafting[LOOKUP_MAX]) == \
        ("ngram", 4, 2, 4)
    budget = space.params_for_delta(start, {"max_num_batched_tokens": 256, "enable_chunked_prefill": True})
    cfg = space.config_for(CFG, budget)
    assert cfg.max_num_batched_tokens == 256 and space.infeasible_reason(cfg) is None


def test_the_long_prefill_facts_come_from_the_windows_histograms():
    # One CPU core's window (issue 16's grid): prefill 0.65 s on average, ITL p50 125 ms and p99 599 ms,
    # prompts of 194 tokens at p95, vLLM's default batch limit of 128.
    def q(p50: float, p99: float, mean: float) -> Quantiles:
        return Quantiles(p50=p50, p95=p99, p99=p99, mean=mean, count=24)

    w = Snapshot(target="http://127.0.0.1:8000", window_start=0.0, window_end=85.0, requests_finished=24.0,
                 itl=q(0.125, 0.599, 0.13), prefill=q(0.6, 0.9, 0.647), prompt_tokens=q(145, 194, 127))
    f = build_facts(w, slo=SloSpec.parse("itl_p95<=150ms"), config=VllmConfig(model="m", max_num_seqs=128))
    assert f["prefill_over_itl_p50"] == pytest.approx(0.647 / 0.125)
    assert f["itl_p99_over_prefill"] == pytest.approx(0.599 / 0.647)
    assert f["prefill_budget_to_cut"] == 128 and f["prompt_over_budget_to_cut"] == pytest.approx(194 / 128)

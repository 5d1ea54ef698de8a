"""The search space: choices, validity, narrowing, remedies as params."""

from __future__ import annotations

import optuna
import pytest

from slotune import platforms
from slotune.errors import ConfigError
from slotune.tuner.space import (
    KV_GIB,
    LOOKUP_MAX,
    LOOKUP_MIN,
    SPEC_MAX_BATCH,
    SPEC_METHOD,
    SPEC_TOKENS,
    SearchSpace,
)
from slotune.vllm_config import VllmConfig

BASE = VllmConfig(model="/models/m")


def space(**kw) -> SearchSpace:
    return SearchSpace.default(plat=platforms.CPU, **kw)


def test_every_dimension_maps_to_a_tunable_flag_and_default_first():
    from slotune.vllm_config import FLAG_BY_FIELD

    for d in space().dimensions:
        assert FLAG_BY_FIELD[d.field].tunable, d.name
        if d.requires is None:
            assert d.choices[0] is None, f"{d.name}: vLLM's default must be a choice"


def test_backend_choices_only():
    s = space()
    assert s.dimension("quantization").choices == (None,)
    assert "fp8" not in s.dimension("kv_cache_dtype").choices
    assert "fp8" in SearchSpace.default(plat=platforms.GPU).dimension("kv_cache_dtype").choices


def test_vllm_default_kv_dtype_is_not_searched_twice_under_another_name():
    assert space().dimension("kv_cache_dtype").choices == (None,)
    assert SearchSpace.default(plat=platforms.GPU).dimension("kv_cache_dtype").choices == (None, "fp8")


def test_unsupported_choice_is_infeasible_with_reason():
    s = space().narrowed({"kv_cache_dtype": ["auto", "fp8"]})
    cfg = s.config_for(BASE, {"kv_cache_dtype": "fp8"})
    reason = s.infeasible_reason(cfg)
    assert reason and "fp8" in reason and "cpu" in reason
    assert s.infeasible_reason(s.config_for(BASE, {"kv_cache_dtype": "auto"})) is None


def test_rejected_combination_is_infeasible():
    s = space()
    cfg = s.config_for(BASE, {"max_num_seqs": 256, "max_num_batched_tokens": 128})
    assert "max_num_seqs" in s.infeasible_reason(cfg)


def test_max_model_len_never_below_the_workload_need_nor_above_the_model():
    s = space(min_model_len=1500, model_max_len=4096)
    assert s.dimension("max_model_len").choices == (None, 2048, 4096)
    with pytest.raises(ConfigError, match="below what the workload needs"):
        s.narrowed({"max_model_len": [1024, 2048]})
    with pytest.raises(ConfigError, match="needs 9000 tokens"):
        space(min_model_len=9000, model_max_len=4096)


def test_sampling_stays_in_the_space_and_respects_conditions():
    s = space().narrowed({"max_num_seqs": [8, 16]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_k = False
    for _ in range(40):
        t = study.ask()
        p = s.suggest(t)
        assert p["max_num_seqs"] in (8, 16)
        if p[SPEC_METHOD] is None:
            assert SPEC_TOKENS not in p
        else:
            seen_k = True
            cfg = s.config_for(BASE, p)
            assert cfg.speculative_config.num_speculative_tokens == p[SPEC_TOKENS]
        study.tell(t, 1.0)
    assert seen_k


def test_baseline_params_give_vllms_default_config():
    s = space().with_fixes(["enable_prefix_caching=true"])
    assert s.config_for(BASE, s.baseline_params(), apply_fixed=False) == BASE
    assert s.config_for(BASE, s.baseline_params()).enable_prefix_caching is True


def test_narrowing_file_fix_and_range(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("max-num-seqs: [16, 32]\nmax_num_batched_tokens: {min: 1024, max: 4096}\n"
                 "speculative_method: null\nenable_chunked_prefill: true\n")
    s = space().with_file(f)
    names = [d.name for d in s.dimensions]
    assert "enable_chunked_prefill" not in names and s.fixed["enable_chunked_prefill"] is True
    assert s.fixed[SPEC_METHOD] is None and SPEC_TOKENS in names  # K stays, but is never asked
    assert s.dimension("max_num_seqs").choices == (16, 32)
    assert s.dimension("max_num_batched_tokens").choices == (1024, 2048, 4096)
    assert s.size() == 2 * 3 * 7 * 3 * 1 * 1  # seqs, budget, model_len, prefix, quant, kv (default only)


@pytest.mark.parametrize("fix,msg", [
    ("nonsense=1", "unknown dimension 'nonsense'"),
    ("max_num_seqs=many", "takes int"),
    ("max_num_seqs", "NAME=VALUE"),
    ("speculative_method=telepathy", "unknown speculative method"),
])
def test_bad_narrowing_is_one_clear_error(fix, msg):
    with pytest.raises(ConfigError, match=msg):
        space().with_fixes([fix])


def test_remedy_delta_snaps_to_choices():
    s = space()
    start = s.baseline_params()
    p = s.params_for_delta(start, {"max_num_seqs": 60, "enable_chunked_prefill": True, "gpu_memory_utilization": 0.9})
    assert p["max_num_seqs"] == 64 and p["enable_chunked_prefill"] is True
    p = s.params_for_delta(start, {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3}})
    assert p[SPEC_METHOD] == "ngram" and p[SPEC_TOKENS] == 3
    assert s.params_for_delta(start, {"gpu_memory_utilization": 0.8}) is None  # nothing expressible
    assert s.params_for_delta(start, {"max_num_seqs": None}) is None  # no change


def test_serve_line_parses_back_to_the_same_config():
    from slotune.tuner.command import parse_serve_command

    s = space()
    cfg = s.config_for(BASE, {"max_num_seqs": 16, "enable_prefix_caching": False, SPEC_METHOD: "ngram",
                              SPEC_TOKENS: 3}).with_changes(env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert parse_serve_command(cfg.serve_command()) == cfg
    assert parse_serve_command(BASE.serve_command()) == BASE
    with pytest.raises(ConfigError, match="unknown flag"):
        parse_serve_command("vllm serve m --trust-me")


# -- the dimensions that move the real bottlenecks (issue 16, item 2) --------------------------------


def test_ngram_window_is_searched_only_with_ngram_and_reaches_the_config():
    s = space().narrowed({SPEC_METHOD: [None, "ngram", "suffix"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(60):
        t = study.ask()
        p = s.suggest(t)
        seen.add(p[SPEC_METHOD])
        if p[SPEC_METHOD] == "ngram":
            spec = s.config_for(BASE, p).speculative_config
            assert (spec.prompt_lookup_min, spec.prompt_lookup_max) == (p[LOOKUP_MIN], p[LOOKUP_MAX])
        else:
            assert LOOKUP_MIN not in p and LOOKUP_MAX not in p
        study.tell(t, 1.0)
    assert seen == {None, "ngram", "suffix"}
    assert s.config_for(BASE, {SPEC_METHOD: "suffix", SPEC_TOKENS: 2}).speculative_config.prompt_lookup_min is None


def test_ngram_window_min_above_max_is_refused_before_launch():
    with pytest.raises(ConfigError, match="no n-gram window"):
        space().narrowed({LOOKUP_MIN: [4, 5], LOOKUP_MAX: [2, 3]})
    with pytest.raises(ConfigError, match="prompt_lookup_min"):
        space().with_fixes(["prompt_lookup_min=5", "prompt_lookup_max=3"])
    s = space().narrowed({LOOKUP_MIN: [1, 4], LOOKUP_MAX: [3, 5]})  # some pairs cross, some do not
    bad = s.config_for(BASE, {SPEC_METHOD: "ngram", SPEC_TOKENS: 2, LOOKUP_MIN: 4, LOOKUP_MAX: 3})
    assert "prompt_lookup_min (4) must be <= prompt_lookup_max (3)" in s.infeasible_reason(bad)
    ok = s.config_for(BASE, {SPEC_METHOD: "ngram", SPEC_TOKENS: 2, LOOKUP_MIN: 4, LOOKUP_MAX: 5})
    assert s.infeasible_reason(ok) is None
    # Built-in choices never cross.
    d = space()
    assert max(d.dimension(LOOKUP_MIN).choices) <= min(d.dimension(LOOKUP_MAX).choices)


def test_small_prefill_budgets_and_batches_are_choices_with_what_vllm_refuses_refused():
    cpu, gpu = space(model_max_len=8192), SearchSpace.default(plat=platforms.GPU, model_max_len=8192)
    assert {128, 256} <= set(cpu.dimension("max_num_batched_tokens").choices)
    assert {1, 2, 4} <= set(cpu.dimension("max_num_seqs").choices)
    assert 1 not in gpu.dimension("max_num_seqs").choices  # small batches are a CPU matter
    # Chunked prefill (vLLM's default) lets a 128-token budget sit below max_model_len ...
    assert cpu.infeasible_reason(cpu.config_for(BASE, {"max_num_batched_tokens": 128})) is None
    # ... not with chunked prefill off (the model's own 8192 tokens would never fit a step).
    off = cpu.config_for(BASE, {"max_num_batched_tokens": 256, "enable_chunked_prefill": False})
    assert "max_model_len (8192)" in cpu.infeasible_reason(off)
    # Never below the batch limit: the configured one, or vLLM's default where unset (CPU 128, GPU 256).
    assert "max_num_seqs (256)" in cpu.infeasible_reason(cpu.config_for(
        BASE, {"max_num_batched_tokens": 128, "max_num_seqs": 256}))
    assert "default max_num_seqs" in gpu.infeasible_reason(gpu.config_for(BASE, {"max_num_batched_tokens": 128}))
    assert gpu.infeasible_reason(gpu.config_for(BASE, {"max_num_batched_tokens": 128, "max_num_seqs": 64})) is None


def test_kv_cache_size_is_searched_only_under_the_users_ceiling():
    assert KV_GIB not in space().names()
    with pytest.raises(ConfigError, match="--kv-cache-max-gib"):
        space().with_fixes(["kv_cache_gib=2"])
    s = space(kv_cache_max_gib=6)
    assert s.dimension(KV_GIB).choices == (None, 2, 4, 6)  # 1 GiB is slotune's CPU default already
    cfg = s.config_for(BASE.with_changes(env={"OMP_NUM_THREADS": "2"}), {KV_GIB: 4})
    assert cfg.env == {"OMP_NUM_THREADS": "2", "VLLM_CPU_KVCACHE_SPACE": "4"} and cfg.kv_cache_memory_bytes is None
    assert s.config_for(BASE, {KV_GIB: None}) == BASE
    g = SearchSpace.default(plat=platforms.GPU, kv_cache_max_gib=8)
    assert g.dimension(KV_GIB).choices == (None, 1, 2, 4, 8)
    assert g.config_for(BASE, {KV_GIB: 2}).kv_cache_memory_bytes == 2 * 2**30
    # Nothing above the ceiling: not a choice, not a fix, not a launch, not a remedy.
    for bad in ({KV_GIB: [4, 8]}, {KV_GIB: 12}, {KV_GIB: {"min": 1, "max": 64}}):
        if isinstance(bad[KV_GIB], dict):
            assert max(c for c in s.narrowed(bad).dimension(KV_GIB).choices if c) <= 6
        else:
            with pytest.raises(ConfigError, match="above the KV-cache ceiling of 6 GiB"):
                s.narrowed(bad)
    assert "above the ceiling" in s.infeasible_reason(BASE.with_changes(env={"VLLM_CPU_KVCACHE_SPACE": "16"}))
    p = s.params_for_delta(s.baseline_params(), {"env": {"VLLM_CPU_KVCACHE_SPACE": "32"}})
    assert p[KV_GIB] == 6
    with pytest.raises(ConfigError, match="at least 1 GiB"):
        space(kv_cache_max_gib=0)


def test_speculation_by_load_becomes_vllms_schedule():
    s = space()
    cfg = s.config_for(BASE, {SPEC_METHOD: "ngram", SPEC_TOKENS: 4, SPEC_MAX_BATCH: 2})
    assert cfg.speculative_config.num_speculative_tokens_per_batch_size == [(1, 2, 4), (3, 3, 0)]
    assert s.infeasible_reason(cfg) is None
    from slotune.tuner.command import parse_serve_command

    assert parse_serve_command(cfg.serve_command()) == cfg
    assert s.config_for(BASE, {SPEC_METHOD: "ngram", SPEC_TOKENS: 4}).speculative_config \
        .num_speculative_tokens_per_batch_size is None  # default: K at every batch size
    # K is off when drafting is: the schedule dimension is asked only with a method.
    assert SPEC_MAX_BATCH not in s.grid()[0]


@pytest.mark.parametrize(("max_batch", "max_num_seqs", "duplicate"), [
    (4, 4, True),   # K up to 4 per step, and no step holds more than 4: K everywhere
    (8, 4, True),
    (2, 4, False),  # K up to 2, none at 3 and 4: a schedule that changes something
    (8, None, False),  # vLLM's CPU default (128 requests per step) is above 8
])
def test_a_schedule_that_reaches_max_num_seqs_is_a_duplicate_never_launched(max_batch, max_num_seqs, duplicate):
    s = space()
    params = {SPEC_METHOD: "ngram", SPEC_TOKENS: 4, SPEC_MAX_BATCH: max_batch}
    if max_num_seqs is not None:
        params["max_num_seqs"] = max_num_seqs
    reason = s.infeasible_reason(s.config_for(BASE, params))
    if duplicate:
        assert "the same server as no schedule" in reason
    else:
        assert reason is None


@pytest.mark.parametrize(("schedule", "msg"), [
    ([[2, 4, 3]], "must start at 1"),
    ([[1, 4, 3], [3, 8, 1]], "must not overlap"),
    ([[1, 4, -1]], ">= 0"),
    ([[1, 0, 2]], "start <= end"),
    ([], "must not be empty"),
])
def test_bad_schedules_are_refused_like_vllm_does(schedule, msg):
    with pytest.raises(ConfigError, match=msg):
        VllmConfig.from_mapping({"model": "m", "speculative_config": {
            "method": "ngram", "num_speculative_tokens": 4, "num_speculative_tokens_per_batch_size": schedule}})


def test_schedule_k_above_the_config_k_is_infeasible():
    cfg = VllmConfig.from_mapping({"model": "m", "speculative_config": {
        "method": "ngram", "num_speculative_tokens": 2, "num_speculative_tokens_per_batch_size": [[1, 4, 3]]}})
    assert "K=3 above num_speculative_tokens (2)" in space().infeasible_reason(cfg)


def test_remedy_with_ngram_window_snaps_into_the_space():
    s = space()
    p = s.params_for_delta(s.baseline_params(), {"speculative_config": {
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}})
    assert (p[SPEC_METHOD], p[SPEC_TOKENS], p[LOOKUP_MIN], p[LOOKUP_MAX]) == ("ngram", 4, 2, 4)
    assert s.params_for_delta(p, {"speculative_config": None})[SPEC_METHOD] is None
    assert LOOKUP_MIN not in s.params_for_delta(p, {"speculative_config": None})


def test_an_ngram_window_end_fixed_at_default_is_not_compared():
    # vLLM fills a default end from the other one: nothing to cross (this was a TypeError once).
    assert space().with_fixes(["prompt_lookup_max=default", "prompt_lookup_min=4"]) is not None
    assert space().narrowed({LOOKUP_MIN: "default"}) is not None
    with pytest.raises(ConfigError, match="at most 64"):
        space().narrowed({LOOKUP_MAX: [4, 100]})


@pytest.mark.parametrize("seed", range(8))
def test_a_remedy_is_measured_as_proposed_never_partly_sampled(seed):
    # A remedy that turns n-gram drafting on names no K-by-batch schedule: Optuna must not draw one
    # (a drawn schedule once made the remedy trial a duplicate of another, so it was never measured).
    s = space()
    p = s.params_for_delta(s.baseline_params(), {"speculative_config": {
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}})
    assert p[SPEC_MAX_BATCH] is None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.enqueue_trial(p)
    trial = study.ask()
    assert s.suggest(trial) == p
    assert "num_speculative_tokens_per_batch_size" not in s.config_for(BASE, p).speculative_config.model_dump(
        exclude_none=True)
    bare = s.params_for_delta(s.baseline_params(), {"speculative_config": {"method": "ngram"}})
    assert (bare[SPEC_TOKENS], bare[LOOKUP_MIN], bare[LOOKUP_MAX], bare[SPEC_MAX_BATCH]) == (1, 2, 4, None)

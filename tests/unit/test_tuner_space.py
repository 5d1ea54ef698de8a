"""The search space: choices, validity, narrowing, remedies as params."""

from __future__ import annotations

import optuna
import pytest

from slotune import platforms
from slotune.errors import ConfigError
from slotune.tuner.space import SPEC_METHOD, SPEC_TOKENS, SearchSpace
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

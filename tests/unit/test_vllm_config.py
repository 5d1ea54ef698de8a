import json
import sys

import pytest

from slotune.errors import ConfigError
from slotune.vllm_config import FLAGS, VllmConfig, validate_combination


def test_flag_table_names_each_field_once():
    fields = [f.field for f in FLAGS]
    flags = [f.flag for f in FLAGS]
    assert len(fields) == len(set(fields)) and len(flags) == len(set(flags))
    assert set(fields) <= set(VllmConfig.model_fields)


def test_argv_is_a_vector_built_from_the_allow_list():
    cfg = VllmConfig(
        model="/models/tiny",
        max_num_seqs=8,
        enable_chunked_prefill=False,
        enable_prefix_caching=True,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3},
    )
    argv = cfg.launch_argv(8123)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    assert "--no-enable-chunked-prefill" in argv and "--enable-prefix-caching" in argv
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec == {"method": "ngram", "num_speculative_tokens": 3}


def test_serve_command_is_what_a_user_pastes():
    cfg = VllmConfig(model="/m", max_num_seqs=4, env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert cfg.serve_command() == "VLLM_CPU_KVCACHE_SPACE=2 vllm serve /m --max-num-seqs 4"


def test_baseline_sets_no_tunable_flag():
    assert VllmConfig(model="/m").tuned_params() == {}


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"model": "/m", "max_num_seq": 4}, "unknown flag 'max_num_seq'"),
        ({"model": "/m; rm -rf /"}, "not allowed on a command line"),
        # A path with a space is refused with the character and the way round it, not only "not allowed".
        ({"model": "/models/my model"}, "(' '; the printed `vllm serve` line must paste unquoted"),
        ({"model": "/models/my model"}, "use a symlink without one"),
        ({"model": ""}, "model: is empty"),
        ({"model": "/m", "dtype": "auto`id`"}, "not allowed on a command line"),
        ({"model": "/m", "served_model_name": "$(reboot)"}, "not allowed on a command line"),
        ({"model": "/m", "env": {"LD_PRELOAD": "/x.so"}}, "LD_PRELOAD"),
        ({"model": "/m", "max_num_seqs": 0}, "max_num_seqs"),
        ({"model": "/m", "speculative_config": {"method": "bogus", "num_speculative_tokens": 3}}, "bogus"),
        # A value that becomes a command-line argument may not start with '-': vLLM would read it as a flag.
        ({"model": "--trust-remote-code"}, "starts with '-'"),
        ({"model": "-m"}, "starts with '-'"),
        ({"model": "/m", "served_model_name": "--api-key=x"}, "starts with '-'"),
        ({"model": "/m", "dtype": "--enforce-eager"}, "starts with '-'"),
        ({"model": "/m", "quantization": "-q"}, "starts with '-'"),
        ({"model": "/m", "kv_cache_dtype": "--x"}, "starts with '-'"),
        ({"model": "/m", "host": "--port=1"}, "host"),
        ({"model": "/m", "speculative_config": {"method": "eagle", "num_speculative_tokens": 2,
                                                "model": "--trust-remote-code"}}, "starts with '-'"),
    ],
)
def test_bad_configs_are_refused_with_one_line(data, fragment):
    with pytest.raises(ConfigError) as err:
        VllmConfig.from_mapping(data, source="cfg.yaml")
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and msg.startswith("cfg.yaml:")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        ({"max_num_seqs": 8, "max_num_batched_tokens": 4}, "must be >= max_num_seqs"),
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 256, "max_model_len": 1024}, "chunked"),
        ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "model": "/d"}}, "no draft"),
    ],
)
def test_combinations_vllm_rejects(flags, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate_combination(VllmConfig(model="/m", **flags))


def test_valid_combinations_pass():
    validate_combination(VllmConfig(model="/m", max_num_seqs=8, max_num_batched_tokens=8))
    validate_combination(
        VllmConfig(model="/m", enable_chunked_prefill=True, max_num_batched_tokens=256, max_model_len=1024)
    )


def test_flag_file_round_trips_through_yaml():
    import yaml

    cfg = VllmConfig(model="/m", max_num_seqs=4, enable_prefix_caching=False)
    data = yaml.safe_load(cfg.flag_file())
    assert data == {"model": "/m", "max-num-seqs": 4, "enable-prefix-caching": False}
    # An environment variable is no vLLM flag: a comment says what to export.
    with_env = cfg.model_copy(update={"env": {"VLLM_CPU_KVCACHE_SPACE": "4"}}).flag_file()
    assert with_env.startswith("# export VLLM_CPU_KVCACHE_SPACE=4 ") and yaml.safe_load(with_env) == data


def test_environment_values_are_not_arguments():
    # CUDA_VISIBLE_DEVICES=-1 hides every GPU: a value, never parsed as a flag.
    assert VllmConfig(model="/m", env={"CUDA_VISIBLE_DEVICES": "-1"}).env == {"CUDA_VISIBLE_DEVICES": "-1"}


def test_tuning_only_refuses_identity_network_and_environment_changes():
    from slotune.vllm_config import FIXED_FIELDS, check_tuning_only, fixed_changes

    base = VllmConfig(model="/m", port=8001, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert set(FIXED_FIELDS) == {"model", "served_model_name", "host", "port", "env"}
    assert fixed_changes(base, {"max_num_seqs": 8}) == []
    assert fixed_changes(base, base.model_dump(mode="json", exclude_none=True) | {"max_num_seqs": 8}) == []
    assert fixed_changes(base, {"model": "/other", "host": "0.0.0.0", "port": 9, "served_model_name": "x",
                                "env": {"CUDA_VISIBLE_DEVICES": "1"}}) == list(FIXED_FIELDS)
    # the draft model is a path like the model: K may change, the weights may not
    assert fixed_changes(base, {"speculative_config": {"method": "ngram", "num_speculative_tokens": 2}}) == []
    assert fixed_changes(base, {"speculative_config": {"method": "eagle", "model": "/evil",
                                                       "num_speculative_tokens": 2}}) == ["speculative_config.model"]
    assert fixed_changes(None, {"model": "/m"}) == ["model"]
    with pytest.raises(ConfigError) as err:
        check_tuning_only(base, {"host": "0.0.0.0"}, source="proposal")
    assert str(err.value).startswith("proposal: may change tuning flags only, not host")

"""`diagnose --serve-command` reads a real `vllm serve` line as vLLM 0.32's own parser does (review 3):
`--flag=value`, short aliases, every flag vLLM knows (those slotune does not tune are skipped and
named), and only a flag vLLM itself does not know is an error. The list of flags is data generated
from vLLM's parser; it is checked here against the installed vLLM and the shared reference dump."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from slotune.cli.main import main
from slotune.errors import ConfigError
from slotune.tuner.command import parse_serve_command, parse_serve_line
from slotune.vllm_config import FLAGS, VllmConfig, human_readable_int, serve_flags
from tests.support.paths import SHARED

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def test_an_ordinary_production_line_is_read() -> None:
    line = (f"vllm serve {LLAMA} --max-num-seqs=64 -tp 2 --trust-remote-code --api-key abc "
            "--pipeline-parallel-size 2 --generation-config vllm --enable-log-requests --max_num_batched_tokens 8k "
            "-O3 --no-enable-prefix-caching --port=8000 --host 0.0.0.0")
    parsed = parse_serve_line(line)
    assert parsed.config == VllmConfig(model=LLAMA, max_num_seqs=64, tensor_parallel_size=2, max_num_batched_tokens=8000,
                                       optimization_level=3, enable_prefix_caching=False, port=8000, host="0.0.0.0")
    assert parsed.skipped == ("--trust-remote-code", "--api-key", "--pipeline-parallel-size", "--generation-config",
                              "--enable-log-requests")


@pytest.mark.parametrize(("line", "expected"), [
    ("vllm serve m -tp=2", {"tensor_parallel_size": 2}),
    ("vllm serve m -pp 2 -q fp8", {"quantization": "fp8"}),
    ("vllm serve --model m --max-num-seq 8", {"max_num_seqs": 8}),  # --model, and argparse's unique prefix
    ("vllm serve m --max-model-len 32K", {"max_model_len": 32768}),
    ("vllm serve m --max-model-len auto", {}),
    ("vllm serve m -O 2", {"optimization_level": 2}),
    ("vllm serve m --seed -1", {"seed": -1}),
    ("vllm serve m --enforce-eager --no-enforce-eager", {"enforce_eager": False}),  # the last one wins
    ("vllm serve m --no-enable-prefix", {"enable_prefix_caching": False}),  # a prefix of the --no- form
    ("vllm serve m --speculative-config.method ngram --speculative-config.num_speculative_tokens 3 "
     "--speculative-config.prompt_lookup_max=4",
     {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}}),
    ("vllm serve m --api-key k1 k2 --max-num-seqs 4", {"max_num_seqs": 4}),  # a list flag (nargs='+')
])
def test_vllm_syntax(line: str, expected: dict) -> None:
    assert parse_serve_command(line) == VllmConfig.from_mapping({"model": "m", **expected})


@pytest.mark.parametrize(("line", "needle"), [
    ("vllm serve m --trust-me", "unknown flag '--trust-me'"),
    # removed from vLLM before 0.32: vLLM 0.32 refuses them too (not in its parser, see the data file)
    ("vllm serve m --swap-space 4", "unknown flag '--swap-space'"),
    ("vllm serve m --disable-log-requests", "unknown flag '--disable-log-requests'"),
    ("vllm serve m --max-num-seqs", "--max-num-seqs needs a value"),
    ("vllm serve m --max-num-seqs --enforce-eager", "--max-num-seqs needs a value"),
    ("vllm serve m --trust-remote-code=yes", "takes no value"),
    ("vllm serve m --max-num-batched-tokens lots", "not a number"),
    ("vllm serve m x", "unexpected word 'x'"),
    ("vllm serve --max-num-seqs 4", "no model"),
    ("vllm serve m --max-num", "ambiguous"),
])
def test_what_vllm_would_refuse_is_one_line(line: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_serve_command(line)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_human_readable_int_is_vllms() -> None:
    assert [human_readable_int(x) for x in ("25.6k", "1K", "2M", "8192", "1g")] == [25600, 1024, 2 << 20, 8192, 10**9]
    with pytest.raises(ValueError):
        human_readable_int("1.5K")


def test_every_flag_slotune_sets_is_a_vllm_flag_of_the_same_shape() -> None:
    known = serve_flags()
    for f in FLAGS:
        assert f.flag in known, f.flag
        assert (known[f.flag].value == "none") == (f.kind == "bool"), f.flag
        if f.kind == "bool":
            assert "--no-" + f.flag[2:] in known[f.flag].names, f.flag  # the printed line may say --no-X


def test_the_data_file_has_every_flag_of_the_reference_dump() -> None:
    dump = SHARED / "reference" / "vllm-0.32.0" / "engine_args_dump.txt"
    if not dump.is_file():
        pytest.skip(f"{dump} not here")
    names = [n for line in dump.read_text().splitlines() if line.startswith("[")
             for n in ast.literal_eval(line[:line.index("]") + 1])]
    assert len(names) > 200
    assert [n for n in names if n not in serve_flags()] == []


def test_the_data_file_is_what_the_installed_vllm_parser_says() -> None:
    pytest.importorskip("vllm")
    from tests.support.vllm_flags import dump

    shipped = json.loads((Path(__file__).resolve().parents[2] / "slotune" / "vllm_serve_flags.json").read_text())
    assert dump()["flags"] == shipped["flags"], "regenerate: python -m tests.support.vllm_flags > slotune/vllm_serve_flags.json"


def test_diagnose_names_the_skipped_flags_but_never_their_values(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "w.json"
    snap.write_text('{"target": "x", "window_start": 1, "window_end": 2}')
    assert main(["diagnose", "--snapshot", str(snap), "--json", "--serve-command",
                 f"vllm serve {LLAMA} --max-num-seqs=64 -tp 2 --api-key s3cret --trust-remote-code"]) == 0
    out = capsys.readouterr()
    assert re.search(r"^note: the serve line's --api-key, --trust-remote-code are not flags slotune tunes",
                     out.err, re.M), out.err
    assert "s3cret" not in out.err + out.out
    json.loads(out.out)

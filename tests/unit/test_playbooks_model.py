"""Rule files: the built-ins load, user files add or override, malformed files name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slotune.errors import ConfigError
from slotune.playbooks.engine import judge
from slotune.playbooks.facts import FACTS
from slotune.playbooks.model import builtin_playbooks, load_playbooks

IDS = {"low_gpu_utilization", "high_ttft", "kv_cache_pressure", "spec_decode_no_speedup", "inconsistent_latency",
       "slow_decode_small_batch", "prefill_stalls_decode"}

MINIMAL = {
    "id": "many_errors", "title": "Errors", "severity": "critical", "summary": "error rate {error_rate}",
    "params": {"max_errors": 0.05},
    "when": {"all": [{"field": "error_rate", "op": ">", "threshold": "params.max_errors"}]},
    "remedies": [{"action": "Look at the server log", "why": "errors are not a tuning problem"}],
}


def write(tmp_path: Path, data: object, name: str = "mine.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_builtins_are_the_seven() -> None:
    books = builtin_playbooks()
    assert {b.id for b in books} == IDS
    assert all(b.remedies and b.summary for b in books)


def test_a_user_file_adds_a_playbook(tmp_path: Path) -> None:
    books = load_playbooks([write(tmp_path, MINIMAL)])
    assert {b.id for b in books} == IDS | {"many_errors"}
    facts = dict.fromkeys(FACTS) | {"error_rate": 0.2, "requests_finished": 10.0}
    (f,) = judge([facts], playbooks=[b for b in books if b.id == "many_errors"]).findings
    assert (f.playbook, f.summary, f.remedies[0].config_delta) == ("many_errors", "error rate 20%", {})


def test_a_user_file_overrides_a_builtin(tmp_path: Path) -> None:
    mine = {**MINIMAL, "id": "high_ttft", "title": "My TTFT rule"}
    write(tmp_path, mine)
    books = load_playbooks([tmp_path])  # a directory of user files
    assert len(books) == len(IDS)
    assert next(b for b in books if b.id == "high_ttft").title == "My TTFT rule"


@pytest.mark.parametrize(("change", "where", "what"), [
    ({"severity": "urgent"}, "severity", "critical"),
    ({"colour": "red"}, "colour", "Extra inputs"),
    ({"when": {"all": [{"field": "ttft_p97", "op": ">", "threshold": 1}]}}, "when.all.0.field", "unknown fact"),
    ({"when": {"all": [{"field": "ttft_p95", "op": "=>", "threshold": 1}]}}, "when.all.0.op", "'>'"),
    ({"when": {"all": [{"field": "ttft_p95", "op": ">", "threshold": "slo.ttfb"}]}}, "when.all.0.threshold",
     "unknown SLO name"),
    ({"when": {"all": [{"field": "ttft_p95", "op": ">", "threshold": "params.nope"}]}}, "(top level)", "params"),
    ({"when": {"all": [], "any": []}}, "when", "exactly one"),
    ({"remedies": [{"action": "a", "why": "b", "set": {"max_num_seq": 4}}]}, "remedies.0.set", "max_num_seq"),
    ({"remedies": [{"action": "a", "why": "b", "compute": "halve_everything"}]}, "remedies.0.compute",
     "unknown remedy computation"),
    ({"for": 0}, "for", "greater than or equal to 1"),
])
def test_a_malformed_file_names_file_and_field(tmp_path: Path, change: dict, where: str, what: str) -> None:
    path = write(tmp_path, {**MINIMAL, **change})
    with pytest.raises(ConfigError) as err:
        load_playbooks([path])
    msg = str(err.value)
    assert msg.startswith(f"{path}: {where}: "), msg
    assert what in msg
    assert "\n" not in msg


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such playbook file"):
        load_playbooks([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line"):
        load_playbooks([bad])
    listed = write(tmp_path, {"slotune.playbooks": [MINIMAL, {**MINIMAL, "severity": "loud"}]}, "two.yaml")
    with pytest.raises(ConfigError, match=r"two.yaml: playbooks.1: severity: "):
        load_playbooks([listed])

"""`slotune diagnose` offline (--snapshot) and its one-line errors; the live paths are integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slotune.cli.main import main
from slotune.collectors.exposition import parse
from slotune.collectors.vllm_metrics import derive

NGRAM = ('vllm serve tiny --max-num-seqs 8 --speculative-config '
         '\'{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":4,"prompt_lookup_min":2}\'')


@pytest.fixture()
def spec_snapshot(fixtures_dir: Path, tmp_path: Path) -> Path:
    b = parse((fixtures_dir / "vllm-0.32-cpu-specdecode-under-load.prom").read_text(), timestamp=100.0)
    a = parse((fixtures_dir / "vllm-0.32-cpu-specdecode-after-load.prom").read_text(), timestamp=110.0)
    path = tmp_path / "window.jsonl"  # what `slotune collect --json` writes: one object per line
    path.write_text(json.dumps(derive(b, a, target="http://127.0.0.1:8000").to_dict()) + "\n")
    return path


def test_offline_json(spec_snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["diagnose", "--snapshot", str(spec_snapshot), "--serve-command", NGRAM, "--json",
               "--slo", "ttft_p95<=10s,e2e_p95<=10s"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    assert d["status"] == "findings"
    (f,) = d["findings"]
    assert (f["playbook"], f["severity"]) == ("spec_decode_no_speedup", "warning")
    # 1 draft of 3 tokens in the window: named, but no flag change from so small a sample (review 3)
    assert [r["config_delta"] for r in f["remedies"] if r["config_delta"]] == []
    assert "spec_draft_tokens 3" in f["summary"], f["summary"]


def test_offline_table_and_store(spec_snapshot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["diagnose", "--snapshot", str(spec_snapshot), "--save", "--db", db]) == 0
    out = capsys.readouterr().out
    # the window drafted 3 tokens: the finding shows, switching drafting off is held back (review 3)
    assert "spec_decode_no_speedup" in out and "Disable speculative decoding" not in out
    from slotune import store

    with store.open_store(db).session() as s:
        rows = s.query(store.Finding).all()
        assert rows and all(r.snapshot_id is not None for r in rows)


@pytest.mark.parametrize(("args", "rc", "message"), [
    ([], 2, "give exactly one of --target URL, --snapshot FILE or --launch CONFIG"),
    (["--snapshot", "/nonexistent.json"], 1, "/nonexistent.json: cannot read"),
    (["--target", "http://127.0.0.1:1"], 1, "cannot scrape http://127.0.0.1:1/metrics"),
    (["--target", "ftp://x"], 1, "bad target URL"),
    (["--snapshot", "SNAP", "--slo", "ttft<=1s"], 1, "bad SLO target"),
    (["--snapshot", "SNAP", "--playbooks", "BAD"], 1, "bad.yaml: severity: "),
])
def test_errors_are_one_line(args: list[str], rc: int, message: str, spec_snapshot: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\ntitle: t\nseverity: loud\nsummary: s\nwhen: {all: [{field: ttft_p95, op: '>', threshold: 1}]}\n")
    args = [str(spec_snapshot) if a == "SNAP" else str(bad) if a == "BAD" else a for a in args]
    assert main(["diagnose", *args, "--window", "1"]) == rc
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_a_file_that_is_not_a_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.json"
    f.write_text(json.dumps({"hello": 1}))
    assert main(["diagnose", "--snapshot", str(f)]) == 1
    assert "item 0: not a snapshot" in capsys.readouterr().err

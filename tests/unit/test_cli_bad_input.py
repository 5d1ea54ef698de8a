"""Every bad input is one line: each input below once ended in a traceback (issue 15, section 5).

Run in-process through `main()`, so a traceback is an exception that fails the test, and the message
is checked to be a single `error: ...` line naming what was wrong."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from slotune.cli.main import main

NOT_UTF8 = b"model: \xff\xfe\n"


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "not_utf8.yaml": NOT_UTF8,
        "not_utf8.json": b'{"target": "\xff"}',
        "banana_space.yaml": b"max_num_seqs: {min: banana}\n",
        "deep.json": b"[" * 100_000 + b"]" * 100_000,
        "mistyped.json": b'[{"target": "x", "window_start": "soon", "window_end": 2}]',
        "mistyped_quantiles.json": b'[{"target": "x", "window_start": 1, "window_end": 2, "ttft_seconds": 5}]',
        "a_file": b"x",
        "window.json": b'[{"target": "x", "window_start": 1, "window_end": 2}]',
        "not_a.db": b"this is not a SQLite database, though its name says so\n" * 20,
        "infinite.json": b'[{"target": "x", "window_start": 1, "window_end": 2, "kv_cache_usage": Infinity}]',
        # hand-edited snapshots (review 3): each once crashed `diagnose` or was taken silently
        "target_number.json": b'{"target": 5, "window_start": 1, "window_end": 2}',
        "waiting_list.json": b'{"target": "x", "window_start": 1, "window_end": 2, "waiting_by_reason": [1, 2]}',
        "position_text.json": b'{"target": "x", "window_start": 1, "window_end": 2, "spec_decode_per_position": ["a"]}',
        "backwards.json": b'{"target": "x", "window_start": 2, "window_end": 1}',
        "negative.json": b'{"target": "x", "window_start": 1, "window_end": 2, "requests_finished": -3}',
        "share_over_one.json": b'{"target": "x", "window_start": 1, "window_end": 2, "kv_cache_usage": 7}',
        "nested_model.json": (b'{"target": "x", "window_start": 1, "window_end": 2, "per_model": {"m": '
                              b'{"target": "x", "window_start": 1, "window_end": 2, "models": "m"}}}'),
        "c2.yaml": b"model: m\nmax_num_batched_tokens: 32\nmax_num_seqs: 64\n",
    }
    for name, data in out.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in out}


TUNE = ["--slo", "ttft_p95<=1s", "--trials", "1", "--input-len", "8", "--output-len", "8", "--startup-timeout", "1"]

CASES = {
    "serve config not UTF-8": (["serve", "--config", "{not_utf8.yaml}", "--print-command"], "not UTF-8"),
    "diagnose snapshot not UTF-8": (["diagnose", "--snapshot", "{not_utf8.json}"], "not UTF-8"),
    "diagnose snapshot too deep": (["diagnose", "--snapshot", "{deep.json}"], "nested too deeply"),
    "diagnose snapshot mistyped": (["diagnose", "--snapshot", "{mistyped.json}"], "window_start"),
    "diagnose snapshot with Infinity": (["diagnose", "--snapshot", "{infinite.json}"], "not JSON"),
    "diagnose snapshot mistyped quantiles": (["diagnose", "--snapshot", "{mistyped_quantiles.json}"], "ttft"),
    "diagnose config not UTF-8": (["diagnose", "--snapshot", "{mistyped.json}", "--config", "{not_utf8.yaml}"],
                                  "not UTF-8"),
    "diagnose playbooks not UTF-8": (["diagnose", "--snapshot", "{mistyped.json}", "--playbooks",
                                      "{not_utf8.yaml}"], "not UTF-8"),
    "serve line unclosed quote": (["diagnose", "--target", "http://127.0.0.1:1", "--serve-command",
                                   'vllm serve "unclosed'], "No closing quotation"),
    "serve line flag without value": (["diagnose", "--target", "http://127.0.0.1:1", "--serve-command",
                                       "vllm serve m --max-num-seqs"], "--max-num-seqs needs a value"),
    "serve line bad JSON": (["diagnose", "--target", "http://127.0.0.1:1", "--serve-command",
                             "vllm serve m --speculative-config {"], "not valid JSON"),
    "diagnose snapshot target a number": (["diagnose", "--snapshot", "{target_number.json}"],
                                          "target: expected a string, not 5"),
    "diagnose snapshot waiting_by_reason a list": (["diagnose", "--snapshot", "{waiting_list.json}"],
                                                   "waiting_by_reason: expected an object"),
    "diagnose snapshot per-position text": (["diagnose", "--snapshot", "{position_text.json}"],
                                            "spec_decode_per_position[0]: expected a number"),
    "diagnose snapshot ends before it starts": (["diagnose", "--snapshot", "{backwards.json}"],
                                                "window_end (1) is before window_start (2)"),
    "diagnose snapshot negative count": (["diagnose", "--snapshot", "{negative.json}"], "requests_finished: must be >= 0"),
    "diagnose snapshot share over 1": (["diagnose", "--snapshot", "{share_over_one.json}"], "kv_cache_usage"),
    "diagnose snapshot bad per-model window": (["diagnose", "--snapshot", "{nested_model.json}"],
                                               "per_model.m: models: expected a list"),
    # the same check as a launch (review 3): a printed line is one slotune would start
    "serve --print-command refused combination": (["serve", "--config", "{c2.yaml}", "--print-command"],
                                                   "max_num_batched_tokens (32) must be >= max_num_seqs (64)"),
    # an empty SLO spec checks nothing: refused wherever --slo is read (review 3)
    "collect --slo empty": (["collect", "--target", "http://127.0.0.1:1", "--once", "--slo", ""], "empty SLO spec"),
    "diagnose --slo blank": (["diagnose", "--snapshot", "{window.json}", "--slo", " "], "empty SLO spec"),
    "bench --slo empty": (["bench", "--target", "http://127.0.0.1:1", "--slo", ""], "empty SLO spec"),
    "tune --slo empty": (["tune", "--model", "m", "--slo", "", "--input-len", "8", "--output-len", "8"],
                         "empty SLO spec"),
    "demo --slo empty": (["demo", "--slo", ""], "empty SLO spec"),
    "rules --slo empty": (["rules", "--slo", ""], "empty SLO spec"),
    "dashboards push not a URL": (["dashboards", "push", "--grafana-url", "notaurl", "--token", "x"],
                                  "expected http://HOST:PORT"),
    "dashboards push bad port": (["dashboards", "push", "--grafana-url", "http://h:99999", "--token", "x"],
                                 "expected http://HOST:PORT"),
    "collect bad IPv6 target": (["collect", "--target", "http://[::1", "--once"], "bad target URL"),
    "collect bad port": (["collect", "--target", "http://h:99999", "--once"], "bad target URL"),
    "tune space min banana": (["tune", "--model", "m", "--space", "{banana_space.yaml}", *TUNE],
                              "min must be a number"),
    "tune space not UTF-8": (["tune", "--model", "m", "--space", "{not_utf8.yaml}", *TUNE], "not UTF-8"),
    "tune fix bad YAML": (["tune", "--model", "m", "--fix", "max_num_seqs=[", *TUNE], "not valid YAML"),
    "tune workload not UTF-8": (["tune", "--model", "m", "--workload", "{not_utf8.yaml}", "--slo", "ttft_p95<=1s"],
                                "not UTF-8"),
    "bench workload not UTF-8": (["bench", "--target", "http://127.0.0.1:1", "--workload", "{not_utf8.yaml}"],
                                 "not UTF-8"),
    "sidecar settings not UTF-8": (["sidecar", "--config", "{not_utf8.yaml}"], "not UTF-8"),
    "report on a database that is not there": (["report", "--study", "s", "--storage",
                                                "sqlite:///{tmp}/typo.db"], "no database at"),
    "report on a path that is not a URL": (["report", "--study", "s", "--storage", "{tmp}/typo.db"], "URL"),
    # SQLAlchemy adds "(Background on this error at: ...)" on a second line; the error stays one line
    "collect --store on a file that is not SQLite": (["collect", "--target", "http://127.0.0.1:1", "--once",
                                                      "--store", "--db", "sqlite:///{tmp}/not_a.db"],
                                                     "file is not a database"),
    "diagnose --save on a file that is not SQLite": (["diagnose", "--snapshot", "{window.json}", "--save", "--db",
                                                      "sqlite:///{tmp}/not_a.db"], "file is not a database"),
    "bench --temperature inf": (["bench", "--target", "http://127.0.0.1:1", "--temperature", "inf"], "finite"),
    "bench --top-p nan": (["bench", "--target", "http://127.0.0.1:1", "--top-p", "nan"], "finite"),
    "tune --temperature nan": (["tune", "--model", "m", *TUNE, "--temperature", "nan"], "finite"),
    # refused when the command line is read, not after a study of failed trials
    "tune --fix beyond int32": (["tune", "--model", "m", *TUNE, "--fix", "max_num_seqs=99999999999999999999999"],
                                "max_num_seqs"),
    "tune --rate inf": (["tune", "--model", "m", *TUNE, "--rate", "inf"], "finite"),
    "tune --kv-cache-max-gib huge": (["tune", "--model", "m", *TUNE, "--kv-cache-max-gib", "99999999"],
                                     "--kv-cache-max-gib"),
    # Output paths are tried when the command line is read, before any long work (a study, a build).
    "report --out unwritable": (["report", "--study", "s", "--storage", "sqlite:///{tmp}/typo.db", "--out",
                                 "/proc/nope"], "--out /proc/nope: cannot create"),
    "report --out under a file": (["report", "--study", "s", "--out", "{tmp}/a_file/out"], "--out "),
    "tune --out unwritable": (["tune", "--model", "m", *TUNE, "--out", "/proc/nope"], "--out /proc/nope"),
    "tune --json unwritable": (["tune", "--model", "m", *TUNE, "--json", "/proc/nope/r.json"], "--json /proc/nope"),
    "model tiny unwritable": (["model", "tiny", "/proc/nope"], "/proc/nope: parent directory /proc: not writable (takes no new files)"),
    "model smollm2 unwritable": (["model", "smollm2", "/proc/nope"], "/proc/nope: parent directory"),
    "rules --out unwritable": (["rules", "--out", "/proc/nope/r.yml"], "--out /proc/nope/r.yml"),
    "rules --write-dir unwritable": (["rules", "--write-dir", "/proc/nope"], "--write-dir /proc/nope"),
    "bench --write-prompts unwritable": (["bench", "--write-prompts", "/proc/nope/p.jsonl"], "--write-prompts"),
}


@pytest.mark.parametrize("args,expected", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_error_line(args: list[str], expected: str, files: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    argv = [str(files[a[1:-1]]) if a.startswith("{") and a[1:-1] in files else a for a in args]  # {name}: a file
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) != 0
    assert not (tmp_path / "typo.db").exists()  # reading never leaves an empty database behind
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and expected in err[-1], err
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize("args,says", [
    (["report", "--study", "s", "--out", "{a_file}"], "--out {a_file}: exists and is not a directory"),
    (["rules", "--out", "{tmp}"], "--out {tmp}: is a directory"),
    (["rules", "--write-dir", "{a_file}"], "--write-dir {a_file}: exists and is not a directory"),
    (["bench", "--write-prompts", "{tmp}"], "--write-prompts {tmp}: is a directory"),
    (["bench", "--target", "http://127.0.0.1:1", "--json", "{tmp}"], "--json {tmp}: is a directory"),
], ids=["report --out a file", "rules --out a directory", "rules --write-dir a file", "bench --write-prompts a dir",
        "bench --json a directory"])
def test_an_output_path_of_the_wrong_kind_is_exit_1_as_documented(args: list[str], says: str,
                                                                  files: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """docs/tuner.md: a path that cannot be written is exit 1, slotune's own line (click's own check of
    the path's kind answered first, as a usage error: exit 2)."""
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    fill = {"{a_file}": str(files["a_file"]), "{tmp}": str(tmp_path)}
    argv = [fill.get(a, a) for a in args]
    assert main(argv) == 1
    expected = says
    for k, v in fill.items():
        expected = expected.replace(k, v)
    assert capsys.readouterr().err.strip() == f"error: {expected}"


def test_non_json_receivers_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLOTUNE_RECEIVERS", "not json")
    assert main(["sidecar", "--target", "http://127.0.0.1:1"]) == 1
    assert capsys.readouterr().err.strip() == "error: bad settings: SLOTUNE_RECEIVERS must be JSON (a list or an object)"


def test_data_directory_that_is_a_file(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(files["a_file"]))
    assert main(["collect", "--target", "http://127.0.0.1:1", "--once", "--store"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: data directory {files['a_file']}: cannot create") and "\n" not in err


def test_sidecar_port_in_use_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        rc = main(["sidecar", "--target", "http://127.0.0.1:1", "--host", "127.0.0.1", "--port", str(port)])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and "\n" not in err, err


@pytest.mark.parametrize("foreign_tables", [["CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)"],
                                            ["CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
                                             "INSERT INTO alembic_version VALUES ('abc123')"]],
                         ids=["plain", "own-alembic"])
def test_report_never_writes_into_another_applications_sqlite(foreign_tables: list[str], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only command on a file without Optuna's tables refuses, naming the file, and leaves it as it
    was (it once created ~20 slotune/Optuna tables there, or asked to upgrade Optuna)."""
    import sqlite3

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        for stmt in foreign_tables:
            conn.execute(stmt)
    conn.close()
    before = db.read_bytes()
    assert main(["report", "--study", "x", "--storage", f"sqlite:///{db}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(db) in err[0] and "no tuning studies" in err[0], err
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal/-journal left either


def test_report_on_a_file_that_is_not_sqlite(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    f = files["not_utf8.json"]
    assert main(["report", "--study", "x", "--storage", f"sqlite:///{f}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(f) in err[0], err


def test_sidecar_database_that_is_not_sqlite_is_one_line(files: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    settings = tmp_path / "sidecar.yaml"
    settings.write_text(f"target: http://127.0.0.1:1\ndatabase_url: sqlite:///{files['not_a.db']}\n")
    assert main(["sidecar", "--config", str(settings)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "file is not a database" in err[0], err


def test_output_options_expand_tilde_and_take_dash_for_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--out=~/x` reaches slotune unexpanded by the shell (a folder named `~` was made in the working
    directory); `rules --out -` wrote a file named `-` where every other output option means stdout."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["rules", "--out=~/r.yml"]) == 0
    assert (tmp_path / "home" / "r.yml").is_file() and not (tmp_path / "~").exists()
    capsys.readouterr()
    assert main(["rules", "--out", "-"]) == 0
    assert capsys.readouterr().out.startswith("# Generated by `slotune rules`")
    assert not (tmp_path / "-").exists()

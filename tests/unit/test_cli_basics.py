import subprocess
import sys

import pytest

from slotune import __version__
from slotune.cli.main import main
from tests.support.paths import model_dir


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slotune.cli.main", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("version", "model"):
        assert cmd in out.stdout


def test_version(capsys):
    assert main(["version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_bad_arguments_are_one_line_and_non_zero():
    for args in (["bogus"], ["model", "tiny"], ["model", "tiny", "/tmp/x", "--seed", "x"]):
        out = run(*args)
        assert out.returncode == 2, args
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        assert "Traceback" not in out.stderr


def test_tune_refuses_a_bad_server_core_list_before_anything_runs(tmp_path):
    out = run("tune", "--model", str(model_dir(tmp_path)), "--input-len", "8", "--output-len", "8", "--slo", "ttft_p95<=1s",
              "--server-cpus", "9999")
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("error: cores 9999 are not available here (available: ")


@pytest.mark.parametrize("args", [
    ["serve", "--model=--trust-remote-code", "--print-command"],
    ["tune", "--model=--trust-remote-code", "--input-len", "8", "--output-len", "8", "--slo", "ttft_p95<=1s"],
])
def test_a_model_that_looks_like_a_flag_is_refused(args):
    out = run(*args)
    assert out.returncode != 0 and "trust-remote-code" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "starts with '-'" in lines[0], out.stderr


def test_a_config_file_with_a_flag_for_a_value_is_refused(tmp_path):
    cfg = tmp_path / "vllm.yaml"
    cfg.write_text("model: org/name\nserved_model_name: --api-key=x\n")  # an id: not checked on disk
    out = run("serve", "--config", str(cfg), "--print-command")
    assert out.returncode != 0 and "starts with '-'" in out.stderr and len(out.stderr.strip().splitlines()) == 1


# `--model` for a command that launches vLLM: a path that is not on disk is refused when the command line
# is read (vLLM took it for a repo id, died at start-up, and the study ended "infeasible" with exit 0).
LAUNCHES = {
    "tune": ["tune", "--input-len", "8", "--output-len", "8", "--slo", "ttft_p95<=1s", "--trials", "1"],
    "serve": ["serve", "--print-command"],
}


@pytest.fixture()
def no_launch(monkeypatch):
    """Were a check below to let a command through, it fails here instead of starting vLLM."""
    from slotune.server import ManagedServer

    def start(self, *args, **kwargs):
        raise AssertionError("a vLLM server was started")

    monkeypatch.setattr(ManagedServer, "start", start)


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch, no_launch):
    """An empty working directory and home, and a data directory of their own: nothing there to find."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.mark.parametrize("command", list(LAUNCHES))
@pytest.mark.parametrize("model", ["/nonexistent/model-dir", "./missing", "../missing", "~/missing"])
def test_a_model_path_that_is_not_there_is_one_error_line(command, model, elsewhere, capsys):
    argv = [LAUNCHES[command][0], "--model", model, *LAUNCHES[command][1:]]
    assert main(argv) == 1  # in-process: a traceback would be an exception failing this test
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"error: --model {model}: no such file or directory (a local model must exist; "
                                "a Hugging Face model id is written ORG/NAME)"], err
    assert not (elsewhere / "data").exists()  # refused before anything started or was written


@pytest.mark.parametrize("command", list(LAUNCHES))
def test_a_folder_that_is_no_model_is_one_error_line(command, elsewhere, capsys):
    """A folder without `config.json` would pass the path check and then kill every vLLM start-up (the
    defaults' included) with a truncated pydantic reason: refused when the command line is read."""
    empty = elsewhere / "not-a-model"
    empty.mkdir()
    assert main([LAUNCHES[command][0], "--model", str(empty), *LAUNCHES[command][1:]]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"error: --model {empty}: not a model directory (no config.json or params.json "
                                "file in it)"], err
    assert not (elsewhere / "data").exists()
    (empty / "params.json").write_text("{}")  # Mistral's own format is a model too
    assert main(["serve", "--model", str(empty), "--print-command"]) == 0


def test_a_missing_model_path_is_refused_in_a_subprocess_too(tmp_path):
    # --server-cpus 9999, read after --model, is refused too: without the model check nothing starts either
    out = run("tune", "--model", str(tmp_path / "missing"), *LAUNCHES["tune"][1:], "--server-cpus", "9999")
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: --model {tmp_path / 'missing'}: no such file or directory")
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_hugging_face_id_is_not_checked_on_disk(elsewhere, capsys):
    assert main(["serve", "--model", "org/name", "--print-command"]) == 0
    assert "vllm serve org/name " in capsys.readouterr().out
    # tune reads --model first and passes it on; what stops it here is the storage URL, read after it
    assert main(["tune", "--model", "org/name", *LAUNCHES["tune"][1:], "--storage", "bogus://x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open database 'bogus://x'") and "--model" not in err, err


@pytest.mark.parametrize("command", list(LAUNCHES))
def test_an_empty_model_names_the_option(command, elsewhere, capsys):
    assert main([LAUNCHES[command][0], "--model", " ", *LAUNCHES[command][1:]]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: --model is empty: give a model directory or a Hugging Face id ORG/NAME"]


def test_a_config_files_model_is_checked_as_model_is(elsewhere, capsys):
    cfg = elsewhere / "cwd" / "flags.yaml"
    cfg.write_text(f"model: {elsewhere / 'gone'}\nmax_num_seqs: 4\n")
    assert main(["serve", "--config", str(cfg), "--print-command"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {cfg}: model {elsewhere / 'gone'}: no such file or directory (a local model must exist; "
        "a Hugging Face model id is written ORG/NAME)"]
    model_dir(elsewhere / "home" / "m")
    cfg.write_text("model: ~/m\n")  # ~ expanded, as for --model
    assert main(["serve", "--config", str(cfg), "--print-command"]) == 0
    assert f"vllm serve {elsewhere / 'home' / 'm'} " in capsys.readouterr().out


@pytest.mark.parametrize("model", ["~/m", "./m", "m"])
def test_a_model_path_that_is_there_passes(model, elsewhere, capsys):
    """`~` is expanded (vLLM would not expand it, and slotune refuses `~` on a command line); a relative
    path that exists passes as given."""
    for where in ("home", "cwd"):
        model_dir(elsewhere / where / "m")
    assert main(["serve", "--model", model, "--print-command"]) == 0
    shown = str(elsewhere / "home" / "m") if model.startswith("~") else model
    assert f"vllm serve {shown} " in capsys.readouterr().out


@pytest.mark.parametrize("storage", ["bogus://x", "{tmp}/typo.db"])
def test_tune_refuses_a_bad_storage_url_before_printing_anything(storage, tmp_path, monkeypatch, no_launch, capsys):
    """Once the study's header line ("study NAME: tuning MODEL for SLO ...") came before the error."""
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    model_dir(tmp_path / "model")
    url = storage.replace("{tmp}", str(tmp_path))
    assert main(["tune", "--model", str(tmp_path / "model"), *LAUNCHES["tune"][1:], "--storage", url]) == 1
    out, err = capsys.readouterr()
    assert out == "", out  # no header, not even the progress bar's blank line
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot open database '{url}': "), err
    if "://" not in url:  # a bare path: the line says how to write it
        assert lines[0].endswith(f"(a SQLite file is written sqlite:///{url})"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no database file, no data directory


@pytest.mark.parametrize("storage", ["sqlite://", "sqlite:///:memory:"])
def test_tune_refuses_an_in_memory_sqlite_study(storage, tmp_path, monkeypatch, no_launch, capsys):
    # Optuna's heartbeat and the early-stop check each open their own connection: each an empty database.
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    model_dir(tmp_path / "model")
    assert main(["tune", "--model", str(tmp_path / "model"), *LAUNCHES["tune"][1:], "--storage", storage]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"error: --storage {storage}: an in-memory SQLite database cannot hold a study; give a file "
        "(sqlite:///PATH) or a PostgreSQL URL"], err


@pytest.mark.parametrize(("args", "code", "says"), [
    (["--no-prune", "--prune-at", "3"], 2, "give --prune-at or --no-prune, not both"),
    (["--prune-at", "3", "--no-prune"], 2, "give --prune-at or --no-prune, not both"),
    (["--timeout", "inf"], 2, "must be a finite number"),
    (["--timeout", "nan"], 2, "must be a finite number"),
    (["--startup-timeout", "inf"], 2, "must be a finite number"),
    (["--storage", "sqlite:////nonexistent-dir/x.db"], 1, "no directory /nonexistent-dir to hold the database file"),
    # /proc takes no new file, even for root: the tables cannot be created (once printed after the header)
    (["--storage", "sqlite:////proc/x.db"], 1, "cannot create slotune's tables in sqlite:////proc/x.db"),
    (["--num-requests", str(10**12)], 2, "is not in the range 1<=x<=1000000"),  # failed allocating, after vLLM started
    (["--slo", "error_rate<=1"], 1, "reads as 100%; write 1%"),
])
def test_tune_refuses_contradictory_or_unusable_options_up_front(args, code, says, tmp_path, monkeypatch, no_launch,
                                                                  capsys):
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    model_dir(tmp_path / "model")
    assert main(["tune", "--model", str(tmp_path / "model"), *LAUNCHES["tune"][1:], *args]) == code
    out, err = capsys.readouterr()
    assert out == "" and says in err and "Traceback" not in err, (out, err)


def test_trial_stages_are_plain_lines_when_the_output_is_not_a_terminal(capsys):
    # A log file or CI would otherwise get rich's live display drawn once, at the end: no stage seen.
    from slotune.cli.tune import _TrialProgress

    with _TrialProgress() as bar:
        bar(1, "starting vLLM")
        bar(1, "waiting for trial 0: another worker is measuring the same server")
        bar(1, "done: goodput 1.5 req/s (98 s)")  # the objective ends an outcome with the trial's wall time
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["trial   1: starting vLLM",
                     "trial   1: waiting for trial 0: another worker is measuring the same server",
                     "trial   1: done: goodput 1.5 req/s (98 s)"]


@pytest.mark.parametrize("storage,meant", [
    ("{tmp}/x.db", "sqlite:///{tmp}/x.db"), ("sqlite:{tmp}/x.db", "sqlite:///{tmp}/x.db"),
    ("x.db", "sqlite:///{cwd}/x.db"), ("bogus://x", None), ("sqlite:", None)])
@pytest.mark.parametrize("command", ["tune", "report"])
def test_a_storage_path_written_as_a_file_gets_the_url_it_meant(command, storage, meant, tmp_path, monkeypatch,
                                                               no_launch, capsys):
    """`--storage /tmp/x.db` names the SQLite URL meant; a URL of another form gets no guess
    (`sqlite:/tmp/x.db` once got `sqlite:////CWD/sqlite:/tmp/x.db`)."""
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    url = storage.replace("{tmp}", str(tmp_path))
    argv = (["tune", "--model", str(model_dir(tmp_path / "model")), *LAUNCHES["tune"][1:]] if command == "tune"
            else ["report", "--study", "s"])
    assert main([*argv, "--storage", url]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    if meant is None:
        assert "a SQLite file is written" not in err[0], err
    else:
        said = meant.replace("{tmp}", str(tmp_path)).replace("{cwd}", str(tmp_path))
        assert err[0].endswith(f"(a SQLite file is written {said})"), err

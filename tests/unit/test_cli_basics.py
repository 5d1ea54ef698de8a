import os
import subprocess
import sys

import pytest

from slotune import __version__
from slotune.cli.main import main


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


def test_tune_refuses_a_bad_server_core_list_before_anything_runs():
    out = run("tune", "--model", "/nonexistent", "--input-len", "8", "--output-len", "8", "--slo", "ttft_p95<=1s",
              "--server-cpus", "9999")
    assert out.returncode != 0
    available = sorted(os.sched_getaffinity(0))
    assert out.stderr.strip().splitlines() == [f"error: cores [9999] are not available here (available: {available})"]


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
    cfg.write_text("model: /m\nserved_model_name: --api-key=x\n")
    out = run("serve", "--config", str(cfg), "--print-command")
    assert out.returncode != 0 and "starts with '-'" in out.stderr and len(out.stderr.strip().splitlines()) == 1

"""`pip install slotune` adds one import name, `slotune`, and nothing else.

The wheel is built from a copy of the sources (setuptools writes build/ and *.egg-info next to what it
builds; the checkout stays clean), without build isolation (no network), then unpacked with
`pip install --target` and imported by an interpreter started with `-S` (no site-packages, so neither
the checkout nor the shared venv's editable install can answer)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import REPO

SOURCES = ("pyproject.toml", "README.md", "slotune", "collectors", "loadgen", "playbooks", "tuner", "dashboards")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("slotune-*.whl")
    return built


def test_the_wheel_holds_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert zf.read(top_level).decode().split() == ["slotune"]
    outside = [n for n in names if not n.startswith(("slotune/", "slotune-"))]
    assert not outside, f"files outside slotune/ in the wheel: {outside}"
    for part in ("collectors/snapshot.py", "loadgen/runner.py", "playbooks/engine.py", "tuner/study.py",
                 "playbooks/rules/high_ttft.yaml", "playbooks/relations.yaml", "loadgen/workloads/chat.yaml",
                 "tuner/templates/report.html.j2", "vllm_serve_flags.json",
                 "cli/main.py"):
        assert f"slotune/{part}" in names
    # every committed dashboard, so `slotune dashboards list/push` work from an installed wheel
    dashboards = sorted(p.name for p in (REPO / "dashboards").glob("*.json"))
    assert dashboards and [n for n in dashboards if f"slotune/dashboards/{n}" not in names] == []


def test_only_slotune_imports_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}

    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, check=False)

    # modules with no third-party imports, so the bare `-S` interpreter can load them
    ok = run("import slotune.collectors.snapshot, slotune.loadgen, slotune.tuner, slotune.errors; "
             "print(slotune.collectors.snapshot.__file__)")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(str(target))
    for name in ("collectors", "loadgen", "playbooks", "tuner"):
        bad = run(f"import {name}")
        assert bad.returncode != 0 and "ModuleNotFoundError" in bad.stderr, (name, bad.stdout, bad.stderr)
    # the HTML report's template is package data, found where the report looks for it
    tpl = run("from importlib.resources import files; "
              "print((files('slotune.tuner') / 'templates' / 'report.html.j2').read_text()[:15])")
    assert tpl.returncode == 0 and tpl.stdout.startswith("<!DOCTYPE html>"), tpl.stderr


def test_dashboards_list_works_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """`slotune dashboards list` finds the dashboards installed as package data, not the checkout's."""
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    code = ("import sys, slotune; assert slotune.__file__.startswith(sys.argv[1]), slotune.__file__; "
            "from slotune.cli.main import main; sys.exit(main(['dashboards', 'list']))")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    uids = sorted(line.split("\t")[1] for line in out.stdout.splitlines())
    assert uids == ["slotune-engine", "slotune-gpu", "slotune-slo", "slotune-specdecode", "slotune-tuning"]

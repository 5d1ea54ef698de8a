"""Every module of slotune sits on exactly one floor of the import-linter layers contract.

import-linter's `exhaustive` option checks the same on `make test`'s lint step; this test reads the
contract from pyproject.toml and the modules from the files on disk, so a new module that nobody
placed fails the unit tier too, with the module named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import slotune
from tests.support.paths import REPO

# Python 3.11+ (on 3.10 import-linter's `exhaustive` check still covers this)
tomllib = pytest.importorskip("tomllib")

ROOT = Path(slotune.__file__).resolve().parent


def _floors() -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = [c for c in config["contracts"] if c["type"] == "layers" and c.get("containers") == ["slotune"]]
    assert len(contracts) == 1, "one layers contract over the whole slotune package"
    return contracts[0]


def _layer_names(contract: dict) -> list[str]:
    return [name.strip() for floor in contract["layers"] for name in floor.replace(":", "|").split("|")]


def _modules() -> list[str]:
    """Every module and package under slotune/, following the symlinked subpackages (collectors/ ...)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT, followlinks=True):
        here = Path(dirpath)
        if here != ROOT and not (here / "__init__.py").is_file():
            dirnames[:] = []  # a data folder (YAML), not a package
            continue
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        prefix = ".".join(("slotune", *here.relative_to(ROOT).parts))
        if here != ROOT:
            found.append(prefix)
        found += [f"{prefix}.{f[:-3]}" for f in filenames if f.endswith(".py") and f != "__init__.py"]
    return sorted(found)


def test_the_walk_sees_the_symlinked_packages() -> None:
    modules = _modules()
    for expected in ("slotune.cli.main", "slotune.collectors.snapshot", "slotune.loadgen.runner",
                     "slotune.playbooks.engine", "slotune.tuner.study", "slotune.errors"):
        assert expected in modules


def test_every_module_is_on_exactly_one_floor() -> None:
    names = _layer_names(_floors())
    unplaced, twice = [], []
    for module in _modules():
        homes = [n for n in names if module == f"slotune.{n}" or module.startswith(f"slotune.{n}.")]
        (unplaced if not homes else twice if len(homes) > 1 else []).append(module)
    assert not unplaced, f"modules in no floor of pyproject.toml's layers contract: {unplaced}"
    assert not twice, f"modules on two floors: {twice}"


def test_every_floor_names_a_real_module() -> None:
    modules = set(_modules())
    stale = [n for n in _layer_names(_floors()) if f"slotune.{n}" not in modules]
    assert not stale, f"layers that name no module of slotune: {stale}"


def test_the_contract_is_exhaustive() -> None:
    assert _floors().get("exhaustive") is True

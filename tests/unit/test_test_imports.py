"""Tests and benchmarks share code through the testing package, `tests.support`, only: no test module
imports another test module (or a helper lying beside it), and the test folders hold test modules and
conftest.py alone. Read from the sources' imports (ast), not by running them."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO

TESTS = REPO / "tests"
SUPPORT = TESTS / "support"


def _sources() -> list[Path]:
    return sorted([*TESTS.rglob("*.py"), *(REPO / "bench").glob("*.py")])


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import; `from a import b` gives `a.b` (b may be a module)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def _offences(path: Path, local: set[str]) -> list[str]:
    """The imports of `path` that reach a test module: `tests.<anything but support>`, a module lying
    in a test folder by its bare name (pytest puts test folders on sys.path), a relative import."""
    bad = []
    for line, name in _imports(path):
        where = f"{path.name}:{line}: {name}"
        top = name.split(".")[0]
        if name.startswith("."):
            bad.append(f"{where} (relative)")
        elif (top == "tests" and not name.startswith("tests.support")) or top in local:
            bad.append(where)
    return bad


def test_tests_and_benchmarks_import_only_the_testing_package() -> None:
    local = {p.stem for p in TESTS.rglob("*.py") if SUPPORT not in p.parents} | {"support"}
    bad = [f"{p.parent.relative_to(REPO)}/{b}" for p in _sources() for b in _offences(p, local)]
    assert not bad, "import from tests.support instead:\n" + "\n".join(bad)


def test_test_folders_hold_only_test_modules() -> None:
    """A helper beside the tests is one a test module would import; it belongs in tests/support."""
    stray = [str(p.relative_to(REPO)) for p in TESTS.rglob("*.py")
             if SUPPORT not in p.parents and p.name != "conftest.py" and not p.name.startswith("test_")]
    assert not stray, f"move into tests/support: {stray}"


def test_the_check_catches_each_way_to_reach_a_test_module(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text("from tests.unit.test_sidecar_loop import make\nimport conftest\nfrom test_api_fuzz import x\n"
                     "from . import y\nfrom tests.support.pages import page\nfrom slotune import rules\n")
    found = [b.split(": ", 1)[1] for b in _offences(probe, {"test_sidecar_loop", "conftest", "test_api_fuzz"})]
    assert found == ["tests.unit.test_sidecar_loop.make", "conftest", "test_api_fuzz.x", ". (relative)"]

"""Shared fixtures (helpers live in the testing package, tests/support/). Real servers are expensive here (a vLLM start is ~30 s on 2 cores), so the
default tiny-model server is started once per session and shared; tests that need other flags start
their own with `start_vllm`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.paths import CACHE, FIXTURES
from tests.support.postgres import postgres_url  # noqa: F401  (a fixture: a real PostgreSQL per module)


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each session writes its database and logs to a fresh directory."""
    path = tmp_path_factory.mktemp("slotune-data")
    old = os.environ.get("SLOTUNE_DATA_DIR")
    os.environ["SLOTUNE_DATA_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SLOTUNE_DATA_DIR", None)
    else:
        os.environ["SLOTUNE_DATA_DIR"] = old


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures missing at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny Llama, built once and cached across sessions (same spec, same files)."""
    from slotune.model import build_tiny_model

    return build_tiny_model(CACHE / "models" / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real model (SmolLM2-135M-Instruct), built once from the installed wheel and cached beside
    the tiny model (same files every build); shared by every module that serves it."""
    from slotune.smollm2 import build_smollm2

    return build_smollm2(CACHE / "models" / "smollm2")


@pytest.fixture(scope="session")
def start_vllm(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Callable[..., object]]:
    """Start a managed vLLM with the given flags; every server started is stopped at session end.

    Returns the `ManagedServer` (started), or raises if it did not become ready, unless
    `expect_ready=False`, in which case the `StartResult` is returned with the server stopped."""
    from slotune.server import ManagedServer
    from slotune.vllm_config import VllmConfig

    servers: list[ManagedServer] = []
    logs = tmp_path_factory.mktemp("vllm-logs")

    def _start(expect_ready: bool = True, startup_timeout: float = 240.0, **flags: object) -> object:
        flags.setdefault("served_model_name", "tiny")
        cfg = VllmConfig(model=str(tiny_model), **flags)
        server = ManagedServer(cfg, log_dir=logs, startup_timeout=startup_timeout)
        servers.append(server)
        result = server.start()
        if not expect_ready:
            return result
        if not result.ok:
            pytest.fail(f"vLLM did not start: {result.status.value}: {result.message}; {result.log_lines}")
        return server

    yield _start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(start_vllm: Callable[..., object]) -> object:
    """The shared default server: tiny model, vLLM's default scheduler flags, prefix caching on."""
    return start_vllm()

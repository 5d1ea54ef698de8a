"""`start_or_explain`: a failed start is explained, not raised, and the server is stopped either way.

The server here is a stub with `ManagedServer`'s start/stop/config surface: a real vLLM that fails to
start costs minutes on this host, and the failure classes themselves are checked on real logs in
tests/integration/test_server.py. The measured window runs on a real vLLM in
tests/integration/test_playbooks_live.py, test_demo.py and the tuner's live tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from slotune.errors import ConfigError
from slotune.measurement import start_or_explain
from slotune.server import StartResult, StartStatus
from slotune.vllm_config import VllmConfig


class StubServer:
    def __init__(self, result: StartResult | Exception) -> None:
        self.config = VllmConfig(model="m", max_model_len=4096, num_gpu_blocks_override=8)
        self.result = result
        self.stops = 0

    def start(self) -> StartResult:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def stop(self) -> None:
        self.stops += 1


def test_a_failed_start_comes_back_explained_and_stopped(tmp_path: Path) -> None:
    failure = StartResult(StartStatus.KV_CACHE_TOO_SMALL, "KV cache too small", tmp_path / "log",
                          ("ValueError: max seq len 4096 is larger than the maximum number of tokens ...",))
    server = StubServer(failure)
    with start_or_explain(server) as launch:  # type: ignore[arg-type]
        assert not launch.ok and launch.started is failure
        assert launch.diagnosis is not None
        assert [f.playbook for f in launch.diagnosis.findings] == ["kv_cache_pressure"]
    assert server.stops == 1


def test_a_ready_server_has_no_diagnosis_and_is_stopped_after_an_error_in_the_block(tmp_path: Path) -> None:
    server = StubServer(StartResult(StartStatus.READY, "ready", tmp_path / "log"))
    with pytest.raises(RuntimeError), start_or_explain(server) as launch:  # type: ignore[arg-type]
        assert launch.ok and launch.diagnosis is None
        raise RuntimeError("boom")
    assert server.stops == 1


def test_a_config_refused_before_launch_raises(tmp_path: Path) -> None:
    server = StubServer(ConfigError("speculative decoding needs ..."))
    with pytest.raises(ConfigError), start_or_explain(server):  # type: ignore[arg-type]
        pass
    assert server.stops == 1

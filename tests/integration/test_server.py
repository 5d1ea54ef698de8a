"""The managed vLLM server against a real vLLM (tiny model): start, serve, metrics, stop, no orphans,
and each start-up failure class."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from slotune.errors import ConfigError
from slotune.server import ManagedServer, StartResult, StartStatus, group_alive
from slotune.vllm_config import VllmConfig
from tests.support.procs import left_behind, live_members, server_groups, wait_gone

pytestmark = pytest.mark.integration


def _allowed_cpus(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return ""


def test_start_complete_metrics_stop_leaves_no_process(tiny_model, tmp_path):
    # Confined to the last core (where there are two or more), as the tuner's --server-cpus does.
    cores = sorted(os.sched_getaffinity(0))
    cpus = (cores[-1],) if len(cores) > 1 else None
    server = ManagedServer(VllmConfig(model=str(tiny_model), served_model_name="tiny"), log_dir=tmp_path, cpus=cpus)
    result = server.start()
    assert result.ok, result
    pgid = os.getpgid(server.process.pid)
    if cpus:
        assert {_allowed_cpus(pid) for pid in live_members(pgid)} == {str(cpus[0])}
        assert f"core ids=[{cpus[0]}]" in result.log_path.read_text()  # vLLM bound its compute threads there
        assert os.sched_getaffinity(0) == set(cores)  # the caller keeps every core
    try:
        r = httpx.post(
            f"{server.base_url}/v1/completions",
            json={"model": "tiny", "prompt": "the model", "max_tokens": 5, "ignore_eos": True},
            timeout=60,
        )
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == 5
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        assert "vllm:time_to_first_token_seconds_bucket" in metrics
        assert "vllm:request_success_total" in metrics
        assert len(live_members(pgid)) >= 2  # API server and engine core
    finally:
        server.stop()
    assert live_members(pgid) == []
    assert "Application startup complete" in result.log_path.read_text()


def test_kv_cache_too_small_for_max_model_len(start_vllm):
    # On the CPU backend a block is 128 tokens: 2 blocks cannot hold one 4096-token sequence.
    result = start_vllm(expect_ready=False, num_gpu_blocks_override=2, max_model_len=4096)
    assert result.status is StartStatus.KV_CACHE_TOO_SMALL, result
    assert any("KV cache" in line for line in result.log_lines)


def test_invalid_flag_pair_is_refused_before_launch(tiny_model, tmp_path):
    server = ManagedServer(
        VllmConfig(model=str(tiny_model), max_num_seqs=8, max_num_batched_tokens=4), log_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="max_num_seqs"):
        server.start()
    assert server.process is None and not list(tmp_path.iterdir())


def test_invalid_flag_pair_vllm_itself_rejects_is_classified(tiny_model, tmp_path):
    # Skip slotune's own check to show vLLM rejects the pair and the log is classified.
    server = ManagedServer(
        VllmConfig(model=str(tiny_model), max_num_seqs=8, max_num_batched_tokens=4), log_dir=tmp_path
    )
    import slotune.server as srv

    original = srv.validate_combination
    srv.validate_combination = lambda cfg: None
    try:
        result = server.start()
    finally:
        srv.validate_combination = original
    assert result.status is StartStatus.INVALID_CONFIG, result
    assert any("max_num_batched_tokens" in line for line in result.log_lines)


@dataclass(eq=False)
class _NeverHealthy(ManagedServer):
    """A vLLM whose health check asks a port held closed (bound, never listening), so its start
    times out for certain; the timeout runs from when its engine core is up, so there is a whole
    group to stop."""

    closed_port: int = 0
    pgid: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.closed_port}"

    def _wait_healthy(self, started: float) -> StartResult:
        assert self.process is not None
        self.pgid = os.getpgid(self.process.pid)
        deadline = time.monotonic() + 120
        while len(live_members(self.pgid)) < 2 and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return super()._wait_healthy(time.monotonic())


def test_timeout_is_classified_and_stops_the_server(tiny_model, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        server = _NeverHealthy(VllmConfig(model=str(tiny_model)), log_dir=tmp_path, startup_timeout=3,
                               closed_port=closed.getsockname()[1])
        result = server.start()
    assert result.status is StartStatus.TIMED_OUT, result
    assert server.process is None
    # The whole group is gone, the engine core (`VLLM::EngineCore`) as well as the API server.
    assert server.pgid is not None and live_members(server.pgid) == []


def test_crash_is_classified(tmp_path):
    # A model directory without weights: vLLM dies during start-up for a reason that is neither a
    # flag nor memory.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    server = ManagedServer(VllmConfig(model=str(broken)), log_dir=tmp_path)
    result = server.start()
    assert result.status in (StartStatus.CRASHED, StartStatus.INVALID_CONFIG), result
    assert result.status is not StartStatus.READY and result.log_lines


def test_interrupted_parent_leaves_no_orphans(tiny_model, tmp_path):
    """Ctrl-C (SIGINT) in the process that started vLLM stops the server too."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from slotune.server import ManagedServer
        from slotune.vllm_config import VllmConfig
        with ManagedServer(VllmConfig(model={str(tiny_model)!r}), log_dir=Path({str(tmp_path)!r})) as s:
            print(os.getpgid(s.process.pid), flush=True)
            time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pgid = int(parent.stdout.readline())
    assert live_members(pgid)
    parent.send_signal(signal.SIGINT)
    parent.wait(timeout=60)
    deadline = time.monotonic() + 30
    while live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_members(pgid) == []


def test_killed_parent_takes_server_down(tiny_model, tmp_path):
    """Even SIGKILL of slotune (no cleanup runs) does not orphan vLLM: its watchdog takes the group down."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from slotune.server import ManagedServer
        from slotune.vllm_config import VllmConfig
        s = ManagedServer(VllmConfig(model={str(tiny_model)!r}), log_dir=Path({str(tmp_path)!r}))
        assert s.start().ok
        print(os.getpgid(s.process.pid), flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pgid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 40
    while live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_members(pgid) == []
    assert not group_alive(pgid) or live_members(pgid) == []


def test_parent_killed_while_vllm_starts_leaves_no_process(tiny_model, tmp_path):
    """SIGKILL of slotune while vLLM is still starting: the window where vLLM 0.32 loses a SIGTERM (its
    start-up handler's KeyboardInterrupt is swallowed while the API server waits for the engine core's
    handshake, and start-up goes on). The watchdog's SIGKILL after the grace ends the whole group, the
    API server and its engine core, and the watchdog leaves too."""
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from slotune.server import ManagedServer
        from slotune.vllm_config import VllmConfig
        s = ManagedServer(VllmConfig(model={str(tiny_model)!r}), log_dir=Path({str(tmp_path)!r}), orphan_grace=3)
        s.start()
    """))
    env = {**os.environ, "SLOTUNE_DATA_DIR": str(data)}
    parent = subprocess.Popen([sys.executable, str(script)], env=env)
    groups: set[int] = set()
    try:
        # The engine core is spawned: vLLM's start-up SIGTERM handler is installed and the API server waits
        # for the engine core's handshake.
        deadline = time.monotonic() + 240
        while not any(len(live_members(g)) >= 2 for g in groups) and time.monotonic() < deadline:
            groups |= server_groups(data)
            time.sleep(0.2)
        assert any(len(live_members(g)) >= 2 for g in groups), "vLLM's engine core never started"
        time.sleep(1)
        log = next(tmp_path.glob("vllm-*.log")).read_text(errors="replace")
        assert "Application startup complete" not in log, "vLLM was already serving: not killed mid-start"
        parent.kill()
        parent.wait(timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
    # The watchdog's grace (3 s), its SIGKILL, and a busy host's scheduling.
    wait_gone(lambda: left_behind(data, groups), 40, what="the vLLM of a slotune killed mid-start")

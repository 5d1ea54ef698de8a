"""A vLLM server that slotune starts, watches and stops itself.

Lifecycle: `start()` launches vLLM from a `VllmConfig` on a free loopback port with its log in a file,
then polls `/health` until it answers, the process dies, or the start-up timeout passes. A start-up
failure is returned as a classified `StartResult`, never raised: the tuner records it as an infeasible
trial. `stop()` sends SIGTERM to the whole process group (vLLM forks an engine-core process), waits,
then SIGKILLs. Every live server is stopped at interpreter exit, so neither Ctrl-C nor a failing test
leaves orphans; and each server has a watchdog process (`slotune.group_watchdog`) that takes its whole
process group down (SIGTERM, then SIGKILL after `orphan_grace` s) when slotune dies without stopping it,
even by SIGKILL and even while vLLM is still starting (where vLLM loses a SIGTERM: see that module).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from slotune import group_watchdog, platforms
from slotune.errors import ConfigError
from slotune.slo import SloSpec
from slotune.slo_buckets import with_slo_buckets
from slotune.vllm_config import VllmConfig, validate_combination

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

class StartStatus(str, enum.Enum):
    READY = "ready"
    KV_CACHE_TOO_SMALL = "kv_cache_too_small"  # also covers out-of-memory at start-up
    INVALID_CONFIG = "invalid_config"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"


# Log patterns, most specific first: the first class whose pattern appears in the log wins.
FAILURE_PATTERNS: tuple[tuple[StartStatus, re.Pattern[str]], ...] = (
    (
        StartStatus.KV_CACHE_TOO_SMALL,
        re.compile(
            r"(larger than the available KV cache|KV cache is needed|max seq len .* is larger than the "
            r"maximum number of tokens that can be stored in KV cache|No available memory for the cache "
            r"blocks|insufficient KV cache|OutOfMemoryError|CUDA out of memory|Cannot allocate memory|"
            r"num_gpu_blocks.*(too small|not enough))",
            re.IGNORECASE,
        ),
    ),
    (
        StartStatus.INVALID_CONFIG,
        re.compile(
            r"(pydantic[_a-z.]*ValidationError|validation error for|ValueError:|is not a valid|"
            r"invalid choice|unrecognized arguments|error: argument|must be (greater|less|at least|>=|<=)|"
            r"smaller than max_(num_seqs|model_len))",
            re.IGNORECASE,
        ),
    ),
)


def as_served(config: VllmConfig) -> VllmConfig:
    """`config` as a server slotune starts on this platform runs it: the platform's default flags
    (`--enforce-eager`, `--dtype float32` on a CPU without native bf16, ...) and environment
    (`VLLM_CPU_KVCACHE_SPACE`) filled in where `config` leaves them unset. Not the core pinning or the
    SLO's histogram buckets (those belong to one run). The `vllm serve` line a report prints: without
    the platform's flags it would start a server several times slower than the one measured."""
    plat = platforms.detect()
    unset = {k: v for k, v in plat.default_flags.items() if getattr(config, k) is None}
    return config.model_copy(update={**unset, "env": {**plat.default_env, **config.env}})


@dataclass(frozen=True)
class StartResult:
    status: StartStatus
    message: str
    log_path: Path
    log_lines: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is StartStatus.READY


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def classify_failure(log_text: str) -> tuple[StartStatus, tuple[str, ...]]:
    """Which failure class a start-up log shows, with the lines that show it."""
    lines = log_text.splitlines()
    for status, pattern in FAILURE_PATTERNS:
        hits = [ln.strip() for ln in lines if pattern.search(ln)]
        if hits:
            return status, tuple(hits[-5:])
    tail = tuple(ln.strip() for ln in lines[-8:] if ln.strip())
    return StartStatus.CRASHED, tail


def _child_setup(cpus: tuple[int, ...] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)  # inherited by the engine core and workers vLLM starts


_LIVE: weakref.WeakSet[ManagedServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


@dataclass(eq=False)  # identity semantics: servers are tracked in a WeakSet
class ManagedServer:
    """One vLLM server process. Use as a context manager, or call start()/stop()."""

    config: VllmConfig
    log_dir: Path
    startup_timeout: float = 180.0
    stop_timeout: float = 20.0
    apply_platform_defaults: bool = True
    port: int | None = None
    # Confine every server process to these cores (None: anywhere). On a small host, a load generator
    # sharing cores with vLLM's busy-polling processes measures its own seat, not the server.
    cpus: tuple[int, ...] | None = None
    # The SLO the server is judged by: its latency thresholds become histogram bucket bounds
    # (`--custom-histogram-buckets`), so attainment read from vLLM's /metrics is exact.
    slo: SloSpec | None = None
    # Seconds the watchdog gives the group between SIGTERM and SIGKILL once slotune is gone.
    orphan_grace: float = 5.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lifeline: int | None = field(default=None, init=False, repr=False)  # the write end the watchdog waits on
    log_path: Path | None = field(default=None, init=False)
    effective: VllmConfig | None = field(default=None, init=False)

    # -- what will run ----------------------------------------------------------------------------

    def effective_config(self) -> VllmConfig:
        """The config with this platform's defaults filled in where the user left them unset."""
        cfg = self.config
        if self.apply_platform_defaults:
            cfg = as_served(cfg)
        cfg = with_slo_buckets(cfg, self.slo)
        if self.cpus:  # the compute threads bound inside the same cores; the user's env still wins
            cfg = cfg.model_copy(update={"env": {**platforms.pinned_env(platforms.detect(), list(self.cpus)),
                                                 **cfg.env}})
        return cfg

    def launch_config(self) -> VllmConfig:
        """`effective_config()` checked as a launch is: ConfigError (one line) for a flag combination
        vLLM refuses. `start()` and `slotune serve --print-command` both go through here, so a printed
        line is one slotune would also launch."""
        cfg = self.effective_config()
        validate_combination(cfg)
        return cfg

    @property
    def base_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://{self.config.host}:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> StartResult:
        """Launch and wait for health. Invalid combinations raise ConfigError before anything runs."""
        cfg = self.launch_config()
        self.effective = cfg
        self.port = cfg.port or self.port or free_port(cfg.host)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"vllm-{self.port}-{int(time.time() * 1000)}.log"
        env = {**os.environ, **cfg.env, "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cfg.launch_argv(self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # own process group, so stop() reaches the engine core too
                # only where needed: a preexec_fn runs between fork and exec, unsafe beside threads
                preexec_fn=functools.partial(_child_setup, self.cpus) if self.cpus else None,
            )
        _LIVE.add(self)
        try:
            self._start_watchdog(self.process.pid)
        except OSError:  # no pipe or process to spare: a vLLM nobody would stop on our death must not run
            self.stop()
            raise
        result = self._wait_healthy(started)
        if not result.ok:
            self.stop()
        return result

    def _start_watchdog(self, pgid: int) -> None:
        # The pipe's ends are close-on-exec: vLLM and every other program slotune runs never hold the
        # write end, so it reaches end-of-file exactly when slotune closes it or dies.
        read_end, self._lifeline = os.pipe()
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", group_watchdog.__name__, str(pgid), str(self.orphan_grace)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # out of slotune's group: a Ctrl-C or killpg meant for slotune spares it
            )
        finally:
            os.close(read_end)

    def _stop_watchdog(self) -> None:
        # Called after the group was signalled: the watchdog reads end-of-file and takes down whatever
        # outlived stop()'s wait (normally nothing), then exits.
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self.watchdog is not None:
            try:
                self.watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()
            self.watchdog = None

    def _wait_healthy(self, started: float) -> StartResult:
        assert self.process is not None and self.log_path is not None
        deadline = started + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    status, lines = classify_failure(self._read_log())
                    return StartResult(
                        status, f"vLLM exited with code {code} during start-up", self.log_path, lines,
                        time.monotonic() - started,
                    )
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return StartResult(
                            StartStatus.READY, "ready", self.log_path, (), time.monotonic() - started
                        )
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    tail = tuple(ln for ln in self._read_log().splitlines()[-8:] if ln.strip())
                    return StartResult(
                        StartStatus.TIMED_OUT,
                        f"not healthy after {self.startup_timeout:.0f} s",
                        self.log_path,
                        tail,
                        time.monotonic() - started,
                    )
                time.sleep(0.5)

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    @property
    def process_group(self) -> int | None:
        """The id of the process group every process of this server runs in (it starts in a session
        of its own: the group id is the leader's pid), or None when not started."""
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL after `stop_timeout`. Idempotent."""
        proc = self.process
        if proc is None:
            return
        # Not os.getpgid(proc.pid): once the server was reaped (a failed start) that pid may be a stranger's.
        pgid = proc.pid  # = self.process_group
        if proc.poll() is None or group_watchdog.live_members(pgid):
            _signal_group(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_timeout)
            # The API server may be gone while its engine core lingers: always sweep the group.
            _signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _wait_group_gone(pgid, 5.0)
        self._stop_watchdog()
        self.process = None
        _LIVE.discard(self)

    def __enter__(self) -> Self:
        result = self.start()
        if not result.ok:
            raise ServerStartError(result)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerStartError(ConfigError):
    def __init__(self, result: StartResult) -> None:
        self.result = result
        detail = f": {result.log_lines[-1]}" if result.log_lines else ""
        super().__init__(f"vLLM did not start ({result.status.value}){detail} (log: {result.log_path})")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    """Whether any process of a process group still exists (for tests that check for orphans)."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_on_signals() -> None:
    """Turn SIGTERM into SystemExit so context managers and atexit stop managed servers."""

    def _handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)

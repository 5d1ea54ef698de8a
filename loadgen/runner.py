"""The load generator: OpenAI-compatible streaming requests, timed from the client's side.

`run_load` is blocking (it runs its own event loop), so tuner worker threads can call it. Timing
mirrors `vllm.benchmarks.lib.endpoint_request_func`: TTFT is the first streamed chunk that carries a
choice; ITL the gaps between such chunks; end-to-end ends at the last such chunk; TPOT is
(e2e - TTFT) / (output tokens - 1), output tokens from the server's `usage`.

The transport is aiohttp, as in vLLM's own benchmark client: one `ClientSession` over a pooled,
keep-alive `TCPConnector`, the body read as it arrives and split into SSE messages. aiohttp parses
HTTP in C; the earlier httpx/h11 transport spent about five times more client CPU per streamed
request (bench/bench_loadgen.py), CPU that a small box shares with the server it measures.

Arrivals are open loop (Poisson/gamma at `rate`), closed loop (`concurrency` requests in flight), or
both (arrivals at `rate`, at most `concurrency` in flight), as in `vllm bench serve`. A run is bounded
by `num_requests` and/or `duration`; each request by `request_timeout`. A `watch` may end it sooner:
it is shown the requests finished so far as they come in, and a reason back stops the run (the
tuner's early stop: a trial that already misses an SLO by far need not run to its end).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import numpy as np

from slotune.errors import ConfigError, TargetError
from slotune.loadgen.figures import LATENCY_KEYS, LoadFigures, quantiles
from slotune.loadgen.goodput import RequestLatencies, count_good
from slotune.loadgen.prompts import PromptBuilder, calibration_text, load_tokenizer
from slotune.loadgen.schedule import MAX_REQUESTS, arrival_times
from slotune.loadgen.workload import RequestShape, Workload
from slotune.slo import SloSpec

DEFAULT_REQUESTS = 100
PREFLIGHT_TIMEOUT = 10.0
READ_BUFSIZE = 2**16  # aiohttp's per-connection read buffer (its default, set here so it is one visible fact)
# An idle pooled connection is dropped before the server closes it: vLLM's uvicorn closes idle
# connections after VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s by default), and a request sent on a connection
# the server is closing at that moment fails with "Server disconnected" (a POST is not retried).
KEEPALIVE_SECONDS = 2.0
SEND_RETRIES = 1  # a request whose connection dropped before any response is sent once more

# Self-checks: a measurement taken while the client itself could not keep up says more about the host
# than about the server. On a 2-core box running vLLM beside the client, near saturation the client was
# starved for hundreds of ms: requests left in clumps and whole streams were read in one go (TPOT ~ 0).
LATE_SEND_P99 = 0.010  # open loop: p99 of how late requests left their schedule
BURST_STREAM_SHARE = 0.05  # share of streams of >= BURST_MIN_TOKENS tokens that arrived in one burst
BURST_MIN_TOKENS = 8
BURST_SPAN = 0.001  # a "burst": every token of the stream read within this span


# -- results --------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are seconds; `sent` is after the run's start."""

    index: int
    prompt_len: int  # what the workload asked for (usage.prompt_tokens is what the server counted)
    output_len: int
    due: float | None = None  # open loop: when it was due after the start
    sent: float = 0.0
    ok: bool = False
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    connect_error: bool = False
    status: int | None = None  # the HTTP status of the (last) attempt; None: no response at all
    retries: int = 0  # sent again after its connection dropped before any response (`send_request`)

    @property
    def tpot(self) -> float | None:
        """(e2e - TTFT) / (output tokens - 1); None when that is undefined (<= 1 token)."""
        n = self.output_tokens if self.output_tokens is not None else len(self.itl) + 1
        if not self.ok or self.e2e is None or self.ttft is None or n <= 1:
            return None
        return (self.e2e - self.ttft) / (n - 1)

    def latencies(self) -> RequestLatencies:
        itl_mean = sum(self.itl) / len(self.itl) if self.itl else None
        return RequestLatencies(ok=self.ok, ttft=self.ttft, tpot=self.tpot, itl_mean=itl_mean, e2e=self.e2e)


@dataclass
class LoadResult:
    records: list[RequestRecord]
    duration: float  # first send to last completion (vLLM's benchmark_duration)
    workload: str
    rate: float | None = None
    concurrency: int | None = None
    burstiness: float = 1.0
    slo: SloSpec | None = None
    started: float = 0.0  # time.perf_counter() at the start (a system-wide monotonic clock on Linux)
    # Why a `watch` stopped the run before its end (None: it ran to its end). `records` and
    # `duration` are then what that look judged; requests still in flight were dropped unmeasured.
    stopped: str | None = None
    watch_error: str | None = None  # the watch failed (from then on the run was not watched)

    @property
    def completed(self) -> int:
        return sum(1 for r in self.records if r.ok)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    def latency_values(self, key: str) -> list[float]:
        ok = [r for r in self.records if r.ok]
        if key == "itl":
            return [x for r in ok for x in r.itl]
        vals = (getattr(r, key) for r in ok)
        return [v for v in vals if v is not None]

    def good(self) -> int | None:
        if self.slo is None:
            return None
        return count_good((r.latencies() for r in self.records), self.slo.request_thresholds())

    def lateness(self) -> list[float]:
        """How late each open-loop request was sent against its schedule (seconds)."""
        return [r.sent - r.due for r in self.records if r.due is not None]

    def warnings(self) -> list[str]:
        """Why these figures may describe the client's host rather than the server (empty when sound),
        or why the run was not watched to its end."""
        out = []
        if self.watch_error:
            out.append(f"the run's early-stop check failed {self.watch_error}; the run went on unwatched")
        if resent := self.resent():
            out.append(f"{resent} request(s) sent again after their connection dropped before any response "
                       f"(their TTFT and E2E include the first attempt)")
        late = self.lateness()
        if late and (p99 := float(np.percentile(late, 99))) > LATE_SEND_P99:
            out.append(f"requests left up to {p99 * 1000:.0f} ms late (p99) against their schedule: the client "
                       f"was short of CPU, so the offered load was burstier than asked and latencies include "
                       f"client delay")
        long = [r for r in self.records if r.ok and (r.output_tokens or 0) >= BURST_MIN_TOKENS]
        burst = [r for r in long if r.e2e is not None and r.ttft is not None and r.e2e - r.ttft < BURST_SPAN]
        if long and len(burst) / len(long) > BURST_STREAM_SHARE:
            out.append(f"{len(burst)} of {len(long)} streams arrived in one burst (TPOT ~ 0): the server batched "
                       f"them or the client read them late; TTFT is overstated and TPOT/ITL understated")
        return out

    def resent(self) -> int:
        """Requests sent again after their connection dropped before any response."""
        return sum(r.retries for r in self.records)

    def errors(self, top: int = 5) -> dict[str, int]:
        return dict(Counter(r.error or "unknown" for r in self.records if not r.ok).most_common(top))

    def figures(self) -> LoadFigures:
        """The run's figures (see `loadgen.figures`), each SLO target checked against them."""
        dur = self.duration
        done = [r for r in self.records if r.ok]
        total_in = sum(r.prompt_tokens or 0 for r in done)
        total_out = sum(r.output_tokens or 0 for r in done)
        n = len(self.records)
        good = self.good()
        figures = LoadFigures(
            **{k: quantiles(self.latency_values(k)) for k in LATENCY_KEYS},
            completed=self.completed,
            failed=self.failed,
            error_rate=self.failed / n if n else 0.0,
            duration=dur,
            request_throughput=self.completed / dur if dur > 0 else 0.0,
            output_throughput=total_out / dur if dur > 0 else 0.0,
            total_token_throughput=(total_in + total_out) / dur if dur > 0 else 0.0,
            goodput=None if good is None else (good / dur if dur > 0 else 0.0),
            good_requests=good,
            total_input_tokens=total_in,
            total_output_tokens=total_out,
            workload=self.workload,
            rate=self.rate,
            concurrency=self.concurrency,
            burstiness=self.burstiness,
            send_lateness=quantiles(self.lateness()),
            errors=self.errors(),
            warnings=tuple(self.warnings()),
        )
        return replace(figures, slo=tuple(self.slo.evaluate(figures))) if self.slo is not None else figures

    def to_dict(self) -> dict[str, Any]:
        """The run's figures as JSON (`LoadFigures.to_dict()`)."""
        return self.figures().to_dict()

    def meets_slo(self) -> bool:
        """Every SLO target met (a target without data is not met)."""
        if self.slo is None:
            return True
        return all(r.met is True for r in self.slo.evaluate(self.figures()))


# -- target ----------------------------------------------------------------------------------------


def normalize_base_url(url: str) -> str:
    """`http://host:port` from what a user may type (a trailing `/` or `/v1` is dropped)."""
    text = (url or "").strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad target URL {url!r}: write it like http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"bad target URL {url!r}: the port is not a number in 1-65535") from None
    return text.removesuffix("/v1")


def served_models(base_url: str, timeout: float = PREFLIGHT_TIMEOUT) -> list[str]:
    """The model ids the server lists at /v1/models (what `--model` defaults to)."""
    url = normalize_base_url(base_url)
    try:
        resp = httpx.get(f"{url}/v1/models", timeout=timeout)
    except httpx.HTTPError as exc:
        raise TargetError(f"cannot reach {url}: {_describe(exc)}") from None
    if resp.status_code != 200:
        raise TargetError(f"{url}/v1/models answered HTTP {resp.status_code}")
    try:
        return [str(m["id"]) for m in resp.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TargetError(f"{url}/v1/models did not answer an OpenAI model list") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- requests --------------------------------------------------------------------------------------


def build_payload(workload: Workload, model: str, shape: RequestShape, prefix: str, text: str) -> bytes:
    """The JSON body of one streaming request, encoded ahead of the run (nothing to do at send time)."""
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    if workload.temperature is not None:
        body["temperature"] = workload.temperature
    if workload.top_p is not None:
        body["top_p"] = workload.top_p
    if workload.sampling_seed is not None:
        body["seed"] = workload.sampling_seed
    if workload.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extra body field: exactly max_tokens output tokens
    if workload.endpoint == "chat":
        messages = [{"role": "system", "content": prefix}] if shape.shared_prefix else []
        body["messages"] = [*messages, {"role": "user", "content": text}]
        body["max_completion_tokens"] = shape.output_len
    else:
        body["prompt"] = f"{prefix} {text}" if shape.shared_prefix else text
        body["max_tokens"] = shape.output_len
    return json.dumps(body).encode()


async def send_request(session: aiohttp.ClientSession, url: str, body: bytes, rec: RequestRecord, t0: float,
                       timeout: float) -> None:
    """Send one request and fill `rec` with its timings; never raises (except cancellation).

    A request whose connection drops before any response (no status line: a pooled connection the
    server closed as the request went out) is sent once more, on a fresh connection, within the same
    timeout; its TTFT and E2E still count from the first send. vLLM never started it, and a load
    generator must not report the transport's race as the server's failure. A drop after the status
    line is the server's: recorded, never retried."""
    st = time.perf_counter()
    rec.sent = st - t0
    for attempt in range(1 + SEND_RETRIES):
        rec.error = None
        try:
            await asyncio.wait_for(_stream(session, url, body, rec, st), max(st + timeout - time.perf_counter(), 0.0))
            return
        except asyncio.TimeoutError:
            rec.ok, rec.error = False, f"timed out after {timeout:g} s"
        except aiohttp.ClientConnectorError as exc:  # refused, no route, DNS: the server is not there
            rec.ok, rec.error, rec.connect_error = False, f"cannot connect: {_describe(exc)}", True
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            rec.ok, rec.error = False, _describe(exc)
            if rec.status is None and attempt < SEND_RETRIES:
                rec.retries += 1
                continue
        except aiohttp.ClientError as exc:  # dropped mid-stream, bad HTTP, ...
            rec.ok, rec.error = False, _describe(exc)
        except ValueError as exc:  # a chunk that is not JSON (or not UTF-8)
            rec.ok, rec.error = False, f"bad stream: {exc}"
        return


_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


async def sse_messages(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The SSE messages of a body as they arrive (separated by a blank line; the last may lack it).
    Split on bytes, so a UTF-8 character cut between two reads is decoded whole."""
    buf = b""
    async for data in content.iter_any():
        buf += data
        if b"\n\n" not in buf:
            continue
        *messages, buf = buf.replace(b"\r\n", b"\n").split(b"\n\n")
        for message in messages:
            yield message
    if buf.strip():
        yield buf


async def _stream(session: aiohttp.ClientSession, url: str, body: bytes, rec: RequestRecord, st: float) -> None:
    async with session.post(url, data=body, headers=_HEADERS) as resp:
        rec.status = resp.status
        if resp.status != 200:
            detail = (await resp.read()).decode(errors="replace")
            rec.error = f"HTTP {resp.status}: {_error_message(detail)}"
            return
        first = last = None
        # Read on to the end of the body (past [DONE]), so the connection goes back to the pool.
        async for message in sse_messages(resp.content):
            for line in message.splitlines():
                if not line.startswith(b"data:"):
                    continue  # SSE comments (pings), event/id fields
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                chunk = json.loads(data)
                if chunk.get("choices"):
                    ts = time.perf_counter()  # when this message was parsed, as vLLM's client stamps it
                    if first is None:
                        first = ts
                    else:
                        rec.itl.append(ts - last)  # type: ignore[operator]
                    last = ts
                elif usage := chunk.get("usage"):
                    rec.output_tokens = usage.get("completion_tokens")
                    rec.prompt_tokens = usage.get("prompt_tokens")
                elif "error" in chunk:
                    rec.error = f"server error in stream: {_error_message(data.decode(errors='replace'))}"
                    return
        if first is None:
            rec.error = "the stream carried no token"
            return
        rec.ttft, rec.e2e = first - st, last - st  # type: ignore[operator]
        if rec.output_tokens is None:  # no usage chunk: one token per chunk is the best guess
            rec.output_tokens = len(rec.itl) + 1
        rec.ok = True


def _error_message(text: str) -> str:
    try:
        obj = json.loads(text)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")


# -- the run ----------------------------------------------------------------------------------------

# A look at a run so far: the requests finished up to now as a `LoadResult` (duration: from the
# first send to that moment). Called in a worker thread, one look at a time, so a look waiting on a
# database delays no stream the run is timing (its Python work does share the interpreter: keep
# looks spaced, `watch_every`). A reason back stops the run; an exception turns looking off for the
# rest of the run (`LoadResult.watch_error`), the run goes on.
Watch = Callable[[LoadResult], "str | None"]


class _Watcher:
    """The looks of one run: at most one at a time, never at the last request (it could stop
    nothing). The first reason back sets `stop` and keeps what that look judged (`cut`): the run's
    result is then exactly those requests."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.stop = asyncio.Event()
        self.cut: tuple[list[RequestRecord], float, str] | None = None  # (records judged, elapsed, reason)
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None

    def finished(self, done: list[RequestRecord], elapsed: float) -> None:
        n = len(done)
        if (self.plan.watch is None or self.stop.is_set() or self.error is not None or self.task is not None
                or n % self.plan.watch_every or n == self.plan.n):
            return
        self.task = asyncio.create_task(self._look(list(done), elapsed))

    async def _look(self, so_far: list[RequestRecord], elapsed: float) -> None:
        try:
            reason = await asyncio.to_thread(self.plan.watch, so_far, elapsed)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the caller's check failed (its storage, say): measure on, unwatched
            self.error = f"after {len(so_far)} requests: {_describe(exc)}"
            reason = None
        finally:
            self.task = None
        if reason and self.cut is None:
            self.cut = (so_far, elapsed, reason)
            self.stop.set()

    async def settle(self) -> None:
        """Wait for a look still running (it may be writing to the caller's storage)."""
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


@dataclass
class _Ran:
    records: list[RequestRecord]
    started: float  # the clock at the first send
    duration: float  # first send to last completion (or to the look that stopped the run)
    stopped: str | None = None
    watch_error: str | None = None


@dataclass
class _Plan:
    url: str
    model: str
    workload: Workload
    n: int | None  # None: until `duration`
    arrivals: np.ndarray | None
    concurrency: int | None
    duration: float | None
    seed: int
    timeout: float
    progress: bool
    # The run so far (finished records, seconds since the first send) -> a reason to stop, or None.
    watch: Callable[[list[RequestRecord], float], str | None] | None = None
    watch_every: int = 1  # look after every this many finished requests


def _requests(w: Workload, model: str, seed: int, limit: int, arrivals: np.ndarray | None,
              builder: PromptBuilder) -> Iterator[tuple[RequestRecord, bytes]]:
    """Records and bodies, built lazily; the same seed gives the same prompts in the same order."""
    for rec, shape, prefix, text in _prompts(w, seed, limit, arrivals, builder):
        yield rec, build_payload(w, model, shape, prefix, text)


def _prompts(w: Workload, seed: int, limit: int, arrivals: np.ndarray | None,
             builder: PromptBuilder) -> Iterator[tuple[RequestRecord, RequestShape, str, str]]:
    """Each request's record, shape, shared prefix and own text: real text (`w.prompts`) or words."""
    has_prefix = w.shared_prefix.fraction > 0
    if w.prompts is not None:
        from slotune.loadgen.corpus import Counter, shared_prefix_text

        prefix = shared_prefix_text(w.shared_prefix.length, seed, Counter(builder.tokenizer)) if has_prefix else ""
    else:
        prefix = builder.text(w.shared_prefix.length, np.random.default_rng([seed, 0xF1])) if has_prefix else ""
    shapes = w.shapes(seed, builder.tokenizer)
    for i in range(limit):
        shape = next(shapes)
        text = shape.text if shape.text is not None else builder.text(shape.prompt_len,
                                                                      np.random.default_rng([seed, i]))
        due = float(arrivals[i]) if arrivals is not None else None
        rec = RequestRecord(index=i, prompt_len=shape.prompt_len, output_len=shape.output_len, due=due)
        yield rec, shape, prefix, text


def _offline_builder(workload: Workload) -> PromptBuilder:
    if workload.tokenizer:
        return PromptBuilder(tokenizer=load_tokenizer(workload.tokenizer))
    if workload.prompts is None:
        raise ConfigError("writing synthetic prompts ahead of a run needs a workload with a local tokenizer "
                          "(without one their lengths are calibrated against the server)")
    return PromptBuilder()


def request_bodies(workload: Workload, model: str, seed: int, n: int) -> list[bytes]:
    """The bodies a run of `n` requests with this seed sends, in order, so that another client can
    send the very same prompts (bench/bench_loadgen.py --vs-vllm). A synthetic workload needs a local
    `tokenizer`: with it the texts do not depend on the calibration against the server."""
    return [body for _, body in _requests(workload, model, seed, n, None, _offline_builder(workload))]


def prompt_lines(workload: Workload, seed: int, n: int) -> list[str]:
    """The prompts a run of `n` requests with this seed sends, as `vllm bench serve` custom-dataset
    JSONL lines (`{"prompt": ..., "output_tokens": N}`): a chat request's system prompt (a shared
    prefix) is put before its user text, since the format has one prompt per line."""
    from slotune.loadgen.corpus import jsonl_line

    lines = []
    for _rec, shape, prefix, text in _prompts(workload, seed, n, None, _offline_builder(workload)):
        if shape.shared_prefix:
            text = f"{prefix}\n\n{text}" if workload.endpoint == "chat" else f"{prefix} {text}"
        lines.append(jsonl_line(text, shape.output_len))
    return lines


async def _prepare_builder(session: aiohttp.ClientSession, plan: _Plan) -> PromptBuilder:
    """Check the server answers at all (TargetError if not), then calibrate prompt lengths."""
    preflight = aiohttp.ClientTimeout(total=PREFLIGHT_TIMEOUT)
    try:
        async with session.get(f"{plan.url}/v1/models", timeout=preflight) as resp:
            await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise TargetError(f"cannot reach {plan.url}: {_describe(exc)}") from None
    tokenizer = load_tokenizer(plan.workload.tokenizer) if plan.workload.tokenizer else None
    ratio = 1.0
    try:  # vLLM's /tokenize: how many tokens our words make with the served tokenizer
        sample = calibration_text()
        async with session.post(f"{plan.url}/tokenize", timeout=preflight,
                                json={"model": plan.model, "prompt": sample, "add_special_tokens": False}) as resp:
            if resp.status == 200:
                count = (await resp.json(content_type=None)).get("count")
                if isinstance(count, int) and count > 0:
                    ratio = count / len(sample.split())
            else:
                await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
        pass  # not vLLM: about one token per word
    return PromptBuilder(tokens_per_word=ratio, tokenizer=tokenizer)


class _Progress:
    """A rich progress bar (or nothing)."""

    def __init__(self, enabled: bool, total: int | None, duration: float | None) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # On stderr, so `--json -` output stays clean.
        self.bar = Progress(TextColumn("load"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), transient=True, console=Console(stderr=True))
        label = f"(until {duration:g} s)" if total is None and duration else ""
        self.task = self.bar.add_task("load", total=total, info=label)
        self.failed = 0

    def __enter__(self) -> _Progress:  # noqa: PYI034
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def done(self, rec: RequestRecord) -> None:
        if self.bar is not None:
            self.failed += 0 if rec.ok else 1
            self.bar.update(self.task, advance=1, info=f"{self.failed} failed" if self.failed else "")


# The event loop's timers wake up to ~1 ms late (epoll's timeout is whole milliseconds): sleep until
# just before a request is due, then yield to the loop (which keeps serving streams) until it is.
SPIN_SECONDS = 0.0015


async def _sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > SPIN_SECONDS:
        await asyncio.sleep(delay - SPIN_SECONDS)
    while time.perf_counter() < when:
        await asyncio.sleep(0)


async def _run(plan: _Plan) -> _Ran:
    # As vllm.benchmarks.serve: one connection per request in flight (0: no limit), kept alive.
    connector = aiohttp.TCPConnector(limit=plan.concurrency or 0, limit_per_host=plan.concurrency or 0,
                                     ttl_dns_cache=300, use_dns_cache=True, keepalive_timeout=KEEPALIVE_SECONDS,
                                     force_close=False)
    # The whole request is bounded by `send_request`'s wait_for; aiohttp bounds only the connect.
    timeout = aiohttp.ClientTimeout(total=None, connect=min(plan.timeout, PREFLIGHT_TIMEOUT))
    endpoint = "/v1/chat/completions" if plan.workload.endpoint == "chat" else "/v1/completions"
    url = plan.url + endpoint
    records: list[RequestRecord] = []
    finished: list[RequestRecord] = []
    last_done: list[float] = []
    watcher = _Watcher(plan)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=READ_BUFSIZE) as session:
        builder = await _prepare_builder(session, plan)
        gen = _requests(plan.workload, plan.model, plan.seed, plan.n if plan.n is not None else MAX_REQUESTS,
                        plan.arrivals, builder)
        # Open loop: everything is built before the clock starts, so sending costs no prompt work.
        items: Iterator[tuple[RequestRecord, bytes]] = iter(list(gen)) if plan.n is not None else gen
        slots = asyncio.Semaphore(plan.concurrency) if plan.concurrency else None
        tasks: set[asyncio.Task[None]] = set()
        with _Progress(plan.progress, plan.n, plan.duration) as bar:

            async def one(rec: RequestRecord, body: bytes, t0: float) -> None:
                try:
                    await send_request(session, url, body, rec, t0, plan.timeout)
                    finished.append(rec)
                    last_done[:] = [time.perf_counter()]
                    watcher.finished(finished, last_done[0] - t0)
                finally:
                    if slots is not None:
                        slots.release()
                    bar.done(rec)

            async def send_all(t0: float) -> None:
                deadline = t0 + plan.duration if plan.duration else math.inf
                for rec, body in items:
                    if rec.due is not None:
                        await _sleep_until(t0 + rec.due)
                    if time.perf_counter() >= deadline:
                        break
                    if slots is not None:
                        await slots.acquire()
                        if time.perf_counter() >= deadline:
                            slots.release()
                            break
                    records.append(rec)
                    task = asyncio.create_task(one(rec, body, t0))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

            t0 = time.perf_counter()
            # Sending and then draining each race the watch's stop: a stop ends a wait for the next
            # arrival or a free slot at once, not when it is over.
            sending = asyncio.create_task(send_all(t0))
            stopping = asyncio.create_task(watcher.stop.wait())
            drain: asyncio.Future[list[None]] | None = None
            try:
                await asyncio.wait({sending, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if sending.done():
                    sending.result()
                    if tasks:
                        drain = asyncio.gather(*tasks)
                        await asyncio.wait({drain, stopping}, return_when=asyncio.FIRST_COMPLETED)
                        if drain.done():
                            drain.result()
                whole = sending.done() and (drain is None or drain.done())
                cut = None if whole else watcher.cut
                if cut is not None:  # stopped by the watch: what is in flight is dropped, not measured
                    await _cancel({sending, *tasks, *([drain] if drain is not None else [])})
                await watcher.settle()
            except asyncio.CancelledError:  # Ctrl-C: stop sending, drop in-flight requests, close cleanly
                watcher.cancel()
                await _cancel({sending, *tasks, *([drain] if drain is not None else [])})
                raise
            finally:
                stopping.cancel()
    if cut is not None:
        judged, elapsed, reason = cut
        return _Ran(list(judged), t0, elapsed, stopped=reason, watch_error=watcher.error)
    duration = (last_done[0] if last_done else time.perf_counter()) - t0
    return _Ran(records, t0, duration, watch_error=watcher.error)


async def _cancel(tasks: set[asyncio.Future[Any]]) -> None:
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_load(base_url: str, model: str, workload: Workload, *, rate: float | None = None,
             concurrency: int | None = None, num_requests: int | None = None, duration: float | None = None,
             slo: SloSpec | None = None, seed: int = 0, burstiness: float = 1.0, progress: bool = False,
             request_timeout: float = 120.0, watch: Watch | None = None, watch_every: int = 1) -> LoadResult:
    """Drive `workload` at `base_url` and measure it. Blocking; safe to call from a worker thread.

    `watch` (see `Watch`) is shown the run so far after every `watch_every` finished requests; a
    reason back stops the run: nothing more is sent, requests in flight are dropped, and the result
    holds the finished ones with `stopped` set to the reason.

    Raises TargetError when the server cannot be reached or every request failed to connect;
    ConfigError for bad arguments. Individual failed requests are counted in `failed`."""
    url = normalize_base_url(base_url)
    if rate is not None and not rate > 0:
        raise ConfigError(f"rate must be positive, not {rate}")
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, not {concurrency}")
    if num_requests is not None and not 1 <= num_requests <= MAX_REQUESTS:
        raise ConfigError(f"num_requests must be 1 to {MAX_REQUESTS:,}, not {num_requests}")
    if duration is not None and not duration > 0:
        raise ConfigError(f"duration must be positive, not {duration}")
    if not burstiness > 0:
        raise ConfigError(f"burstiness must be positive, not {burstiness}")
    if not request_timeout > 0:
        raise ConfigError(f"request_timeout must be positive, not {request_timeout}")
    if watch_every < 1:
        raise ConfigError(f"watch_every must be >= 1, not {watch_every}")
    open_rate = rate is not None and not math.isinf(rate)
    if duration is not None and num_requests is None and not open_rate and concurrency is None:
        raise ConfigError("a run bounded only by its duration needs a rate or a concurrency")
    n = num_requests
    if n is None and duration is not None and open_rate:
        n = max(1, math.ceil(rate * duration))  # the schedule then ends at the duration
    elif n is None and duration is None:
        n = DEFAULT_REQUESTS
    arrivals = arrival_times(n, rate, burstiness, seed) if n is not None else None

    def result_of(records: list[RequestRecord], took: float, started: float = 0.0,
                  stopped: str | None = None) -> LoadResult:
        return LoadResult(records=records, duration=took, workload=workload.name, rate=rate, concurrency=concurrency,
                          burstiness=burstiness, slo=slo, started=started, stopped=stopped)

    looked = None if watch is None else (lambda so_far, elapsed: watch(result_of(so_far, elapsed)))
    plan = _Plan(url=url, model=model, workload=workload, n=n, arrivals=arrivals, concurrency=concurrency,
                 duration=duration, seed=seed, timeout=request_timeout, progress=progress, watch=looked,
                 watch_every=watch_every)
    ran = asyncio.run(_run(plan))
    result = result_of(ran.records, ran.duration, ran.started, ran.stopped)
    result.watch_error = ran.watch_error
    if result.records and result.completed == 0 and all(r.connect_error for r in result.records):
        raise TargetError(f"every request failed to connect to {url}: {result.records[0].error}")
    return result


__all__ = ["LoadResult", "RequestRecord", "Watch", "normalize_base_url", "run_load", "served_models"]

"""vLLM's `/metrics` → typed windows: `scrape()` reads a page, `derive()` turns two scrapes into a
`Snapshot`, `VllmCollector` keeps the previous scrape so each `poll()` is one window.

Rules that keep the numbers honest:
- Histograms and counters are differenced per series, then summed over series (engines, models).
- A counter that went backwards, or a new `process_start_time_seconds`, means the server restarted
  inside the window: the after-scrape alone is the window (since the restart), `counter_reset=True`.
  Nothing is ever negative.
- No observations in a window gives None ("no data"), never 0; a family missing from the page
  gives None for what it feeds.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from slotune.collectors.exposition import Labels, Scrape, parse
from slotune.collectors.histogram import Histogram, summarize
from slotune.collectors.snapshot import Capacity, GpuSnapshot, Snapshot
from slotune.errors import ConfigError, TargetError
from slotune.metric_names import BY_KEY, Kind
from slotune.slo import ERROR_FINISH_REASONS

__all__ = ["Scrape", "VllmCollector", "derive", "derive_per_engine", "derive_per_model", "metrics_url", "scrape"]

SCRAPE_TIMEOUT_S = 10.0
# A vLLM page is ~55 KB (a few hundred KB with many engines or LoRA adapters); 16 MiB leaves room
# for any real one while a hostile target cannot make the process hold more.
MAX_PAGE_BYTES = 16 << 20
_RESTART_TOLERANCE_S = 1.0  # process_start_time_seconds is rounded to 10 ms by the client library


def metrics_url(url: str) -> str:
    """`http://host:port` → `http://host:port/metrics`; a URL with a path is taken as given."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ConfigError(f"bad target URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"bad target URL {url!r}: expected http://HOST:PORT[/metrics]")
    if parts.path not in ("", "/"):
        return url
    return urlunsplit(parts._replace(path="/metrics"))  # before any query string, not after it


def shown_url(url: str) -> str:
    """`url` fit for an error line or a log: user and password, if any, replaced by `***`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def scrape(url: str, client: httpx.Client | None = None, timeout: float = SCRAPE_TIMEOUT_S,
           max_bytes: int = MAX_PAGE_BYTES) -> Scrape:
    """Read and parse one `/metrics` page, bounded: the whole scrape (connect, headers, body) ends
    within `timeout` seconds and reads at most `max_bytes` bytes, however slowly or however much the
    target sends. Raises `TargetError` when the target is down, too slow, too big or answers garbage."""
    target = metrics_url(url)
    body = fetch_bounded(target, client, timeout, max_bytes)
    return parse(body.decode("utf-8", errors="replace"), url=target, timestamp=time.time())


def fetch_bounded(target: str, client: httpx.Client | None, timeout: float, max_bytes: int) -> bytes:
    """GET `target`'s body in a worker thread the caller waits on for `timeout` seconds at most.

    Why a thread: httpx's timeouts bound each read, not the response, so a page sent a line a second
    never times out. The worker stops reading at the deadline or past `max_bytes` (so an abandoned
    worker ends by itself, holding at most `max_bytes`), and the caller never waits past the deadline."""
    deadline = time.monotonic() + timeout
    out: dict[str, Any] = {}

    shown = shown_url(target)

    def work() -> None:
        try:
            out["body"] = _read(target, client, timeout, max_bytes, deadline)
        except TargetError as exc:
            out["error"] = TargetError(str(exc).replace(target, shown))
        except httpx.HTTPError as exc:
            late = time.monotonic() >= deadline
            out["error"] = TargetError(f"cannot scrape {shown}: did not finish within {timeout:g} s" if late
                                       else f"cannot scrape {shown}: {exc.__class__.__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the caller reports it; a thread would print a traceback
            out["error"] = TargetError(f"cannot scrape {shown}: {exc.__class__.__name__}: {exc}")

    worker = threading.Thread(target=work, name="slotune-scrape", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    if worker.is_alive():
        raise TargetError(f"cannot scrape {shown}: did not finish within {timeout:g} s")
    if "error" in out:
        raise out["error"]
    return out["body"]  # type: ignore[no-any-return]


def _read(target: str, client: httpx.Client | None, timeout: float, max_bytes: int, deadline: float) -> bytes:
    own = client is None
    client = client or httpx.Client()
    try:
        # identity: a compressed page could expand past max_bytes inside one chunk before it is counted
        with client.stream("GET", target, timeout=timeout, headers={"Accept-Encoding": "identity"}) as response:
            if response.status_code != 200:
                raise TargetError(f"cannot scrape {target}: HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise TargetError(f"cannot scrape {target}: page of {int(declared)} bytes is over the limit "
                                  f"of {max_bytes} bytes")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise TargetError(f"cannot scrape {target}: page over the limit of {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TargetError(f"cannot scrape {target}: did not finish within {timeout:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    finally:
        if own:
            client.close()


def _went_backwards(before: Scrape, after: Scrape) -> bool:
    started = (before.started, after.started)
    if None not in started and abs(started[1] - started[0]) > _RESTART_TOLERANCE_S:  # type: ignore[operator]
        return True
    for key, series in after.values.items():
        if BY_KEY[key].kind is not Kind.COUNTER:  # gauges may fall; counters only on a restart
            continue
        old = before.values.get(key, {})
        if any(v < old[ls] for ls, v in series.items() if ls in old):
            return True
    for key, series in after.histograms.items():
        old = before.histograms.get(key, {})
        if any(ls in old and h.minus(old[ls]) is None for ls, h in series.items()):
            return True
    return False


class _Window:
    """Deltas between a base scrape (None: since server start) and the after-scrape."""

    def __init__(self, base: Scrape | None, after: Scrape) -> None:
        self.base, self.after = base, after
        self.notes: list[str] = []  # what could not be summed, said once per family

    def counter(self, key: str) -> float | None:
        parts = self.counter_by(key, None)
        return None if parts is None else sum(parts.values())

    def counter_by(self, key: str, label: str | None) -> dict[str, float] | None:
        series = self.after.values.get(key)
        if series is None:
            return None
        old = self.base.values.get(key, {}) if self.base else {}
        out: dict[str, float] = defaultdict(float)
        for labels, value in series.items():
            out[_label(labels, label)] += max(value - old.get(labels, 0.0), 0.0)
        return dict(out)

    def histogram(self, key: str) -> Histogram | None:
        series = self.after.histograms.get(key)
        if not series:
            return None
        old = self.base.histograms.get(key, {}) if self.base else {}
        total: Histogram | None = None
        for labels, hist in series.items():
            delta = hist.minus(old[labels]) if labels in old else hist
            delta = hist if delta is None else delta
            if total is not None and total.bounds != delta.bounds:
                # vLLM sizes token-count buckets from each model's max length: series of two models
                # cannot be added. The total stays empty; the per-model windows carry the figures.
                models = ", ".join(self.after.models()) or "the series"
                self.notes.append(f"{self.after.sources[key]}: bucket layouts differ across {models}; "
                                  "no total, see the per-model figures")
                return None
            total = delta if total is None else total.plus(delta)
        return total

    def gauge(self, key: str, how: str = "sum") -> float | None:
        series = self.after.values.get(key)
        if not series:
            return None
        values = list(series.values())
        return sum(values) if how == "sum" else sum(values) / len(values)

    def gauge_by(self, key: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for labels, value in self.after.values.get(key, {}).items():
            out[_label(labels, label)] += value
        return dict(out)


def _label(labels: Labels, name: str | None) -> str:
    if name is None:
        return ""
    return next((v for k, v in labels if k == name), "")


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _capacity(after: Scrape) -> Capacity | None:
    infos = after.infos.get("cache_config")
    if not infos:
        return None

    def num(d: dict[str, str], key: str, cast: type = int) -> float | int | None:
        try:
            return cast(float(d[key])) if cast is int else float(d[key])
        except (KeyError, ValueError):
            return None

    def total(key: str, cast: type = int) -> float | int | None:
        vals = [num(d, key, cast) for d in infos]
        return None if any(v is None for v in vals) else sum(vals)  # type: ignore[arg-type]

    first = infos[0]
    block_size = num(first, "block_size")
    blocks = total("num_gpu_blocks")
    tokens = total("kv_cache_size_tokens")
    if tokens is None and blocks is not None and block_size is not None:
        tokens = int(blocks * block_size)  # releases before `kv_cache_size_tokens` was exported
    prefix = first.get("enable_prefix_caching")
    return Capacity(
        block_size=block_size,  # type: ignore[arg-type]
        num_blocks=blocks,  # type: ignore[arg-type]
        kv_cache_tokens=tokens,  # type: ignore[arg-type]
        max_concurrency=total("kv_cache_max_concurrency", float),
        prefix_caching_enabled=None if prefix is None else prefix == "True",
        cache_dtype=first.get("cache_dtype"),
    )


def derive(
    before: Scrape | None,
    after: Scrape,
    target: str,
    gpu: GpuSnapshot | None = None,
    engine: str | None = None,
    model: str | None = None,
) -> Snapshot:
    """The window between two scrapes (before=None: cumulative since the server started), summed
    over engines and models, or one engine's with `engine="0"`, or one model's with `model="name"`."""
    if engine is not None:
        before = before.for_engine(engine) if before is not None else None
        after = after.for_engine(engine)
    if model is not None:
        before = before.for_model(model) if before is not None else None
        after = after.for_model(model)
    reset = before is not None and _went_backwards(before, after)
    if before is None:
        start = after.started if after.started is not None else after.timestamp
    elif reset:
        start = max(before.timestamp, min(after.started or before.timestamp, after.timestamp))
    else:
        start = before.timestamp
    w = _Window(None if reset else before, after)
    seconds = after.timestamp - start

    def per_s(x: float | None) -> float | None:
        return None if x is None or seconds <= 0 else x / seconds

    by_reason = w.counter_by("request_success", "finished_reason")
    finished = None if by_reason is None else sum(by_reason.values())
    errors = None if by_reason is None else sum(by_reason.get(r, 0.0) for r in ERROR_FINISH_REASONS)
    prompt_tokens, generation_tokens = w.counter("prompt_tokens"), w.counter("generation_tokens")
    preemptions = w.counter("preemptions")

    drafts = w.counter("spec_decode_drafts")
    accepted = w.counter("spec_decode_accepted_tokens")
    draft_tokens = w.counter("spec_decode_draft_tokens")
    per_pos = w.counter_by("spec_decode_accepted_per_pos", "position") or {}
    positions = sorted(per_pos, key=lambda p: int(p) if p.isdigit() else 0)

    e2e = w.histogram("e2e")
    return Snapshot(
        in_flight_cap=_in_flight_cap(None if reset else before, after, e2e, seconds),
        target=target,
        window_start=start,
        window_end=after.timestamp,
        cumulative=before is None,
        ttft=summarize(w.histogram("ttft")),
        tpot=summarize(w.histogram("tpot")),
        itl=summarize(w.histogram("itl")),
        e2e=summarize(e2e),
        queue=summarize(w.histogram("queue")),
        prefill=summarize(w.histogram("prefill")),
        decode=summarize(w.histogram("decode")),
        prompt_tokens=summarize(w.histogram("prompt_tokens_hist")),
        output_tokens=summarize(w.histogram("output_tokens_hist")),
        iteration_tokens=summarize(w.histogram("iteration_tokens")),
        requests_finished=finished,
        request_rate=per_s(finished),
        prompt_tokens_total=prompt_tokens,
        generation_tokens_total=generation_tokens,
        prompt_tokens_per_second=per_s(prompt_tokens),
        generation_tokens_per_second=per_s(generation_tokens),
        finished_by_reason=by_reason or {},
        error_rate=_ratio(errors, finished),
        requests_running=w.gauge("requests_running"),
        requests_waiting=w.gauge("requests_waiting"),
        waiting_by_reason=w.gauge_by("requests_waiting_by_reason", "reason"),
        kv_cache_usage=w.gauge("kv_cache_usage", how="mean"),  # a fraction: engines average, not add
        preemptions=preemptions,
        preemptions_per_second=per_s(preemptions),
        prefix_cache_hit_rate=_ratio(w.counter("prefix_cache_hits"), w.counter("prefix_cache_queries")),
        spec_decode_acceptance_rate=_ratio(accepted, draft_tokens),
        # vLLM's definition: 1 (the bonus token each verified draft yields) + accepted per draft.
        spec_decode_mean_acceptance_length=None if not drafts or accepted is None else 1 + accepted / drafts,
        spec_decode_per_position=tuple(per_pos[p] / drafts for p in positions) if drafts else (),
        spec_decode_drafts=drafts,
        spec_decode_draft_tokens=draft_tokens,
        spec_decode_accepted_tokens=accepted,
        capacity=_capacity(after),
        gpu=gpu,
        counter_reset=reset,
        engines=1 if engine is not None else max(len(after.engines()), 1),
        models=tuple(after.models()),
        notes=tuple(w.notes),
        per_model=derive_per_model(before, after, target) if engine is None and model is None else {},
    )


def _in_flight_cap(before: Scrape | None, after: Scrape, e2e: Histogram | None, seconds: float) -> float | None:
    """An upper bound on the requests in flight on average over the window. Little's law (e2e mean x
    finished / window) counts each finished request's whole life, also the part before the window
    opened; a request spends at most the window inside it, so the e2e buckets bound it by
    sum(count x min(upper bound, window)) / window. Where the running and waiting gauges read load at
    both ends of the window (steady state, not drained), in flight is bounded by what they saw."""
    caps: list[float] = []
    if e2e is not None and e2e.count > 0 and seconds > 0:
        prev, total = 0.0, 0.0
        for bound, cum in zip(e2e.bounds, e2e.counts, strict=True):
            total += (cum - prev) * min(bound, seconds)
            prev = cum
        caps.append(total / seconds)

    def seen(s: Scrape) -> float | None:
        parts = [sum(s.values.get(k, {}).values()) for k in ("requests_running", "requests_waiting")
                 if s.values.get(k)]
        return sum(parts) if parts else None

    ends = [seen(before), seen(after)] if before is not None else [None]
    if all(v is not None and v > 0 for v in ends):
        caps.append(max(ends))  # type: ignore[type-var]
    return min(caps) if caps else None


def derive_per_engine(before: Scrape | None, after: Scrape, target: str) -> dict[str, Snapshot]:
    """One window per data-parallel engine (keyed by the `engine` label)."""
    return {e: derive(before, after, target, engine=e) for e in after.engines()}


def derive_per_model(before: Scrape | None, after: Scrape, target: str) -> dict[str, Snapshot]:
    """One window per served model (keyed by the `model_name` label); empty for a one-model page."""
    models = after.models()
    return {m: derive(before, after, target, model=m) for m in models} if len(models) > 1 else {}


class VllmCollector:
    """Polls one target; each `poll()` returns the window since the previous one (None the first time)."""

    def __init__(self, target_url: str, gpu: object | None = None, client: httpx.Client | None = None) -> None:
        metrics_url(target_url)  # refuse a bad URL now, not at the first poll
        self.target_url = target_url
        self.gpu = gpu  # anything with .read() -> GpuSnapshot (collectors.gpu.GpuCollector)
        self.client = client
        self.last: Scrape | None = None

    def _gpu(self) -> GpuSnapshot | None:
        return self.gpu.read() if self.gpu is not None else None  # type: ignore[attr-defined]

    def poll(self) -> Snapshot | None:
        current = scrape(self.target_url, self.client)
        previous, self.last = self.last, current
        if previous is None:
            return None
        return derive(previous, current, self.target_url, gpu=self._gpu())

    def cumulative(self) -> Snapshot:
        """Everything since the server started, from one fresh scrape."""
        current = scrape(self.target_url, self.client)
        self.last = current
        return derive(None, current, self.target_url, gpu=self._gpu())

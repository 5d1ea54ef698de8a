"""Parse a Prometheus text page into a `Scrape`: only the vLLM series slotune reads, typed.

Why not `prometheus_client.parser.text_string_to_metric_families`: it builds every family on the
page (Python GC, HTTP histograms, `_created` gauges) as objects, ~12 ms for one 55 KB vLLM page on
this host; this parser checks every line's shape with one regex but builds only the ~300 samples it
needs, in a fraction of that (see `bench/bench_parse.py`). `tests/unit/test_collectors_parse.py`
checks it gives the same values as prometheus_client's parser on the real captures.

Garbage is refused, never guessed at: a line that is not a sample, a comment or blank raises
`TargetError` naming the line. NaN in a counter or histogram (which cannot be NaN) does the same;
a NaN gauge reads as "no data".
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from slotune.collectors.histogram import Histogram
from slotune.errors import NoStatsError, TargetError
from slotune.metric_names import Kind, canonical_name, lookup

Labels = tuple[tuple[str, str], ...]

_SAMPLE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)"  # name
    r"(?:\{(.*)\})?"  # labels (parsed below, only for samples slotune reads)
    r"[ \t]+([^ \t]+)"  # value
    r"(?:[ \t]+-?[0-9]+)?[ \t]*"  # optional timestamp
)
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(?:,|$)')
# The longest line a page may have: real vLLM lines are under 1 KB (an info gauge with every cache
# setting as a label is the longest); an 8 MB label once cost 1.4 GB to parse.
MAX_LINE_CHARS = 64 << 10
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE = re.compile(r"\\[\\\"n]")


@dataclass(frozen=True)
class Scrape:
    """What one scrape of a vLLM `/metrics` page said, keyed by `metric_names` keys.

    `values` holds counters and gauges, `histograms` the cumulative histograms, `infos` the label
    sets of info gauges; each per label set (which keeps `engine`, `model_name` and e.g. `reason`).
    `sources` says which exposed name each key was read from (new name or an older alias)."""

    url: str
    timestamp: float  # unix seconds when the page was read
    values: dict[str, dict[Labels, float]] = field(default_factory=dict)
    histograms: dict[str, dict[Labels, Histogram]] = field(default_factory=dict)
    infos: dict[str, tuple[dict[str, str], ...]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def started(self) -> float | None:
        """The server process' start time, when the page says."""
        series = self.values.get("process_start")
        return max(series.values()) if series else None

    def label_values(self, label: str) -> list[str]:
        """The values of one label on the page (`engine`, `model_name`), numbers in numeric order."""
        seen: set[str] = set()
        for group in (*self.values.values(), *self.histograms.values()):
            seen.update(v for labels in group for k, v in labels if k == label)
        for labelsets in self.infos.values():
            seen.update(d[label] for d in labelsets if label in d)
        return sorted(seen, key=lambda e: (not e.isdigit(), int(e) if e.isdigit() else 0, e))

    def engines(self) -> list[str]:
        """The `engine` label values on the page (data-parallel engines), in numeric order."""
        return self.label_values("engine")

    def models(self) -> list[str]:
        """The `model_name` label values on the page (one per served model)."""
        return self.label_values("model_name")

    def for_label(self, label: str, value: str) -> Scrape:
        """Only the series whose `label` is `value` (series without the label are kept: they are shared)."""

        def keep(labels: Labels) -> bool:
            return all(v == value for k, v in labels if k == label)

        return Scrape(
            url=self.url,
            timestamp=self.timestamp,
            values={k: {ls: v for ls, v in s.items() if keep(ls)} for k, s in self.values.items()},
            histograms={k: {ls: h for ls, h in s.items() if keep(ls)} for k, s in self.histograms.items()},
            infos={k: tuple(d for d in s if d.get(label, value) == value) for k, s in self.infos.items()},
            sources=self.sources,
        )

    def for_engine(self, engine: str) -> Scrape:
        """Only the series of one engine (series without an `engine` label are kept: they are shared)."""
        return self.for_label("engine", engine)

    def for_model(self, model: str) -> Scrape:
        """Only the series of one served model (`model_name`)."""
        return self.for_label("model_name", model)


def _labels(body: str | None, lineno: int, line: str, url: str) -> dict[str, str]:
    if not body:
        return {}
    out: dict[str, str] = {}
    pos, end = 0, len(body)
    while pos < end:
        m = _LABEL.match(body, pos)
        if m is None:
            if not body[pos:].strip():
                break
            raise TargetError(f"{url}: line {lineno}: malformed labels in {line[:160]!r}")
        value = m.group(2)
        if "\\" in value:
            value = _ESCAPE.sub(lambda e: _ESCAPES[e.group(0)], value)
        out[m.group(1)] = value
        pos = m.end()
    return out


def parse(text: str, url: str = "", timestamp: float | None = None) -> Scrape:
    """One `/metrics` page → `Scrape`. Raises `TargetError` on garbage, `NoStatsError` (a `TargetError`)
    when the page carries no vLLM sample."""
    # key → rank of the spelling (0 = current name) → labels → value / histogram parts
    flat: dict[str, dict[int, dict[Labels, float]]] = defaultdict(lambda: defaultdict(dict))
    hist: dict[str, dict[int, dict[Labels, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    infos: dict[str, dict[int, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    names: dict[tuple[str, int], str] = {}
    match = _SAMPLE.fullmatch
    declared = http = False  # vLLM families declared (HELP/TYPE); HTTP server metrics seen
    for lineno, raw in enumerate(text.splitlines(), 1):
        if len(raw) > MAX_LINE_CHARS:
            raise TargetError(f"{url}: line {lineno}: {len(raw)} characters, over the limit of {MAX_LINE_CHARS} "
                              f"(a label that long is not a vLLM metric): {raw[:80]!r}...")
        line = raw.strip()
        if not line or line[0] == "#":
            if not declared and line.startswith(("# TYPE ", "# HELP ")):
                declared = canonical_name(line[7:].split(" ", 1)[0]).startswith("vllm:")
            continue
        m = match(line)
        if m is None:
            raise TargetError(f"{url}: line {lineno}: not a Prometheus sample: {line[:160]!r}")
        name, body, value_text = m.groups()
        http = http or name.startswith("http_request")
        try:
            value = float(value_text)
        except ValueError:
            raise TargetError(f"{url}: line {lineno}: bad value {value_text!r} in {line[:160]!r}") from None
        hit = lookup(name)
        if hit is None:
            continue
        metric, rank, suffix = hit
        labels = _labels(body, lineno, line, url)
        if math.isnan(value):
            if metric.kind is Kind.GAUGE:
                continue  # a gauge may be undefined for a moment: "no data"
            raise TargetError(f"{url}: line {lineno}: NaN in {metric.kind.value} {name!r}: {line[:160]!r}")
        if math.isinf(value) or value < 0:
            # Every quantity vLLM exports (counts, seconds, ratios, timestamps) is finite and >= 0;
            # +Inf KV usage once raised "KV usage inf%" and broke JSON output and PostgreSQL writes.
            what = "infinite" if math.isinf(value) else "negative"
            raise TargetError(f"{url}: line {lineno}: {what} value in {metric.kind.value} {name!r}: {line[:160]!r}")
        if metric.fraction and value > 1:
            raise TargetError(f"{url}: line {lineno}: {name!r} is a share from 0 to 1, not {value_text}: "
                              f"{line[:160]!r}")
        names[(metric.key, rank)] = metric.names[rank]  # canonical spelling, whatever the prefix
        if metric.kind is Kind.INFO:
            infos[metric.key][rank].append(labels)
        elif metric.kind is Kind.HISTOGRAM:
            le = labels.pop("le", None)
            parts = hist[metric.key][rank].setdefault(tuple(sorted(labels.items())), {"buckets": []})
            if suffix == "_bucket":
                if le is None:
                    raise TargetError(f"{url}: line {lineno}: histogram bucket without 'le': {line[:160]!r}")
                try:
                    parts["buckets"].append((float(le), value))
                except ValueError:
                    raise TargetError(f"{url}: line {lineno}: bad 'le' {le!r}") from None
            else:
                if suffix in parts:
                    raise TargetError(f"{url}: line {lineno}: duplicate series {name!r}{_show(labels)}")
                parts[suffix] = value
        else:
            series, key = flat[metric.key][rank], tuple(sorted(labels.items()))
            if key in series:  # last-wins once reported 5 requests instead of 48
                raise TargetError(f"{url}: line {lineno}: duplicate series {name!r}{_show(labels)}")
            series[key] = value

    # Where a page has a quantity under both its current and an older name, read the current one.
    scrape = Scrape(url=url, timestamp=time.time() if timestamp is None else timestamp)
    for key, by_rank in flat.items():
        rank = min(by_rank)
        scrape.values[key] = by_rank[rank]
        scrape.sources[key] = names[(key, rank)]
    for key, by_rank in infos.items():
        rank = min(by_rank)
        scrape.infos[key] = tuple(by_rank[rank])
        scrape.sources[key] = names[(key, rank)]
    for key, by_rank in hist.items():
        rank = min(by_rank)
        scrape.sources[key] = names[(key, rank)]
        scrape.histograms[key] = {
            labels: _histogram(names[(key, rank)], parts, url) for labels, parts in by_rank[rank].items()
        }
    if not (set(scrape.sources) - {"process_start"}):
        raise NoStatsError(f"{url}: {no_vllm_reason(declared, http)}")
    return scrape


def no_vllm_reason(declared: bool, http: bool) -> str:
    """Why a page carries no vLLM sample, from what it does carry (the known causes, named)."""
    if declared:
        return ("vLLM's metric families are declared but carry no samples: the server runs with "
                "--disable-log-stats, or (vLLM V0) it has not served its first request yet")
    if http:
        return ("only the HTTP server's metrics, none of vLLM's own: vLLM >= 0.10.2 turns its stats off "
                "when started with --api-server-count above 1 (data-parallel servers default to one API server "
                "per local rank), or with --disable-log-stats; start it with one API server to read its engine")
    return "no vLLM metrics on this page (is it a vLLM server's /metrics?)"


def _show(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v[:40]}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def _histogram(name: str, parts: dict[str, Any], url: str) -> Histogram:
    buckets = sorted(parts["buckets"])
    if not buckets or not math.isinf(buckets[-1][0]):
        raise TargetError(f"{url}: histogram {name!r} has no '+Inf' bucket")
    bounds = tuple(b for b, _ in buckets)
    counts = tuple(c for _, c in buckets)
    if len(set(bounds)) != len(bounds):
        raise TargetError(f"{url}: histogram {name!r}: duplicate series (a bucket 'le' given twice)")
    count = parts.get("_count", counts[-1])
    if count != counts[-1]:  # Prometheus defines _count as the +Inf bucket: a page that disagrees lies
        raise TargetError(f"{url}: histogram {name!r}: _count {count:g} disagrees with the '+Inf' bucket "
                          f"{counts[-1]:g}")
    return Histogram(bounds, counts, parts.get("_sum", math.nan), count)

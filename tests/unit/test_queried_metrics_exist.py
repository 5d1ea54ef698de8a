"""Every metric a dashboard panel, annotation or alert/recording rule queries is one something
exports: `slotune_*` names from the sidecar's own registry (read from the code, not a hand list),
`vllm:*` names from `slotune.metric_names`. A panel on a name nobody exports draws "No data" forever
and no PromQL parser notices."""

from __future__ import annotations

import re

import pytest
import yaml

from slotune.metric_names import SAMPLE_INDEX
from slotune.sidecar.metrics import SidecarMetrics
from tests.support import promstack
from tests.support.paths import REPO

_SLOTUNE = re.compile(r"(?<![\w:])slotune_[A-Za-z0-9_]+")
_VLLM = re.compile(r"(?<![\w:])vllm:[A-Za-z0-9_:]+")
# The sample names each kind of family exposes (the bare family name only for gauges).
_SUFFIXES = {"gauge": ("",), "unknown": ("",), "counter": ("_total", "_created"),
             "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("", "_sum", "_count", "_created"),
             "info": ("_info",)}


def exported_slotune_series() -> set[str]:
    """Sample names the sidecar's /metrics can carry, from the registry's families and their kinds."""
    out: set[str] = set()
    for family in SidecarMetrics().registry.collect():
        out.update(family.name + s for s in _SUFFIXES[family.type])
    return out


def queries() -> list[tuple[str, str]]:
    out = [(f"{name} {where}", expr) for name, d in promstack.load_dashboards().items()
           for where, expr in promstack.dashboard_queries(d)]
    for f in sorted((REPO / "deploy/prometheus/rules").glob("*.yml")):
        for g in yaml.safe_load(f.read_text())["groups"]:
            out += [(f"{f.name} {r.get('alert') or r.get('record')}", r["expr"]) for r in g["rules"]]
    return out


def _strip_strings(expr: str) -> str:
    # label values ("...") and legends may mention names without querying them
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def test_the_registry_reader_sees_the_sidecars_series() -> None:
    names = exported_slotune_series()
    assert {"slotune_target_up", "slotune_scrapes_total", "slotune_scrape_duration_seconds_bucket"} <= names


@pytest.mark.parametrize(("pattern", "known", "what"), [
    (_SLOTUNE, exported_slotune_series(), "the sidecar's registry (slotune/sidecar/metrics.py)"),
    (_VLLM, set(SAMPLE_INDEX), "slotune/metric_names.py"),
], ids=["slotune", "vllm"])
def test_every_queried_metric_is_exported(pattern: re.Pattern[str], known: set[str], what: str) -> None:
    used = [(where, n) for where, e in queries() for n in pattern.findall(_strip_strings(e))]
    assert used, "the scan found no names: the pattern or the sources moved"
    missing = sorted({f"{where}: {n}" for where, n in used if n not in known})
    assert not missing, f"queried but not in {what}:\n" + "\n".join(missing)

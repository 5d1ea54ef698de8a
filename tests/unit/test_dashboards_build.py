"""Dashboards: the committed JSON is the generator's output, valid against Grafana 11.6's JSON Schema,
and structurally sound. (No Grafana server can run here; the schema and these checks stand in for
loading the dashboards, and tests/integration/test_stack_prometheus.py runs every query.)"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.support import promstack
from tests.support.paths import REPO, SHARED

SCHEMAS = SHARED / "reference" / "grafana-dashboard-schema"
DASHBOARDS = promstack.load_dashboards()


def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("dashboards_build", REPO / "dashboards" / "build.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _schema(name: str, ref: str | None = None) -> Draft7Validator:
    doc = json.loads((SCHEMAS / name).read_text())
    if ref:
        doc = {"$ref": f"#/definitions/{ref}", "definitions": doc["definitions"]}
    return Draft7Validator(doc)


def test_committed_json_is_the_generators_output() -> None:
    rendered = _builder().render()
    assert sorted(rendered) == sorted(DASHBOARDS), "run `python dashboards/build.py`"
    for name, text in rendered.items():
        assert (REPO / "dashboards" / name).read_text() == text, f"{name} is stale: run `python dashboards/build.py`"


def test_five_dashboards_with_stable_uids() -> None:
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert uids == {"slotune-slo", "slotune-engine", "slotune-specdecode", "slotune-gpu", "slotune-tuning"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_schema(name: str) -> None:
    dash = DASHBOARDS[name]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in _schema("dashboard.v11.6.x.json").iter_errors(dash)]
    panel = _schema("dashboard.v11.6.x.json", "Panel")
    ts_options = _schema("timeseries.v11.6.x.json", "Options")
    ts_custom = _schema("timeseries.v11.6.x.json", "FieldConfig")
    target = _schema("prometheus.v11.6.x.json")
    for p in dash["panels"]:
        errors += [f"panel {p['id']}: {e.message}" for e in panel.iter_errors(p)]
        errors += [f"panel {p['id']} target: {e.message}" for t in p["targets"] for e in target.iter_errors(t)]
        if p["type"] == "timeseries":
            errors += [f"panel {p['id']} options: {e.message}" for e in ts_options.iter_errors(p["options"])]
            errors += [f"panel {p['id']} custom: {e.message}"
                       for e in ts_custom.iter_errors(p["fieldConfig"]["defaults"]["custom"])]
    assert not errors, errors


def test_schema_check_can_fail() -> None:
    bad = json.loads(json.dumps(DASHBOARDS["engine.json"]))
    bad["id"] = None
    bad["panels"][0]["gridPos"].pop("w")
    assert len(list(_schema("dashboard.v11.6.x.json").iter_errors(bad))) >= 2


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_structure(name: str) -> None:
    dash: dict[str, Any] = DASHBOARDS[name]
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    defined = promstack.variable_names(dash)
    for p in panels:
        assert p.get("datasource", {}).get("uid"), f"panel {p['id']} has no datasource"
        assert p["targets"], f"panel {p['id']} has no query"
        for t in p["targets"]:
            assert t.get("datasource", {}).get("uid"), f"panel {p['id']} target has no datasource"
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
    for a, b in ((a, b) for i, a in enumerate(panels) for b in panels[i + 1:]):
        assert not _overlap(a["gridPos"], b["gridPos"]), f"{a['title']!r} overlaps {b['title']!r}"
    used = promstack.used_variables(json.dumps(dash)) - set(promstack.GRAFANA_BUILTINS) - {"__all"}
    assert used <= defined, f"undefined variables: {used - defined}"


def test_recording_rules_used_by_dashboards_exist() -> None:
    """Panels read recording rules (one definition per SLI): every `level:metric:op` name they
    use is recorded by a committed rule file."""
    import re

    recorded = {r["record"] for f in (REPO / "deploy/prometheus/rules").glob("*.yml")
                for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "record" in r}
    used = {n for d in DASHBOARDS.values() for _, e in promstack.dashboard_queries(d)
            for n in re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", e)}
    assert used and used <= recorded, used - recorded


def test_slo_thresholds_drawn_at_the_default_targets() -> None:
    from slotune.slo import DEFAULT_SLO, SloSpec

    ttft = next(p for p in DASHBOARDS["slo-overview.json"]["panels"] if p["title"] == "Time to first token")
    steps = ttft["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == SloSpec.parse(DEFAULT_SLO).request_thresholds()["ttft"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_query_parses_as_promql(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """promtool parses each expression (as a recording rule) after Grafana's variable substitution."""
    rules = [{"record": f"dashboard:query:q{i}", "expr": promstack.substitute(e)}
             for i, (_, e) in enumerate(q for d in DASHBOARDS.values() for q in promstack.dashboard_queries(d))]
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(f)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

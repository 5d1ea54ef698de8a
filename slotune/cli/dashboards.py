"""`slotune dashboards`: list slotune's Grafana dashboards and push them to a Grafana through its HTTP API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from slotune.cli.options import http_url_option
from slotune.errors import ConfigError, TargetError, one_line

# slotune/dashboards: the repo's dashboards/ (a symlink in a checkout; package data `slotune.dashboards`
# in a wheel); override with --dir or SLOTUNE_DASHBOARDS_DIR.
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "dashboards"


def load_dashboards(directory: Path) -> dict[str, dict[str, Any]]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ConfigError(f"{directory}: no dashboard JSON files (see dashboards/build.py)")
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            dash = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{f}: not a dashboard JSON file ({exc})") from None
        if not isinstance(dash, dict) or not dash.get("uid"):
            raise ConfigError(f"{f}: a dashboard needs a uid (push keys on it)")
        out[f.name] = dash
    return out


def push(dashboards: dict[str, dict[str, Any]], grafana_url: str, token: str, folder: str) -> list[dict[str, Any]]:
    """Create the folder if missing, then save each dashboard with `overwrite: true`: Grafana keys
    an upload on its uid, so a second push updates the same dashboards in place (a new version)."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaException

    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=10.0)
    folder_uid = _folder_uid(folder)
    try:
        folders = _answer(api.folder.get_all_folders(), list, grafana_url, "GET /api/folders", "a list of folders")
        if not any(isinstance(f, dict) and f.get("uid") == folder_uid for f in folders):
            api.folder.create_folder(folder, uid=folder_uid)
        results = []
        for name, dash in dashboards.items():
            body = {k: v for k, v in dash.items() if k not in ("id", "version")}  # uid decides, not id
            r = _answer(api.dashboard.update_dashboard({"dashboard": body, "folderUid": folder_uid,
                                                        "overwrite": True,
                                                        "message": f"slotune dashboards push ({name})"}),
                        dict, grafana_url, "POST /api/dashboards/db", "an object")
            results.append({"file": name, "uid": r.get("uid"), "version": r.get("version"), "url": r.get("url")})
        return results
    except GrafanaException as exc:
        raise TargetError(f"Grafana at {grafana_url} refused the push: {exc.status_code} "
                          f"{one_line(exc.message)}") from None
    except OSError as exc:  # niquests' ConnectionError, Timeout, ... are OSErrors
        raise TargetError(f"cannot reach Grafana at {grafana_url}: {one_line(exc)}") from None
    except ValueError as exc:  # a body that is not the JSON it claims to be
        raise TargetError(f"Grafana at {grafana_url} answered something that is not Grafana's API: "
                          f"{one_line(exc)}") from None


def _answer(data: Any, kind: type, url: str, call: str, shape: str) -> Any:
    # Whatever answers at --grafana-url may not be Grafana (a proxy, another app): check the shape.
    if not isinstance(data, kind) or (kind is list and not all(isinstance(x, dict) for x in data)):
        raise TargetError(f"Grafana at {url}: {call} did not answer {shape} (got {one_line(json.dumps(data), 80)}); "
                          "is --grafana-url Grafana's base URL?")
    return data


def _folder_uid(title: str) -> str:
    uid = "".join(c if c.isalnum() or c in "-_" else "-" for c in title.lower()).strip("-")
    return uid[:40] or "slotune"


@click.group("dashboards")
def dashboards() -> None:
    """slotune's Grafana dashboards (SLO overview, engine, speculative decoding, GPU, tuning)."""


@dashboards.command("list")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=None)
def list_cmd(directory: Path | None) -> None:
    """List the dashboards (file, uid, title)."""
    for name, d in load_dashboards(directory or _default_dir()).items():
        click.echo(f"{name}\t{d['uid']}\t{d.get('title', '')}")


@dashboards.command("push")
@click.option("--grafana-url", required=True, callback=http_url_option, help="e.g. http://localhost:3000")
@click.option("--token", envvar="GRAFANA_TOKEN", required=True, help="service-account token (or $GRAFANA_TOKEN)")
@click.option("--folder", default="slotune", show_default=True, help="folder title (created if missing)")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="dashboard JSON directory (default: the ones installed with slotune)")
def push_cmd(grafana_url: str, token: str, folder: str, directory: Path | None) -> None:
    """Upload the dashboards; idempotent (updates in place, keeps each uid)."""
    for r in push(load_dashboards(directory or _default_dir()), grafana_url, token, folder):
        click.echo(f"{r['file']}: uid={r['uid']} version={r['version']} {r['url'] or ''}")


def _default_dir() -> Path:
    env = os.environ.get("SLOTUNE_DASHBOARDS_DIR")
    return Path(env) if env else DEFAULT_DIR


def register(app: click.Group) -> None:
    app.add_command(dashboards)

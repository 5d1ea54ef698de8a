"""One writer per database (SQLite here: a flock beside the file; PostgreSQL's advisory lock is in
tests/integration/test_sidecar_lease_pg.py). Real sidecars, real SQLite, a real second process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slotune.errors import ConfigError
from slotune.sidecar.config import load_settings
from slotune.sidecar.runtime import Sidecar
from slotune.store import open_store


def _sidecar(tmp_path: Path) -> Sidecar:
    settings = load_settings(None, target="http://127.0.0.1:9", data_dir=tmp_path, interval=3600)
    return Sidecar(settings, store=open_store(f"sqlite:///{tmp_path / 'slotune.db'}"))


def test_a_second_sidecar_on_the_database_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    first = _sidecar(tmp_path)
    first.start()
    second = _sidecar(tmp_path)
    try:
        with pytest.raises(ConfigError) as err:
            second.start()
        assert "another slotune sidecar is already writing" in str(err.value) and "\n" not in str(err.value)
        assert second._threads == []  # nothing of the second one runs
    finally:
        first.stop(grace=2)
    second.start()  # the lease went with the first
    second.stop(grace=2)


def test_the_cli_refuses_a_second_writer_with_one_line(tmp_path: Path) -> None:
    holder = _sidecar(tmp_path)
    holder.start()
    try:
        cfg = tmp_path / "sidecar.yaml"
        cfg.write_text(yaml.safe_dump({"target": "http://127.0.0.1:9", "port": 0,
                                       "database_url": f"sqlite:///{tmp_path / 'slotune.db'}"}))
        out = subprocess.run([sys.executable, "-m", "slotune.cli.main", "sidecar", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=30, check=False)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1, out.stderr
        assert lines[0].startswith("error: another slotune sidecar is already writing to sqlite:///")
    finally:
        holder.stop(grace=2)

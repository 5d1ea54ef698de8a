"""The API on PostgreSQL: ids past int4 and NUL bytes in filters are 4xx with a short reason, never a
503 or a body echoing SQL (issue 15, section 5). The same checks run on SQLite in the unit tier
(`tests/unit/test_api_fuzz.py`); PostgreSQL is where int4 ends at 2**31 - 1 and text refuses NUL."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from slotune.api.app import create_app
from slotune.errors import RefusedValueError
from slotune.sidecar.config import load_settings
from slotune.sidecar.runtime import Sidecar
from slotune.store import Finding, open_store
from tests.support.api_edges import check_edges
from tests.support.pages import AFTER, UNDER, page
from tests.support.sidecar import Clock, Script

pytestmark = pytest.mark.integration
TOKEN = "pg-edges-token"


def test_ids_at_the_integer_limits_and_nul_bytes_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    clock = Clock()
    settings = load_settings(None, target="http://127.0.0.1:9", data_dir=tmp_path, interval=10, api_token=TOKEN)
    sidecar = Sidecar(settings, store=open_store(postgres_url), clock=clock,
                      scrape=Script(clock, [page(UNDER), page(AFTER)]))
    sidecar.start(threads=False)
    for _ in range(3):
        sidecar.controller.tick()
        clock.advance(10)
    app = create_app(sidecar)
    with TestClient(app, raise_server_exceptions=False) as client:
        check_edges(client, app.openapi(), {"Authorization": f"Bearer {TOKEN}"})
        # Below the API's own checks: a NUL the database refuses is a short 422, no SQL in it.
        with pytest.raises(RefusedValueError) as err, sidecar.store.session() as s:
            s.query(Finding).filter(Finding.playbook == "a\x00b").all()
        assert "[SQL:" not in str(err.value) and "SELECT" not in str(err.value) and "a\x00b" not in str(err.value), str(err.value)

"""`report` on another application's PostgreSQL database refuses in one line and writes nothing there.

It once created slotune's and Optuna's ~20 tables in any database its `--storage` URL named; the
SQLite form of this check is in `tests/unit/test_cli_bad_input.py`. A real PostgreSQL, because the
check reads the server's own catalogue.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from slotune.cli.main import main

pytestmark = pytest.mark.integration


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_report_never_writes_into_another_applications_postgres(postgres_url: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text('CREATE DATABASE "otherapp"'))
    finally:
        admin.dispose()
    other = make_url(postgres_url).set(database="otherapp").render_as_string(hide_password=False)
    app = create_engine(other)
    try:
        with app.begin() as conn:
            conn.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)"))
    finally:
        app.dispose()

    assert main(["report", "--study", "x", "--storage", other]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "otherapp" in err[0] and "no tuning studies" in err[0], err
    assert _tables(other) == ["customers"]


def test_report_on_a_missing_postgres_database_is_one_line(postgres_url: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = make_url(postgres_url).set(database="nosuchdb").render_as_string(hide_password=False)
    assert main(["report", "--study", "x", "--storage", missing]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nosuchdb" in err[0], err

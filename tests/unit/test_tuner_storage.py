"""Optuna's tables and slotune's live in one database without colliding (both schemas, one SQLite
file, both written and read back), and storage errors are one line."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import create_engine, inspect

from slotune.errors import StoreError
from slotune.store import Base, TrialRecord, open_store
from slotune.tuner.storage import OPTUNA_TABLES, open_storage
from slotune.tuner.study import setup_lock


def test_both_schemas_in_one_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/both.db"
    storage = open_storage(url)  # creates slotune's tables, then Optuna's (with its alembic_version)
    study = optuna.create_study(study_name="x", storage=storage)
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    store = open_store(url)
    with store.session() as s:
        s.add(TrialRecord(study_name="x", trial_number=0, state="complete", params={}, config={}, metrics={},
                          findings=[]))

    tables = set(inspect(create_engine(url)).get_table_names())
    ours = set(Base.metadata.tables)
    assert ours and all(t.startswith("slotune_") for t in ours)
    assert not ours & OPTUNA_TABLES
    assert ours | {"alembic_version", "studies", "trials", "trial_heartbeats"} <= tables
    assert tables - ours <= OPTUNA_TABLES, f"unexpected tables: {tables - ours - OPTUNA_TABLES}"
    # Each side reads its own data back after the other wrote.
    assert len(optuna.load_study(study_name="x", storage=url).trials) == 2
    with store.session() as s:
        assert s.query(TrialRecord).count() == 1
    # Opening again (a second worker, a resume) neither fails nor migrates anything.
    open_storage(url)


def test_bad_storage_url_is_a_one_line_error(tmp_path):
    with pytest.raises(StoreError) as exc:
        open_storage("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    assert "\n" not in str(exc.value)


def test_lock_files_stay_in_one_folder_beside_the_database(tmp_path):
    """Every study takes two file locks (setup, claims): they go in one folder, not beside the
    database, so a database holding many studies keeps one neighbour."""
    url = f"sqlite:///{tmp_path}/many.db"
    for name in ("a", "b", "c"):
        for key in (f"slotune-study:{name}", f"slotune-claims:{name}"):
            with setup_lock(url, key):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.db.slotune-locks"]
    assert len(list((tmp_path / "many.db.slotune-locks").iterdir())) == 6


@pytest.mark.parametrize("form", ["sqlite:///{db}", "sqlite+pysqlite:///{db}", "sqlite:///{db}?timeout=30"])
def test_the_lock_folder_is_the_same_however_the_url_is_written(form, tmp_path):
    """A driver name or a query string once made another folder (`q.db?timeout=30.slotune-locks`) or
    no lock at all (`sqlite+pysqlite:///`: the file lock was skipped)."""
    with setup_lock(form.format(db=tmp_path / "q.db"), "slotune-study:a"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.db.slotune-locks"]


def test_a_file_where_the_lock_folder_goes_is_one_error(tmp_path):
    (tmp_path / "f.db.slotune-locks").write_text("")
    with pytest.raises(StoreError) as exc, setup_lock(f"sqlite:///{tmp_path}/f.db", "slotune-study:a"):
        pass
    assert str(exc.value) == (f"cannot lock the study: {tmp_path}/f.db.slotune-locks exists and is not a directory "
                              "(slotune keeps its lock files there)")

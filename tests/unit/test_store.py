from datetime import datetime, timezone

import pytest
from sqlalchemy import inspect, select

from slotune.errors import StoreError
from slotune.store import Base, Snapshot, open_store


def test_schema_is_created_on_first_use_with_prefixed_tables(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    names = set(inspect(store.engine).get_table_names())
    assert names == set(Base.metadata.tables)
    # Optuna's RDB tables (studies, trials, alembic_version, ...) can share the database.
    assert all(n.startswith("slotune_") for n in names)
    store.dispose()


def test_round_trip_and_rollback_on_error(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    now = datetime.now(timezone.utc)
    with store.session() as s:
        s.add(Snapshot(target="http://t", window_start=now, window_end=now, data={"ttft_seconds": None}))
    with pytest.raises(StoreError), store.session() as s:
        s.add(Snapshot(target="http://t", window_start=now, window_end=now, data={}))
        s.add(Snapshot(id=1, target="dup", window_start=now, window_end=now, data={}))
    with store.session() as s:
        rows = s.scalars(select(Snapshot)).all()
    assert [r.data for r in rows] == [{"ttft_seconds": None}]
    store.dispose()


def test_default_url_lives_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOTUNE_DATA_DIR", str(tmp_path))
    store = open_store()
    assert store.url == f"sqlite:///{tmp_path / 'slotune.db'}"
    assert (tmp_path / "slotune.db").exists()
    store.dispose()


def test_unreachable_database_is_a_store_error():
    with pytest.raises(StoreError, match="cannot"):
        open_store("postgresql+psycopg://u:secret@127.0.0.1:1/x?connect_timeout=1")


def test_states_are_stored_as_their_text_and_compare_equal_to_it(tmp_path):
    # The state enums are str subclasses: the database must hold "approved", never "APPROVED" or
    # "RecommendationStatus.APPROVED", so rows written before the enums (and SQL by hand) still match.
    from sqlalchemy import text

    from slotune.store import Recommendation, RecommendationStatus

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    with store.session() as s:
        s.add(Recommendation(target="http://t", status=RecommendationStatus.APPROVED, config={}, evidence={}))
    with store.session() as s:
        assert s.scalar(text("SELECT status FROM slotune_recommendations")) == "approved"
        row = s.scalar(select(Recommendation).where(Recommendation.status == RecommendationStatus.APPROVED))
        assert row is not None and row.status == RecommendationStatus.APPROVED == "approved"
        assert f"{RecommendationStatus.APPROVED}" == "approved"
    store.dispose()

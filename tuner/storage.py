"""Optuna's RDB storage on the same database as slotune's store.

Optuna's tables (`studies`, `trials`, ..., `version_info`, `alembic_version`) and slotune's
(`slotune_*`, created by SQLAlchemy's `create_all`, no Alembic of its own) share one database without
colliding; `tests/unit/test_tuner_storage.py` checks both schemas in one SQLite file.

Workers heartbeat their running trial; a trial whose worker died (SIGKILL, lost machine) goes stale
after the grace period, is failed by the next worker that starts a trial, and is re-queued with the
same params (`RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from slotune import paths
from slotune.errors import StoreError, one_line
from slotune.store import bad_url_message, open_store, shown_url, sqlite_file, sqlite_tables

HEARTBEAT_INTERVAL = 30  # seconds between a running trial's heartbeats
# study attr: the longest heartbeat interval of the study's workers (`--heartbeat`), s: a report judges a
# running trial stale after twice it, not after twice the default (a worker with a shorter one fails a
# silent trial sooner: the report never calls a trial stale that no worker would fail)
HEARTBEAT_ATTR = "heartbeat_interval"
MAX_RETRY = 2  # a config that kills its worker twice more is not retried again

OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials",
    "trial_user_attributes", "trial_system_attributes", "trial_params", "trial_values",
    "trial_intermediate_values", "trial_heartbeats", "version_info", "alembic_version",
})


def storage_url(url: str | None) -> str:
    return url or paths.default_database_url()


def uncached(study: optuna.Study) -> Any:
    """The study's storage behind Optuna's trial cache (`_CachedStorage` re-reads only trials above the
    highest finished id it has seen, and keeps the heartbeats in its backend): for reads that must see
    every trial as stored now."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def open_storage(url: str | None = None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int | None = None, must_exist: bool = False) -> RDBStorage:
    """Optuna storage (and slotune's tables) on `url`; errors become one-line StoreErrors.

    `must_exist`: for readers (`tune report`): a database without Optuna's tables (a SQLite file that is
    not there, another application's database on any server) is an error, and nothing is written to it;
    a reader must not leave a new empty database behind a typo, nor ~20 tables in someone else's.
    """
    url = storage_url(url)
    if must_exist:
        _require_studies(url)
    try:
        open_store(url).dispose()  # slotune's tables first: fails early with slotune's message
    except StoreError as exc:
        raise StoreError(" ".join(str(exc).split("\n")[0].split())) from None
    engine_kwargs = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Several processes (workers, `report`) may touch one SQLite file: wait for locks.
        engine_kwargs["connect_args"] = {"timeout": 30}
    try:
        with _schema_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 2 * heartbeat_interval,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        if url.startswith("sqlite"):
            _immediate_transactions(storage.engine)
        return storage
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy, driver and Optuna errors alike become one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise StoreError(f"cannot open Optuna storage on {shown_url(url)}: {type(exc).__name__}: {first}") from None


def _immediate_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Every transaction on this SQLite engine starts with `BEGIN IMMEDIATE` (it takes the write lock
    first, waiting up to the connection's timeout). Optuna hands a queued trial to a worker by reading
    that it waits and then marking it running; it relies on `SELECT ... FOR UPDATE`, which SQLite
    ignores, and pysqlite opens a transaction only at the write: two workers could both read the
    trial as waiting and both run it (seen with two workers starting at once: the second's result
    for the baseline was refused, "Trial#0 has already finished"). SQLAlchemy's recipe for SQLite's
    transactions ("Serializable isolation / Savepoints / Transactional DDL")."""
    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite's own BEGIN off: ours below instead

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks would keep pysqlite's deferred BEGIN


def _require_studies(url: str) -> None:
    """Raises `StoreError` unless Optuna's `studies` table is in the database `url` names; reads only."""
    path = sqlite_file(url)
    if path is not None:
        if not path.is_file():
            raise StoreError(f"no database at {path} (nothing has been stored there yet)")
        where, tables = str(path), sqlite_tables(path)  # read-only open: no journal, no schema
    else:
        where, tables = shown_url(url), _server_tables(url)
    if "studies" not in tables:
        raise StoreError(f"{where} holds no tuning studies (no Optuna tables: another application's database, "
                         "or nothing tuned there yet); nothing was written to it")


def _server_tables(url: str) -> set[str]:
    """Table names in the default schema of a database server's `url`, through a throwaway engine that
    creates nothing."""
    from sqlalchemy import create_engine, inspect

    shown = shown_url(url)
    try:
        engine = create_engine(url)
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver: one line, as open_store says it
        raise StoreError(bad_url_message(url, exc)) from None
    try:
        return set(inspect(engine).get_table_names())
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, no such database: one line
        raise StoreError(f"cannot read database {shown!r}: {one_line(exc, 200).replace(url, shown)}") from None
    finally:
        engine.dispose()


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Workers starting together on PostgreSQL would each create Optuna's tables, and concurrent
    CREATE TABLEs of one name collide in pg_type; a session advisory lock makes them take turns."""
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(hashtext('slotune-optuna-schema'))"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(hashtext('slotune-optuna-schema'))"))
                conn.commit()
    finally:
        engine.dispose()



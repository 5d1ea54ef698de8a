"""Engine and session factory. SQLite file under the data directory by default; any SQLAlchemy URL
(PostgreSQL for several tuner workers) otherwise. The schema is created on first use."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DataError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from slotune import paths
from slotune.errors import RefusedValueError, StoreError, one_line
from slotune.store.models import Base

log = logging.getLogger("slotune.store")


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own first line, without SQLAlchemy's `[SQL: ...]` and `[parameters: ...]`: an
    error message may reach an API client, and must not echo statements or values."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return (text_.splitlines() or [exc.__class__.__name__])[0].split("[SQL:")[0].strip()[:200]


@dataclass
class Store:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except DataError as exc:
            session.rollback()
            log.warning("database refused a value: %s", exc)  # the full statement stays in the log
            raise RefusedValueError(f"the database refused a value: {_reason(exc)}") from exc
        except SQLAlchemyError as exc:
            session.rollback()
            log.warning("database error: %s", exc)
            raise StoreError(f"database error on {self.safe_url}: {exc.__class__.__name__}: {_reason(exc)}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


def sqlite_file(url: str | URL) -> Path | None:
    """The file a SQLite URL names; None for another database, an in-memory one or a string that is
    not a URL (`open_store` says why in one line)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def sqlite_tables(path: Path) -> set[str]:
    """Names of the tables in SQLite file `path`, read without writing anything (read-only open, so no
    journal or schema is created). Raises `StoreError` naming the file when it is not a SQLite database."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read as a SQLite database ({exc})") from None


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the sidecar's API read while its loop writes; busy_timeout rides out short locks.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _create_schema(engine: Engine) -> None:
    """Create missing tables. On PostgreSQL several workers may open the store at once, and two
    concurrent CREATE TABLEs of one name collide in pg_type: a transaction-scoped advisory lock
    makes them take turns (the second finds the tables there and creates nothing)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('slotune-schema'))"))
        Base.metadata.create_all(conn)


def shown_url(url: str) -> str:
    """`url` fit for an error message or a log: its password replaced by `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError, TypeError):  # not a URL SQLAlchemy reads: mask user:password@ by hand
        return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def bad_url_message(url: str, exc: BaseException) -> str:
    """The one line for a database URL SQLAlchemy cannot read: the driver's reason (the URL's password
    hidden), and for the likeliest slips, a file path where a URL belongs (`/tmp/x.db`,
    `sqlite:/tmp/x.db`), the URL they meant."""
    shown = shown_url(url)  # the driver's message may quote the URL, password and all
    message = f"cannot open database {shown!r}: {one_line(exc, 200).replace(url, shown)}"
    path = url.removeprefix("sqlite:") if url.startswith("sqlite:") and "://" not in url else (
        url if ":" not in url else "")
    if path.strip():
        meant = path if path.startswith("/") else os.path.abspath(os.path.expanduser(path))
        message += f" (a SQLite file is written sqlite:///{meant})"
    return message


def _engine(url: str) -> Engine:
    """An engine for `url` (nothing is connected yet); a URL SQLAlchemy cannot read, or whose dialect or
    driver is not installed, is one `StoreError` line."""
    try:
        return create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise StoreError(bad_url_message(url, exc)) from None


def check_url(url: str) -> None:
    """Raises `StoreError` (as `open_store` would) unless `url` is a database URL SQLAlchemy reads, with its
    dialect and driver installed. Connects to nothing and creates nothing: for checking a command line
    before any work starts (a server that cannot be reached is found when the database is opened)."""
    _engine(url).dispose()


def open_store(url: str | None = None) -> Store:
    url = url or paths.default_database_url()
    engine = _engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        _create_schema(engine)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot create slotune's tables in {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.__class__.__name__}: {_reason(exc)}"
        ) from None
    return Store(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))

"""One writer per database: the lease a running sidecar holds on its store.

Two sidecars on one database would both tick, both deliver the outbox and both apply: every
notification twice. The lease is held for the process's lifetime and ends with it, even on kill -9:

* PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a connection kept open; the
  server releases it when the connection closes or the process dies.
* SQLite: an exclusive `flock` on `<database file>.lease` beside the database; the kernel releases
  it when the process dies (a lock row would outlive a killed holder and need an expiry).

A second sidecar finds the lease taken and stops with one line (`ConfigError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from slotune.errors import ConfigError, StoreError
from slotune.store import Store, sqlite_file

_KEY = "slotune-sidecar-writer"


class Lease:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: Any = None
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lease or raise ConfigError naming the database."""
        engine = self.store.engine
        busy = ConfigError(f"another slotune sidecar is already writing to {self.store.safe_url}: "
                           "one sidecar per database (stop the other, or give this one its own database_url)")
        if engine.dialect.name == "postgresql":
            try:
                conn = engine.connect()
                got = conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": _KEY}).scalar()
                conn.commit()  # a session lock outlives the transaction; the connection stays open
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot take the writer lease on {self.store.safe_url}: {exc}") from None
            if not got:
                conn.close()
                raise busy
            self._conn = conn
        elif (db_file := sqlite_file(engine.url)) is not None:
            path = db_file.with_name(db_file.name + ".lease")
            fh = path.open("a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise busy from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            self._file = fh

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()  # ends the session: PostgreSQL drops its advisory locks
            self._conn = None
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

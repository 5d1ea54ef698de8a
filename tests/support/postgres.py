"""A real PostgreSQL for tests: initdb + pg_ctl as the `postgres` user (initdb refuses root) on a
private data directory and a loopback port, `fsync=off`; about a second to start. The module-scoped
fixture `postgres_url` is registered in tests/conftest.py, so any test may ask for it:

    def test_x(postgres_url): ...   # "postgresql+psycopg://postgres@127.0.0.1:PORT/slotune"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import pytest

from slotune.server import free_port


def pg_bin() -> Path | None:
    found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(*argv: str) -> list[str]:
    return list(argv) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    database: str = "slotune"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> None:
        def run(*a: str) -> None:
            subprocess.run(_as_postgres(*a), check=True, capture_output=True, text=True)

        run(str(self.bindir / "initdb"), "-D", str(self.datadir / "data"), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c unix_socket_directories=''"
        run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-o", opts,
            "-l", str(self.datadir / "postgres.log"), "-w", "-t", "30", "start")
        import psycopg

        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                     autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        subprocess.run(_as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-m", "immediate",
                                    "-w", "stop"), capture_output=True, check=False)
        shutil.rmtree(self.datadir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = pg_bin()
    if bindir is None:
        pytest.fail("PostgreSQL binaries not found under /usr/lib/postgresql (run `make system-packages`)")
    # Not pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    datadir = Path(tempfile.mkdtemp(prefix="slotune-pg-"))
    datadir.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    server = PostgresServer(bindir, datadir, free_port())
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {exc.stderr or exc.stdout}")
    try:
        yield server.url
    finally:
        server.stop()

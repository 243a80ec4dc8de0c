"""A real PostgreSQL server for tests: Debian's postgresql 15, in a temporary directory.

``PgServer()`` runs ``initdb`` (trust authentication, loopback only, a random free port, its
socket in the same directory) as the ``postgres`` user when we are root (PostgreSQL refuses to
run as root), else as ourselves. ``start`` / ``stop`` can be called again (a database that
goes away mid-run); ``close`` stops it and removes the directory. ``new_database`` creates an
empty database and returns its URL.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("MIRROR_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.fail(f"PostgreSQL server programs not found in {PG_BIN} (apt-get install "
                        "postgresql); .ci/run installs them")
        self.as_postgres = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="mirror-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        if self.as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        try:
            self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                       "-E", "UTF8", "--no-sync"], timeout=120)
            self.start()
        except BaseException:
            self.close()
            raise

    def _run(self, args: list[str], timeout: float = 60) -> None:
        if self.as_postgres:
            args = ["runuser", "-u", "postgres", "--", *args]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              cwd=self.dir, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                   "-t", "60", "-o", f"-p {self.port} -h 127.0.0.1 -k {self.dir} -F", "start"],
                  timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", mode,
                   "stop"], timeout=90)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"test{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def sql(self, url: str, statement: str, params=()) -> list[tuple]:
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            cursor = connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


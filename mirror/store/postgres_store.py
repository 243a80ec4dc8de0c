"""The capture store in a PostgreSQL database, for a fleet of proxies sharing one store.

``PostgresCaptureStore("postgresql://user@host/db")`` is a ``CaptureStore`` (same records,
same ``add`` / ``flush`` / ``close`` / ``list`` / ``get`` / ``count`` / ``stats``, same writer
thread and batches) whose rows go to PostgreSQL through psycopg 3: each batch is one
transaction of one ``COPY``, and a commit that PostgreSQL acknowledged survives the death of
the proxy (``synchronous_commit`` as the server has it: on by default).

The schema is created and migrated by mirror under an advisory lock (several proxies may
start at once): the table ``mirror_schema`` holds its version (:data:`PG_SCHEMA_VERSION`); a
database written by a newer schema is refused, one with a ``captures`` table that is not
mirror's is refused and left as it is. Text columns use the "C" collation, so a JA4 prefix
filter means the same as in SQLite. Every record names the ``gateway`` that wrote it.

When the database goes away mid-run, the writer keeps the records (bounded, see
``MAX_PENDING_BYTES``; beyond it the oldest are dropped and counted in ``stats()``),
reconnects with a growing pause and commits them, in order, once the server answers.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from mirror.store.open_store import is_database_url, shown_url
from mirror.store.sqlite_store import (
    _COLUMNS,
    _INDEXED,
    CaptureStore,
    StoreError,
)
from mirror.store.summary import SUMMARY_COLUMNS

__all__ = ["PG_SCHEMA_VERSION", "PostgresCaptureStore"]

log = logging.getLogger("mirror.store")

PG_SCHEMA_VERSION = 1
CONNECT_TIMEOUT_SECONDS = 5
_LOCK_KEY = 0x6D697272        # "mirr": the advisory lock taken to create or migrate the schema
_TYPES = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": 'text COLLATE "C"'}
_SCHEMA = [
    "CREATE TABLE captures (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    + ", ".join(f"{name} {_TYPES[SUMMARY_COLUMNS[name]]}" for name in _COLUMNS)
    + ", record text NOT NULL)",
    *(f"CREATE INDEX captures_by_{name} ON captures ({columns})" for name, columns in _INDEXED.items()),
]
_COPY = f"COPY captures ({', '.join(_COLUMNS)}, record) FROM STDIN"
_INSERT = (f"INSERT INTO captures ({', '.join(_COLUMNS)}, record) "
           f"VALUES ({', '.join('%s' for _ in _COLUMNS)}, %s)")


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return "; ".join(lines[:2]) or type(error).__name__


def _connect(url: str, shown: str, *, autocommit: bool) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                               application_name="mirror")
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to the capture store {shown}: {_one_line(error)}") from None


def _prepare(connection: psycopg.Connection, shown: str, create: bool) -> None:
    """Check, create or migrate the schema, in one transaction under the advisory lock."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        found = connection.execute(
            "SELECT to_regclass('mirror_schema'), to_regclass('captures')").fetchone()
        ours, captures = found if found is not None else (None, None)
        if ours is None:
            if captures is not None:
                raise StoreError(f"{shown} has a table captures that is not a mirror capture "
                                 "store (no mirror_schema table); use another database")
            if not create:
                raise StoreError(f"no capture store in {shown} (nothing recorded there yet)")
            connection.execute("CREATE TABLE mirror_schema (version integer NOT NULL)")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute("INSERT INTO mirror_schema (version) VALUES (%s)",
                               [PG_SCHEMA_VERSION])
            return
        row = connection.execute("SELECT max(version) FROM mirror_schema").fetchone()
        version = row[0] if row and row[0] is not None else 0
        if version > PG_SCHEMA_VERSION:
            raise StoreError(
                f"{shown} was written by a newer mirror (store schema version {version}; this "
                f"version reads up to {PG_SCHEMA_VERSION}): upgrade mirror or use another --store")
        if version < 1:
            raise StoreError(f"{shown}: mirror_schema holds no version; not a capture store")
        # Migrations from older schema versions go here (none yet: version 1 is the first),
        # each followed by: UPDATE mirror_schema SET version = <new>.


def _pg_value(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL characters: they are kept escaped, as ``\\x00``."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\\x00")
    return value


def _translate(sql: str, params: list[Any]) -> tuple[str, list[Any]]:
    """The SQLite query ``CaptureStore.list`` builds, in PostgreSQL's words: ``?`` -> ``%s``,
    ``instr`` -> ``strpos``, ``GLOB`` -> ``LIKE`` (``*`` and ``?`` of the glob as ``%`` and
    ``_``), ``LIMIT -1`` -> no limit."""
    params = list(params)
    glob = sql.find("GLOB ?")
    if glob >= 0:
        index = sql[:glob].count("?")
        pattern = str(params[index])
        params[index] = "".join({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(c, c)
                                for c in pattern)
        sql = sql.replace("GLOB ?", "LIKE ? ESCAPE '\\'")
    if sql.rstrip().endswith("LIMIT ?") and params and params[-1] == -1:
        params[-1] = None
    sql = sql.replace("instr(", "strpos(").replace("%", "%%").replace("?", "%s")
    return sql, params


class PostgresCaptureStore(CaptureStore):
    """Connection records in a PostgreSQL database; see the module's docstring."""

    path: str                           # type: ignore[assignment]  # a URL, not a file
    _reader: Any                        # a psycopg connection

    def __init__(self, url: str, *, create: bool = True) -> None:
        if not is_database_url(url):
            raise StoreError(f"{url!r} is not a postgresql:// URL")
        self.url = url
        self.path = shown_url(url)          # what messages call this store
        self._reader = _connect(url, self.path, autocommit=True)
        try:
            _prepare(self._reader, self.path, create)
        except psycopg.Error as error:
            self._reader.close()
            raise StoreError(f"cannot open capture store {self.path}: {_one_line(error)}") from None
        except BaseException:
            self._reader.close()
            raise
        self._init_state()

    # -- writing (on the writer thread) ----------------------------------------------------------

    def _writer_connect(self) -> psycopg.Connection:
        return _connect(self.url, self.path, autocommit=False)

    def _keep_writer_connection(self, connection: Any, error: Exception) -> bool:
        return not (connection.closed or connection.broken)

    @staticmethod
    def _close_writer_connection(connection: Any) -> None:
        try:
            connection.close()
        except psycopg.Error:
            pass

    @staticmethod
    def _insert(connection: Any, batch: list[tuple[Any, ...]]) -> None:
        """One batch, one transaction, one COPY. A row PostgreSQL refuses outright (should
        not happen: summaries are sanitised) makes the batch go again row by row, keeping
        every row it accepts."""
        rows = [tuple(_pg_value(value) for value in row) for row in batch]
        try:
            with connection.transaction(), connection.cursor() as cursor, \
                    cursor.copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
        except (psycopg.DataError, psycopg.IntegrityError):
            for row in rows:
                try:
                    with connection.transaction():
                        connection.execute(_INSERT, row)
                except (psycopg.DataError, psycopg.IntegrityError) as error:
                    log.error("capture record dropped, PostgreSQL rejects it: %s", _one_line(error))

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        self._check_process()
        sql, params = _translate(sql, params)
        with self._reader_lock:
            if self._state == "closed":
                raise StoreError(f"capture store {self.path} is closed")
            for attempt in (1, 2):
                try:
                    if self._reader.closed or self._reader.broken:
                        self._reader = _connect(self.url, self.path, autocommit=True)
                    return self._reader.execute(sql, params).fetchall()
                except psycopg.OperationalError as error:
                    if attempt == 2:
                        raise StoreError(f"cannot read capture store {self.path}: "
                                         f"{_one_line(error)}") from None
                except psycopg.Error as error:
                    raise StoreError(f"cannot read capture store {self.path}: "
                                     f"{_one_line(error)}") from None
        raise AssertionError("unreachable")


"""The capture store: one SQLite file of connection records, written off the caller's thread.

``CaptureStore(path)`` opens (or creates, with 0700 parent directories and a 0600 file) a
SQLite database in WAL mode. Each record is kept whole as JSON text next to indexed summary
columns (:data:`mirror.store.summary.SUMMARY_COLUMNS`) that ``list`` filters on.

Writing: ``add`` queues the record; it never encodes it or touches the disk. One daemon
writer thread per store resolves its ``Deferred`` values (:mod:`mirror.record.deferred`),
encodes it and commits the queue in batches (at most 100 ms or 500 records after
the first record of a batch, whichever comes first; ``flush`` cuts a batch short). A busy
database is waited for (busy timeout 10 s) and a failed batch is retried, so a record is only
lost if the process dies before it is committed: call ``flush`` when that matters, and
``close`` at the end (also done at interpreter exit for a store left open). While commits keep
failing, records are kept up to :data:`MAX_PENDING_BYTES`; beyond it the oldest are dropped
and counted (``stats``). The writer is shared with the PostgreSQL store
(:mod:`mirror.store.postgres_store`), which changes only how it connects, inserts and reads.

Several processes may add to the same file at once: SQLite's locking serialises the
batches; ids are ``INTEGER PRIMARY KEY AUTOINCREMENT`` so an id is never reused. With
``synchronous=NORMAL`` a committed batch survives the death of the process (SIGKILL); only an
OS crash or power cut can lose the last batches.

A store is bound to the process that opened it: after ``fork`` open a new one in the child.
``PRAGMA user_version`` holds the schema version (:data:`SCHEMA_VERSION`), so later versions
can migrate older files (1 -> 2 adds the ``gateway`` column); a file written by a newer schema
is refused.
"""

from __future__ import annotations

import atexit
import builtins
import itertools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from mirror.record.deferred import resolve
from mirror.store.summary import (
    SUMMARY_COLUMNS,
    CaptureSummary,
    encode_record,
    sqlite_text,
    summarize,
)

__all__ = ["SCHEMA_VERSION", "CaptureStore", "CaptureSummary", "StoreError"]

log = logging.getLogger("mirror.store")

SCHEMA_VERSION = 2          # 2: the gateway column (which proxy wrote the record)
APPLICATION_ID = 0x6D697272  # "mirr": PRAGMA application_id of a capture store
BATCH_SECONDS = 0.1
BATCH_RECORDS = 500
BUSY_TIMEOUT_SECONDS = 10.0
MAX_PENDING_BYTES = 64 << 20   # encoded records kept for a retry while the database fails

_COLUMNS = [name for name in SUMMARY_COLUMNS if name != "id"]
_INDEXED = {
    "started": "started",
    "ended": "ended",
    "mode": "mode",
    "client": "client_addr, client_port",
    "destination": "dst_host, dst_port",
    "sni": "sni",
    "protocol": "protocol",
    "ja3": "ja3",
    "ja4": "ja4",
    "ja4t": "ja4t",
    "akamai": "akamai",
    "http_version": "http_version",
    "fidelity": "fidelity",
    "error": "error",
    "gateway": "gateway",
}
_SCHEMA = [
    "CREATE TABLE captures (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    + ", ".join(f"{name} {SUMMARY_COLUMNS[name]}" for name in _COLUMNS)
    + ", record TEXT NOT NULL)",
    *(f"CREATE INDEX captures_by_{name} ON captures ({columns})" for name, columns in _INDEXED.items()),
]
_INSERT = (
    f"INSERT INTO captures ({', '.join(_COLUMNS)}, record) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}, ?)"
)
_SELECT_SUMMARY = f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM captures"

_FLUSH = object()  # queue marker: commit what you hold now
_STOP = object()  # queue marker: commit what you hold, then exit


def _row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """On the writer thread: the record's deferred values made, encoded, summarised."""
    text, stored, problem = encode_record(resolve(record))
    if problem is not None:
        log.warning("%s", problem)
    summary = summarize(stored)
    return (*(summary[name] for name in _COLUMNS), text)


class StoreError(Exception):
    """The capture store cannot be used: bad path, not a store, newer schema, closed, timeout."""


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing ancestors, each with mode 0700."""
    missing = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if not path.is_dir():
                raise StoreError(f"cannot create directory {path}: a file is in the way") from None
        except OSError as error:
            raise StoreError(f"cannot create directory {path}: {error.strerror or error}") from None
    if not directory.is_dir():
        raise StoreError(f"cannot create directory {directory}: {current} is not a directory")


def _create_private_file(path: Path) -> None:
    """Create an empty 0600 file (SQLite makes its -wal and -shm files with the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as error:
        raise StoreError(f"cannot create capture store {path}: {error.strerror or error}") from None


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas."""
    connection = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        connection.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        connection.close()
        raise
    return connection


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Check the file is a capture store we can read; create the schema in a new file.

    Every check reads only, so a file that is refused is left exactly as it was; and all of
    them read one snapshot, so a store that another process is creating right now is seen
    either before or after its creation, never half-way (tables there, version not yet).
    """
    connection.execute("BEGIN")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        application = connection.execute("PRAGMA application_id").fetchone()[0]
        if version == 0:
            _refuse_foreign_tables(connection, path)
    finally:
        if connection.in_transaction:
            connection.execute("COMMIT")  # ends the read snapshot (nothing was written)
    if application not in (0, APPLICATION_ID):
        raise StoreError(f"{path} is a SQLite database of another application, not a capture store")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer mirror (store schema version {version}; this "
            f"version reads up to {SCHEMA_VERSION}): upgrade mirror or use another --store"
        )
    if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("%s: SQLite refused WAL mode (journal_mode=%s)", path, mode)
    if version == SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:  # nobody created the schema while we waited for the lock
            _refuse_foreign_tables(connection, path)
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if version == 1:  # 1 -> 2: which gateway wrote each record
            connection.execute("ALTER TABLE captures ADD COLUMN gateway TEXT")
            connection.execute(f"CREATE INDEX captures_by_gateway ON captures ({_INDEXED['gateway']})")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _refuse_foreign_tables(connection: sqlite3.Connection, path: Path) -> None:
    tables = [row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    if tables:
        raise StoreError(
            f"{path} is a SQLite database but not a capture store "
            f"(it has tables {', '.join(sorted(tables))})"
        )


def _open(path: Path) -> sqlite3.Connection:
    """Connect and prepare, waiting out a concurrent creator; sqlite errors as StoreError."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        connection = None
        try:
            connection = _connect(path)
            _prepare(connection, path)
            return connection
        except sqlite3.DatabaseError as error:
            if connection is not None:
                connection.close()
            message = str(error)
            if "not a database" in message:
                raise StoreError(f"{path} is not a capture store (file is not a database)") from None
            transient = "locked" in message or "busy" in message
            if not transient or time.monotonic() > deadline:
                raise StoreError(f"cannot open capture store {path}: {message}") from None
            time.sleep(0.05)
        except BaseException:
            if connection is not None:
                connection.close()
            raise


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # skip the surrogates, which UTF-8 cannot hold
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def _ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only, exactly like SQLite's lower()."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


class CaptureStore:
    """Connection records in a SQLite file: ``add``, ``flush``, ``close``, ``list``, ``get``.

    ``create=False`` refuses to create a missing file (read-only commands use it, so that a
    typo in a path does not leave an empty store behind). Usable as a context manager.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        try:
            self.path = Path(os.fspath(path))
            if self.path.is_dir():
                raise StoreError(f"{self.path} is a directory; give the path of a capture store file")
            if not self.path.exists():
                if not create:
                    raise StoreError(f"no capture store at {self.path}")
                _make_private_dirs(self.path.parent)
                _create_private_file(self.path)
        except (TypeError, ValueError) as error:
            raise StoreError(f"unusable capture store path {path!r}: {error}") from None
        self._reader = _open(self.path)
        self._init_state()

    def _init_state(self) -> None:
        """What every store keeps besides its database connection (see ``add``, ``stats``)."""
        self._reader_lock = threading.Lock()
        self._pid = os.getpid()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._queued = 0  # sequence number of the last record queued
        self._committed = 0  # sequence number of the last record committed
        self._writer_error: str | None = None
        self._rows_committed = 0  # rows this store's writer committed
        self._pending = 0  # rows encoded, not committed yet (while commits fail)
        self._dropped = 0  # rows dropped: kept for a retry beyond MAX_PENDING_BYTES
        self._writer: threading.Thread | None = None
        self._state = "open"  # -> "closing" (no more add) -> "closed"

    # -- writing -----------------------------------------------------------------------------

    def add(self, record: Mapping[str, Any]) -> None:
        """Queue one capture record; returns at once (the writer thread encodes and commits
        it soon). The record must not change after this call."""
        self.add_many((record,))

    def add_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """``add`` for several records at once (one hand-over to the writer thread)."""
        for record in records:
            if not isinstance(record, Mapping):
                raise TypeError(f"a capture record is a dict, not {type(record).__name__}")
        self._check_process()
        with self._cond:
            if self._state != "open":
                raise StoreError(f"capture store {self.path} is closed")
            if not records:
                return
            if self._writer is None:
                self._start_writer()
            self._queued += len(records)
            self._queue.put((self._queued, records))

    def flush(self, timeout: float = 5.0) -> None:
        """Return once every record added before this call is committed.

        Raises StoreError if that takes longer than ``timeout`` seconds (the records stay
        queued and the writer keeps trying).
        """
        self._check_process()
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._queued
            if self._committed >= target:
                return
            self._queue.put(_FLUSH)
            while self._committed < target:
                remaining = deadline - time.monotonic()
                writer_gone = self._writer is None or not self._writer.is_alive()
                if remaining <= 0 or writer_gone:
                    left = target - self._committed
                    why = f" (last error: {self._writer_error})" if self._writer_error else ""
                    if writer_gone:
                        why += " (the writer thread is gone)"
                    raise StoreError(
                        f"{left} capture record(s) not committed to {self.path} "
                        f"after {timeout:g} s{why}"
                    )
                self._cond.wait(remaining)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the writer thread and close the database. Calling it again does nothing.

        If the flush times out, StoreError is raised and the store stays half-closed (no more
        ``add``); calling ``close`` again tries again.
        """
        with self._cond:
            if self._state == "closed":
                return
            self._state = "closing"
        if os.getpid() != self._pid:  # a forked copy: the writer thread is the parent's
            self._state = "closed"
            return
        self.flush(timeout)
        writer = self._writer
        if writer is not None:
            self._queue.put(_STOP)
            writer.join(timeout)
            atexit.unregister(self._close_at_exit)
        with self._reader_lock:
            self._reader.close()
        self._state = "closed"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _close_at_exit(self) -> None:
        try:
            self.close(timeout=BUSY_TIMEOUT_SECONDS)
        except StoreError as error:
            log.error("capture records lost at exit: %s", error)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise StoreError(
                f"this CaptureStore of {self.path} was opened in process {self._pid}; "
                "open a new one in the forked process"
            )

    def _start_writer(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="mirror-store-writer", daemon=True)
        self._writer.start()
        atexit.register(self._close_at_exit)

    def _write_loop(self) -> None:
        """The writer thread: gather a batch, commit it (retrying), report progress; repeat.

        While commits fail, records keep arriving and are encoded and kept, oldest first, up
        to :data:`MAX_PENDING_BYTES` of JSON; beyond that the oldest are dropped and counted
        (``stats()["dropped"]``). Once the database answers again they are committed in
        batches of :data:`BATCH_RECORDS`, in order.
        """
        connection: Any = None
        pending: deque[tuple[int, tuple[Any, ...]]] = deque()   # (sequence number, row)
        pending_bytes = 0
        pulled = 0          # sequence number of the last record taken off the queue
        stopping = False
        failures = 0
        while pending or not stopping:
            urgent = stopping
            deadline: float | None = None
            blocking = not pending and failures == 0
            while len(pending) < BATCH_RECORDS or failures:
                if blocking and not urgent:
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=wait)
                    except queue.Empty:
                        break
                else:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if item is _STOP:
                    stopping = urgent = True
                elif item is _FLUSH:
                    urgent = bool(pending)
                else:
                    last, records = item
                    for number, record in enumerate(records, last - len(records) + 1):
                        try:
                            row = _row(record)
                        except Exception:  # the writer must never die
                            log.exception("a capture record could not be encoded; dropped")
                            continue
                        pending.append((number, row))
                        pending_bytes += len(row[-1])
                    pulled = last
                    if deadline is None:
                        deadline = time.monotonic() + BATCH_SECONDS
            while pending_bytes > MAX_PENDING_BYTES and len(pending) > 1:
                pending_bytes -= len(pending.popleft()[1][-1])
                with self._cond:
                    self._dropped += 1
            if not pending:
                with self._cond:
                    self._committed = max(self._committed, pulled)
                    self._pending = 0
                    self._cond.notify_all()
                continue
            batch = [row for _, row in itertools.islice(pending, BATCH_RECORDS)]
            try:
                if connection is None:
                    connection = self._writer_connect()
                self._insert(connection, batch)
            except Exception as error:  # noqa: BLE001 - the writer must never die: keep the rows, retry
                failures += 1
                message = f"{type(error).__name__}: {error}".strip()
                if message != self._writer_error:
                    log.warning("cannot commit %d capture record(s) to %s, will retry "
                                "(records are kept, up to %d MiB): %s", len(pending), self.path,
                                MAX_PENDING_BYTES >> 20, message)
                with self._cond:
                    self._writer_error = message
                    self._pending = len(pending)
                if connection is not None and not self._keep_writer_connection(connection, error):
                    self._close_writer_connection(connection)
                    connection = None
                time.sleep(min(1.0, 0.02 * 2 ** min(failures, 6)))
                continue
            if failures:
                log.warning("capture store %s answers again; committing %d kept record(s)",
                            self.path, len(pending))
            failures = 0
            for _ in batch:
                number, row = pending.popleft()
                pending_bytes -= len(row[-1])
            with self._cond:
                self._committed = max(self._committed, pulled if not pending else number)
                self._rows_committed += len(batch)
                self._pending = len(pending)
                self._writer_error = None
                self._cond.notify_all()
        if connection is not None:
            self._close_writer_connection(connection)

    def stats(self) -> dict[str, Any]:
        """Counters of this store's writer: ``committed`` (rows), ``pending`` (records added
        but not committed yet), ``dropped`` (kept for a retry, then dropped: over the bound),
        ``error`` (the last commit's error while it keeps failing, else None)."""
        with self._cond:
            waiting = self._queued - self._committed
            return {"committed": self._rows_committed, "pending": max(waiting, self._pending),
                    "dropped": self._dropped, "error": self._writer_error}

    # -- what a writer of another database changes ---------------------------------------------

    def _writer_connect(self) -> Any:
        return _connect(self.path)

    def _keep_writer_connection(self, connection: Any, error: Exception) -> bool:
        """After a failed batch: is the connection still good (a busy or full database)?"""
        return isinstance(error, sqlite3.OperationalError)

    @staticmethod
    def _close_writer_connection(connection: Any) -> None:
        connection.close()

    @staticmethod
    def _insert(connection: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        """Insert one batch in one transaction. A row SQLite rejects outright is dropped (logged)."""
        rejected = (sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.DataError,
                    OverflowError, ValueError)
        connection.execute("BEGIN IMMEDIATE")
        try:
            try:
                connection.executemany(_INSERT, batch)
            except rejected:
                # Should not happen (summaries are sanitised): start the batch over row by row,
                # keeping every row SQLite accepts.
                connection.execute("ROLLBACK")
                connection.execute("BEGIN IMMEDIATE")
                for row in batch:
                    try:
                        connection.execute(_INSERT, row)
                    except rejected as error:
                        log.error("capture record dropped, SQLite rejects it: %s", error)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    # -- reading -----------------------------------------------------------------------------

    def list(
        self,
        limit: int | None = 50,
        since: float | None = None,
        until: float | None = None,
        sni: str | None = None,
        client: str | None = None,
        ja4: str | None = None,
        fidelity_below: float | None = None,
        after_id: int | None = None,
        newest_first: bool = True,
    ) -> list[CaptureSummary]:
        """Summaries of the stored connections that match every filter given.

        ``since`` <= started < ``until`` (epoch seconds); ``sni``: a substring, or a whole-name
        glob when it contains ``*`` or ``?`` (ASCII case-insensitive either way); ``client``:
        the client address, exactly; ``ja4``: a prefix (a whole JA4 is its own prefix);
        ``fidelity_below``: fidelity strictly below it (records without one never match);
        ``after_id``: ids greater than it. Ordered by id (the commit order), newest first
        unless ``newest_first=False``; at most ``limit`` rows (``None``: all).
        """
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("started >= ?")
            params.append(float(since))
        if until is not None:
            where.append("started < ?")
            params.append(float(until))
        # Summary columns hold lone surrogates escaped (sqlite_text); so must the filters.
        sni, client, ja4 = (sqlite_text(v) if isinstance(v, str) else v for v in (sni, client, ja4))
        if sni:
            if "*" in sni or "?" in sni:
                where.append("lower(sni) GLOB ?")
            else:
                where.append("instr(lower(sni), ?) > 0")
            params.append(_ascii_lower(sni))
        if client is not None:
            where.append("client_addr = ?")
            params.append(client)
        if ja4:
            where.append("ja4 >= ?")
            params.append(ja4)
            upper = _prefix_upper_bound(ja4)
            if upper is not None:
                where.append("ja4 < ?")
                params.append(upper)
        if fidelity_below is not None:
            where.append("fidelity < ?")
            params.append(float(fidelity_below))
        if after_id is not None:
            where.append("id > ?")
            params.append(min(int(after_id), 2**63 - 1))
        sql = _SELECT_SUMMARY
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        params.append(-1 if limit is None else max(0, int(limit)))
        rows = self._read(sql, params)
        return [CaptureSummary(*row) for row in rows]

    def get(self, capture_id: int) -> dict[str, Any] | None:
        """The full record with its ``"id"``, or None if there is no such id."""
        capture_id = int(capture_id)
        if not -(2**63) <= capture_id < 2**63:
            return None
        rows = self._read("SELECT record FROM captures WHERE id = ?", [capture_id])
        if not rows:
            return None
        try:
            record = json.loads(rows[0][0])
        except ValueError as error:
            record = {"store_error": f"stored JSON unreadable: {error}", "text": rows[0][0]}
        if not isinstance(record, dict):
            record = {"value": record}
        record.pop("id", None)
        return {"id": capture_id, **record}

    def count(self) -> int:
        """How many records the file holds (committed ones, from every process)."""
        return self._read("SELECT count(*) FROM captures", [])[0][0]

    # builtins.list: inside this class, `list` is the method above.
    def _read(self, sql: str, params: builtins.list[Any]) -> builtins.list[tuple[Any, ...]]:
        self._check_process()
        with self._reader_lock:
            if self._state == "closed":
                raise StoreError(f"capture store {self.path} is closed")
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise StoreError(f"cannot read capture store {self.path}: {error}") from None

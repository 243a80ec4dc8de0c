"""A capture store whose writer is another process, so that making, encoding and committing
records never competes with the proxy's event loop for the interpreter lock.

``StoreProcess(spec)`` starts a child process (a fresh interpreter: nothing of the proxy's
threads is inherited; no multiprocessing helper process either) that owns the store ``spec``
names (a SQLite file or a PostgreSQL URL, :mod:`mirror.store.open_store`); they talk over a
socket pair. ``add`` pickles the record (its ``Deferred`` values travel as their inputs: the
raw hello, the SYN, the plan) and writes it to the socket at once, without blocking: when
``add`` returns, the record is in the kernel's socket buffer, which the child reads to the
end even if the proxy is killed with SIGKILL the next instant. Only when that buffer is full
(the child is behind) do records wait in a backlog that a sender thread writes, in order.
The child makes the deferred values, encodes and commits, in batches, exactly as a
``CaptureStore`` in the same process would. ``flush`` and ``close`` wait for the child;
``stats`` asks it for its counters; if the parent dies, the child sees the pipe close,
commits what it has and exits. The child runs in a session of its own, so it survives a
kill of the proxy's process group by a terminal; a kill of both processes (or of the
machine) loses what the child had not committed yet: at most one batch window
(``BATCH_SECONDS``) of records.
"""

from __future__ import annotations

import collections
import json
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mirror.record.deferred import resolve
from mirror.store.open_store import StoreSpec, open_store, shown
from mirror.store.sqlite_store import StoreError

log = logging.getLogger("mirror.store")

# control messages; a batch never starts with 0
_FLUSH, _CLOSE, _STATS = b"\x00flush", b"\x00close", b"\x00stats"
_LENGTH = struct.Struct("!I")     # each record's length, inside a message
START_TIMEOUT = 30.0              # seconds the store process may take to open the store
_MESSAGE = struct.Struct("!i")    # a message's length (multiprocessing.Connection's framing)


def _records_in(message: bytes) -> list:
    """The records of one batch message; one that cannot be read is logged and skipped."""
    records, offset, view = [], 0, memoryview(message)
    while offset + _LENGTH.size <= len(view):
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        try:
            record = pickle.loads(view[offset:offset + size])
        except Exception:  # one bad record must not stop the others
            log.exception("a capture record could not be read; dropped")
        else:
            if isinstance(record, Mapping):
                records.append(record)
            else:
                log.error("a capture record that is a %s, not a dict, was dropped",
                          type(record).__name__)
        offset += size
    return records


_CHILD = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
          "from mirror.store.store_process import _child; _child(int(sys.argv[2]), sys.argv[3])")
_SPEC_ENV = "MIRROR_STORE_PROCESS_SPEC"   # the store, passed in the environment (a URL may
                                          # hold a password: not on a command line)


def _child(fd: int, gateway: str) -> None:
    """The child's entry point. It stops when the parent closes it or dies (the end of the
    pipe), never on a signal meant for the proxy: it runs in a session of its own (a
    terminal's Ctrl-C does not reach it) and ignores SIGINT and SIGTERM (a service manager
    signals every process of the service at once), so that records the parent still holds
    are flushed to it first."""
    import os

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec = os.environ.pop(_SPEC_ENV)
    _serve(Connection(fd), spec if "://" in spec else Path(spec), gateway)


def _serve(connection, spec: StoreSpec, gateway: str = "") -> None:
    """The child: records in (each given ``gateway`` unless it names one), committed;
    answers flush, stats and close. Its first message says whether the store opened."""
    try:
        store = open_store(spec)
    except StoreError as error:
        connection.send_bytes(str(error).encode() or b"the capture store cannot be opened")
        return
    connection.send_bytes(b"ok")
    try:
        while True:
            try:
                message = connection.recv_bytes()
            except (EOFError, OSError):
                break                               # the parent is gone
            if message == _STATS:
                connection.send_bytes(json.dumps(store.stats()).encode())
                continue
            control, _, seconds = (message.partition(b":") if message[:1] == b"\x00"
                                   else (b"", b"", b""))
            if control in (_FLUSH, _CLOSE):
                try:           # answered within the time the parent waits (it says how long)
                    store.flush(float(seconds or 30))
                    answer = b"ok"
                except StoreError as error:
                    answer = str(error).encode()
                connection.send_bytes(answer)
                if control == _CLOSE:
                    break
                continue
            records = _records_in(message)
            if gateway:
                for record in records:
                    if isinstance(record, dict) and not record.get("gateway"):
                        record["gateway"] = gateway
            store.add_many(records)
    finally:
        try:
            store.close(30)
        except StoreError as error:
            log.error("capture records lost at exit: %s", error)


class StoreProcess:
    """``add`` / ``flush`` / ``close`` / ``stats`` of a capture store living in a child process.

    ``gateway``: the name every record gets in its ``gateway`` field (unless it has one)."""

    def __init__(self, spec: StoreSpec, gateway: str = "") -> None:
        import os

        self.spec = spec
        self.path = shown(spec)                     # what messages call it
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, json.dumps(sys.path), str(theirs.fileno()),
                 gateway], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                env={**os.environ, _SPEC_ENV: str(spec)}, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket = ours
        _grow_send_buffer(ours)
        self._replies = Connection(os.dup(ours.fileno()), writable=False)
        self._lock = threading.Lock()           # order of writes: direct or through the backlog
        self._backlog: collections.deque[bytes] = collections.deque()
        self._wake = threading.Event()
        self._request_lock = threading.Lock()   # one flush / stats / close at a time
        self._closed = False
        self._gone = False
        self._opened(START_TIMEOUT)         # fail here, in the caller, if the store is unusable
        self._sender = threading.Thread(target=self._send_loop, name="mirror-store-sender",
                                        daemon=True)
        self._sender.start()

    def _opened(self, timeout: float) -> None:
        """Wait for the child's first message: ``ok``, or why the store cannot be used."""
        try:
            answer = self._replies.recv_bytes() if self._replies.poll(timeout) else None
        except (EOFError, OSError):
            answer = b""
        if answer == b"ok":
            return
        if answer is None:
            self._process.kill()
        self._process.wait()
        self._socket.close()
        self._replies.close()
        raise StoreError(answer.decode(errors="replace") if answer else
                         f"capture store {self.path}: the store process "
                         + ("did not answer" if answer is None else "failed at start"))

    def add(self, record: Mapping[str, Any]) -> None:
        """Hand one record to the store process (it must not change after this call); never
        blocks. When it returns, a SIGKILL of this process no longer loses the record."""
        if not isinstance(record, Mapping):
            raise TypeError(f"a capture record is a dict, not {type(record).__name__}")
        if self._closed:
            raise StoreError(f"capture store {self.path} is closed")
        try:
            data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):  # made here instead
            data = pickle.dumps(_plain(resolve(record)), protocol=pickle.HIGHEST_PROTOCOL)
        if data[:1] == b"\x00":              # never: pickles start with PROTO (0x80)
            raise StoreError("a pickled record starts with a control byte")
        self._write(_LENGTH.pack(len(data)) + data)

    def flush(self, timeout: float = 5.0) -> None:
        """Return once every record added before is committed (StoreError otherwise)."""
        self._request(_FLUSH + b":%g" % (timeout * 0.8), timeout)

    def stats(self, timeout: float = 2.0) -> dict[str, Any]:
        """The store's counters (``CaptureStore.stats``), plus ``backlog``: records still in
        this process, waiting for room in the socket."""
        answer = json.loads(self._request(_STATS, timeout))
        answer["backlog"] = len(self._backlog)
        return answer

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._request(_CLOSE + b":%g" % (timeout * 0.8), timeout)
        finally:
            self._wake.set()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._sender.join(timeout)
            self._socket.close()
            self._replies.close()

    def _request(self, message: bytes, timeout: float) -> bytes:
        with self._request_lock:
            if self._process.poll() is not None or self._gone:
                raise StoreError(f"the capture store process for {self.path} is gone")
            self._write(message)
            try:
                ready = self._replies.poll(timeout)
                answer = self._replies.recv_bytes() if ready else None
            except (EOFError, OSError) as error:
                raise StoreError(f"the capture store process for {self.path} is gone: "
                                 f"{error or 'end of pipe'}") from None
        if answer is None:
            raise StoreError(f"capture store {self.path}: no answer within {timeout:g} s")
        if message != _STATS and answer != b"ok":
            raise StoreError(answer.decode(errors="replace"))
        return answer

    def _write(self, message: bytes) -> None:
        """One message to the child: written now if the socket takes it whole, else (the
        child is behind) the rest goes to the sender thread's backlog, in order."""
        frame = _MESSAGE.pack(len(message)) + message
        with self._lock:
            if not self._backlog:
                try:
                    sent = self._socket.send(frame, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError as error:
                    self._lost(error)
                    return
                if sent == len(frame):
                    return
                frame = frame[sent:]
            self._backlog.append(frame)
        self._wake.set()

    def _send_loop(self) -> None:
        """Writes the backlog (blocking) while there is one; ``add`` appends to it meanwhile."""
        while not (self._closed and not self._backlog):
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._backlog:
                        break
                    frame = self._backlog[0]
                try:
                    self._socket.sendall(frame)
                except OSError as error:
                    with self._lock:
                        self._backlog.clear()
                    self._lost(error)
                    return
                with self._lock:
                    self._backlog.popleft()

    def _lost(self, error: OSError) -> None:
        if not self._gone:
            self._gone = True
            log.error("capture store process for %s is gone: %s", self.path, error)


SEND_BUFFER = 8 << 20    # bytes of records the kernel holds for the child (root; else wmem_max)


def _grow_send_buffer(sock: socket.socket) -> None:
    """Let the socket hold more records for a child that is behind: what is in it survives a
    SIGKILL of the proxy, what waits in the backlog does not."""
    for option in (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER)
            return
        except OSError:
            continue


def _plain(value: Any) -> Any:
    """A record made only of what pickles: JSON round trip (unencodable values as repr)."""
    import json

    from mirror.store.summary import encode_record

    return json.loads(encode_record(value)[0])

"""A capture store whose writer is another process, so that making, encoding and committing
records never competes with the proxy's event loop for the interpreter lock.

``StoreProcess(path)`` starts a child process (a fresh interpreter: nothing of the proxy's
threads is inherited; no multiprocessing helper process either) that owns a ``CaptureStore``
on ``path``; they talk over a socket pair. ``add`` pickles the record (its
``Deferred`` values travel as their inputs: the raw hello, the SYN, the plan) and queues the
bytes; a sender thread writes them down a pipe, so a slow disk never blocks the caller. The
sender lets a record wait up to :data:`SEND_INTERVAL` seconds (less for ``flush`` and
``close``) and sends everything queued by then as one message of length-prefixed pickles:
one wake-up of each side and one write per batch, not per record. The child makes the
deferred values, encodes and commits, in batches, exactly as a ``CaptureStore`` in the same
process would. ``flush`` and ``close`` wait for the child; if the parent dies, the child sees
the pipe close, commits what it has and exits.
"""

from __future__ import annotations

import json
import logging
import pickle
import queue
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

from mirror.store.deferred import resolve
from mirror.store.sqlite_store import CaptureStore, StoreError

log = logging.getLogger("mirror.store")

_FLUSH, _CLOSE = b"\x00flush", b"\x00close"   # control messages; a batch never starts with 0
SEND_INTERVAL = 0.05          # seconds a record may wait in the parent before it is sent
MAX_MESSAGE = 4 << 20         # bytes of records per message (more are sent in several)
_LENGTH = struct.Struct("!I")


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


def _child(fd: int, path: str) -> None:
    """The child's entry point. It stops when the parent closes it or dies (the end of the
    pipe), never on a signal meant for the proxy: it runs in a session of its own (a
    terminal's Ctrl-C does not reach it) and ignores SIGINT and SIGTERM (a service manager
    signals every process of the service at once), so that records the parent still holds
    are flushed to it first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(Connection(fd), path)


def _serve(connection, path: str) -> None:
    """The child: records in, committed; answers flush and close."""
    store = CaptureStore(path)
    try:
        while True:
            try:
                message = connection.recv_bytes()
            except (EOFError, OSError):
                break                               # the parent is gone
            if message == _FLUSH or message == _CLOSE:
                try:
                    store.flush(30)
                    answer = b"ok"
                except StoreError as error:
                    answer = str(error).encode()
                connection.send_bytes(answer)
                if message == _CLOSE:
                    break
                continue
            store.add_many(_records_in(message))
    finally:
        store.close(30)


class StoreProcess:
    """``add`` / ``flush`` / ``close`` of a ``CaptureStore`` living in a child process."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        CaptureStore(self.path).close()             # fail here, in the caller, if unusable
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, json.dumps(sys.path), str(theirs.fileno()),
                 str(self.path)], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._connection = Connection(ours.detach())
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._urgent = threading.Event()
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._sender = threading.Thread(target=self._send_loop, name="mirror-store-sender",
                                        daemon=True)
        self._sender.start()

    def add(self, record: Mapping[str, Any]) -> None:
        """Queue one record (it must not change after this call); returns at once."""
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
        self._queue.put(data)

    def flush(self, timeout: float = 5.0) -> None:
        """Return once every record added before is committed (StoreError otherwise)."""
        self._request(_FLUSH, timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._request(_CLOSE, timeout)
        finally:
            self._queue.put(None)
            self._urgent.set()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._connection.close()

    def _request(self, message: bytes, timeout: float) -> None:
        if self._process.poll() is not None:
            raise StoreError(f"the capture store process for {self.path} is gone")
        self._queue.put(message)
        self._urgent.set()
        try:
            answer = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise StoreError(f"capture store {self.path}: no answer within {timeout:g} s") \
                from None
        if answer != b"ok":
            raise StoreError(answer.decode(errors="replace"))

    def _send_loop(self) -> None:
        """Records wait up to SEND_INTERVAL (less when a flush or close is asked for) and go
        as one message; control messages keep their place between the records."""
        while True:
            data = self._queue.get()                  # blocks while nothing happens
            if data and data[:1] != b"\x00":
                self._urgent.wait(SEND_INTERVAL)      # let more records join this message
            self._urgent.clear()
            batch: list[bytes] = []
            size = 0
            while True:
                record = bool(data) and data[:1] != b"\x00"
                if record:
                    batch += (_LENGTH.pack(len(data)), data)
                    size += len(data)
                if batch and (not record or size >= MAX_MESSAGE):
                    self._send(b"".join(batch))
                    batch, size = [], 0
                if data is None:
                    return
                if not record:
                    self._control(data)
                try:
                    data = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._send(b"".join(batch))

    def _send(self, message: bytes) -> bool:
        try:
            self._connection.send_bytes(message)
            return True
        except (OSError, EOFError) as error:
            log.error("capture store process for %s is gone: %s", self.path, error)
            return False

    def _control(self, message: bytes) -> None:
        """Send a flush or close and pass its answer to the caller waiting for it."""
        try:
            self._connection.send_bytes(message)
            self._replies.put(self._connection.recv_bytes())
        except (OSError, EOFError) as error:
            log.error("capture store process for %s is gone: %s", self.path, error)
            self._replies.put(str(error).encode() or b"gone")


def _plain(value: Any) -> Any:
    """A record made only of what pickles: JSON round trip (unencodable values as repr)."""
    import json

    from mirror.store.summary import encode_record

    return json.loads(encode_record(value)[0])

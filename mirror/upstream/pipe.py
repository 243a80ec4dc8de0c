"""asyncio glue for an ``UpstreamConnection``: readiness callbacks on its socket, write buffering.

The connection's engine owns the socket; the event loop only watches it. ``on_data`` gets each chunk read
(a view of a shared buffer: used or copied before it returns), ``on_close`` the end (None
for a clean end of stream, else the error). Writes that the socket cannot take now are
queued and flushed when it becomes writable; ``buffered`` lets the caller apply back-pressure
(pause reading the client while the upstream is slow).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from mirror.upstream.connection import UpstreamConnection, UpstreamError

READ_SIZE = 262144
# One read buffer for every pipe: the event loop runs one read at a time and each chunk is
# copied out before the next, so a buffer per connection (256 KiB each) would only cost
# memory — it was most of an idle connection's footprint.
_SHARED_BUFFER = bytearray(READ_SIZE)


class UpstreamPipe:
    __slots__ = (
        "_closed",
        "_queue",
        "_reading",
        "_writing",
        "buffered",
        "loop",
        "on_close",
        "on_data",
        "on_drained",
        "up",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, up: UpstreamConnection,
                 on_data: Callable[[memoryview], None], on_close: Callable[[Exception | None], None],
                 on_drained: Callable[[], None]) -> None:
        self.loop = loop
        self.up = up
        self.on_data = on_data
        self.on_close = on_close
        self.on_drained = on_drained
        # made on the first write that waits: (bytes, the client's record sizes or None)
        self._queue: deque[tuple[bytes | memoryview, list[int] | None]] | None = None
        self.buffered = 0
        self._reading = False
        self._writing = False
        self._closed = False

    def start(self) -> None:
        self.resume_reading()
        self._read_ready()   # the handshake may have left application data in BoringSSL

    def pause_reading(self) -> None:
        if self._reading and not self._closed:
            self.loop.remove_reader(self.up.fd)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self._closed:
            self.loop.add_reader(self.up.fd, self._read_ready)
            self._reading = True

    def _read_ready(self) -> None:
        """Read until the connection has nothing more, handing on up to READ_SIZE bytes at a
        time: ``curl_easy_recv`` returns one TLS record (16 KiB at most) per call, and a chunk
        per record would cost a trip through the relay, an encryption and a write for each.
        What reading made the connection owe the server (a KeyUpdate answer) is written when
        the socket takes it."""
        view = memoryview(_SHARED_BUFFER)
        while self._reading and not self._closed:
            filled, ended, error = 0, False, None
            try:
                while filled < READ_SIZE:
                    count = self.up.recv_into(view[filled:])
                    if count is None:
                        break
                    if count == 0:
                        ended = True
                        break
                    filled += count
            except UpstreamError as exc:
                error = exc
            if filled:
                self.on_data(view[:filled])
            if ended or error is not None:
                self._finish(error)
                return
            if filled < READ_SIZE:
                if self.up.holds_output and not self._writing:
                    self._flush_owed()
                return                      # drained: wait for the socket again

    def _flush_owed(self) -> None:
        """Write what the connection owes the server, or wait until the socket takes it."""
        try:
            if self.up.flush():
                return
        except UpstreamError as error:
            self._finish(error)
            return
        self.loop.add_writer(self.up.fd, self._write_ready)
        self._writing = True

    def write(self, data: bytes | memoryview, record_sizes: list[int] | None = None) -> None:
        """Send ``data`` (``record_sizes``: the client's record lengths that carried it)."""
        if self._closed or not data:
            return
        if not self._queue:
            try:
                sent = self.up.send(data, record_sizes)
            except UpstreamError as error:
                self._finish(error)
                return
            if sent == len(data):
                if not self.up.holds_output or self.up.flush():
                    return
                data = b""                  # nothing queued here: the connection holds it
            else:
                data = memoryview(data)[sent:]
                record_sizes = None if sent else record_sizes
        else:
            data = memoryview(data)
        if data:
            if self._queue is None:
                self._queue = deque()
            self._queue.append((data, record_sizes))
            self.buffered += len(data)
        if not self._writing:
            self.loop.add_writer(self.up.fd, self._write_ready)
            self._writing = True

    def _write_ready(self) -> None:
        try:
            if self.up.holds_output and not self.up.flush():
                return
            while self._queue:
                chunk, sizes = self._queue[0]
                sent = self.up.send(chunk, sizes)
                self.buffered -= sent
                if sent < len(chunk):
                    self._queue[0] = (chunk[sent:], None if sent else sizes)
                    return
                self._queue.popleft()
            if self.up.holds_output and not self.up.flush():
                return
        except UpstreamError as error:
            self._finish(error)
            return
        self.loop.remove_writer(self.up.fd)
        self._writing = False
        self.on_drained()

    def _finish(self, error: Exception | None) -> None:
        if self._closed:
            return
        self.close()
        self.on_close(error)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading:
            self.loop.remove_reader(self.up.fd)
            self._reading = False
        if self._writing:
            self.loop.remove_writer(self.up.fd)
            self._writing = False
        self._queue = None
        self.up.close()

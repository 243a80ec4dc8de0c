"""Drive a replay-engine connect and handshake with the event loop's reader and writer
callbacks: a non-blocking ``connect``, the ``ReplayClient``'s flights written as they come, the
server's bytes fed to it when the socket is readable, one timer for the whole attempt.

No task, coroutine step or future per read: a new connection costs the loop a few callbacks,
as libcurl's socket callbacks do for the BoringSSL engine. ``HandshakeDriver.future`` ends with
the ``ReplayConnection``, or an ``UpstreamError`` (``NeedsBoringssl`` included); cancelling it
closes the socket.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Sequence

from mirror.replay.client import ApplicationData, Closed, HandshakeComplete, ReplayClient
from mirror.replay.errors import ReplayError
from mirror.upstream.connection import UpstreamError
from mirror.upstream.replay.connection import READ_SIZE, ReplayConnection
from mirror.upstream.replay.errors import upstream_error
from mirror.upstream.replay.keylog import keylog_lines

_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def upstream_socket(family: int, kind: int, proto: int,
                    prepare: Callable[[int], None] | None) -> socket.socket:
    """A non-blocking TCP socket for the upstream, without Nagle, given to ``prepare`` (the
    SYN mirror's socket options) before it connects; closed again if any of that fails."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if prepare is not None:
            prepare(sock.fileno())
    except BaseException:
        sock.close()
        raise
    return sock


class HandshakeDriver:
    """One connection attempt: ``connect`` (addresses tried in turn) or ``handshake`` on a
    socket already connected, then the replayed handshake; the outcome in ``future``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: ReplayClient, reason: str = "",
                 keylog: Callable[[str], None] | None = None) -> None:
        self.loop = loop
        self.future: asyncio.Future[ReplayConnection] = loop.create_future()
        self.future.add_done_callback(self._ended)
        self._client = client
        self._reason = reason
        self._keylog = keylog
        self._sock: socket.socket | None = None
        self._fd = -1
        self._reading = self._writing = False
        self._out = b""                       # handshake bytes the socket has not taken yet
        self._plain = bytearray()             # application data that came with the handshake
        self._timer: asyncio.TimerHandle | None = None
        # connect
        self._addresses: list = []
        self._prepare: Callable[[int], None] | None = None
        self._connect_failed: Callable[[OSError | None], UpstreamError] | None = None
        self._failure: OSError | None = None

    # --- the attempt -----------------------------------------------------------------------
    def time_out(self, seconds: float, error: Callable[[], UpstreamError]) -> None:
        """Fail with ``error()`` unless done within ``seconds``."""
        self._timer = self.loop.call_later(seconds, lambda: self._fail(error()))

    def connect(self, addresses: Sequence, prepare: Callable[[int], None] | None,
                failed: Callable[[OSError | None], UpstreamError]) -> None:
        """Connect to the first of ``addresses`` (getaddrinfo's tuples) that accepts, each
        socket given to ``prepare`` first; ``failed(last error)`` when none does."""
        self._addresses = list(addresses)
        self._prepare = prepare
        self._connect_failed = failed
        self._next_address()

    def handshake(self, sock: socket.socket, leftover: bytes = b"") -> None:
        """Run the handshake on ``sock`` (connected, non-blocking); ``leftover``: bytes from
        the server read already (after a proxy's answer)."""
        self._sock, self._fd = sock, sock.fileno()
        self._start(leftover)

    # --- connect ---------------------------------------------------------------------------
    def _next_address(self) -> None:
        while self._addresses and not self.future.done():
            family, kind, proto, _, address = self._addresses.pop(0)
            try:
                sock = upstream_socket(family, kind, proto, self._prepare)
            except OSError as error:
                self._failure = error
                continue
            try:
                code = sock.connect_ex(address)
            except OSError as error:
                sock.close()
                self._failure = error
                continue
            except BaseException:
                sock.close()
                raise
            self._sock, self._fd = sock, sock.fileno()
            if code == 0:
                self._start(b"")
                return
            if code in _IN_PROGRESS:
                self.loop.add_writer(self._fd, self._connected)
                self._writing = True
                return
            self._drop_socket()
            self._failure = OSError(code, os.strerror(code))
        if not self.future.done():
            assert self._connect_failed is not None
            self._fail(self._connect_failed(self._failure))

    def _connected(self) -> None:
        if self.future.done():      # cancelled: ``_ended`` is on its way
            return
        assert self._sock is not None
        self._stop_writing()
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code in _IN_PROGRESS:   # spurious wake-up
            self.loop.add_writer(self._fd, self._connected)
            self._writing = True
            return
        if code:
            self._drop_socket()
            self._failure = OSError(code, os.strerror(code))
            self._next_address()
            return
        self._start(b"")

    # --- handshake -------------------------------------------------------------------------
    def _start(self, leftover: bytes) -> None:
        try:
            first = self._client.start()
        except ReplayError as error:
            self._fail(upstream_error(error))
            return
        if not self._write(first):
            return
        self.loop.add_reader(self._fd, self._readable)  # before the leftover may pause it
        self._reading = True
        if leftover:
            self._feed(leftover)

    def _readable(self) -> None:
        if self.future.done():
            return
        assert self._sock is not None
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._fail(UpstreamError(f"TLS handshake failed: {error.strerror or error}",
                                     "upstream-tls"))
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        client = self._client
        try:
            events = client.receive(data) if data else client.eof()
        except ReplayError as error:
            alert = client.data_to_send()
            if alert and self._sock is not None:
                try:
                    self._sock.send(alert)
                except OSError:
                    pass
            self._fail(upstream_error(error))
            return
        done: HandshakeComplete | None = None
        closed = not data
        for event in events:
            if isinstance(event, HandshakeComplete):
                done = event
            elif isinstance(event, ApplicationData):
                self._plain += event.data
            elif isinstance(event, Closed) and done is None:
                closed = True
        if done is None and closed:
            self._fail(UpstreamError("the server closed the connection during the handshake",
                                     "upstream-tls"))
            return
        if done is not None and self._keylog is not None:
            for line in keylog_lines(client, done.version):
                self._keylog(line)
        out = client.data_to_send()
        if out and not self._write(out):
            return
        if done is not None:
            self._finish(done)

    def _write(self, data: bytes) -> bool:
        """Send ``data`` (after what waits); what the socket does not take waits for it to be
        writable. False when the attempt failed."""
        assert self._sock is not None
        self._out += data
        try:
            sent = self._sock.send(self._out) if not self._writing else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self._fail(UpstreamError(f"TLS handshake failed: {error.strerror or error}",
                                     "upstream-tls"))
            return False
        self._out = self._out[sent:]
        if self._out and not self._writing:
            self.loop.add_writer(self._fd, self._writable)
            self._writing = True
        return True

    def _writable(self) -> None:
        if self.future.done():
            return
        self._stop_writing()
        self._write(b"")

    def _finish(self, done: HandshakeComplete) -> None:
        if self.future.done():
            return
        assert self._sock is not None
        self._stop_reading()
        self._stop_writing()
        self._cancel_timer()
        connection = ReplayConnection(self._sock, self._client, done.alpn, bytes(self._plain),
                                      self._reason)
        if self._out:               # the rest of our last flight: the connection sends it first
            connection.hold(self._out)
        self._sock = None           # the connection's now
        self.future.set_result(connection)

    # --- ending ----------------------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def _ended(self, future: asyncio.Future) -> None:
        """Whatever ended the attempt (failure, timeout, cancel): nothing left behind."""
        self._cancel_timer()
        if self._sock is not None:
            self._drop_socket()

    def _drop_socket(self) -> None:
        self._stop_reading()
        self._stop_writing()
        if self._sock is not None:
            self._sock.close()
        self._sock, self._fd = None, -1

    def _stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self._fd)
            self._reading = False

    def _stop_writing(self) -> None:
        if self._writing:
            self.loop.remove_writer(self._fd)
            self._writing = False

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

"""In-process harness for the proxy's connection glue: no subprocess, no listening proxy.

- ``ClockLoop``: a real asyncio event loop whose clock only moves when ``advance(seconds)`` is
  called; timers (first-bytes, idle, response timeouts) fire then, and sockets the code opens
  (a plain upstream, say) are real.
- ``RecordingTransport``: the client's side of a connection as the proxy sees it; it records
  what is written, whether it was closed, aborted or paused.
- ``RecordingProxy``: the real ``Proxy`` (access policy, routes, CA, configuration) whose
  finished capture records are kept in ``records`` instead of going to a store process.
- ``connect_client(proxy, mode)``: a ``ProxyConnection`` made and accepted on a new transport.
- ``openssl_hello(name)``: a real ClientHello (Python's ssl), with fields BoringSSL lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from pathlib import Path

from mirror.proxy.connection import ProxyConnection
from mirror.proxy.server import Listener, Proxy, ProxyConfig


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop with a hand-driven clock: ``time()`` moves only with ``advance``."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on and run what became due (and what that scheduled at once)."""
        self.now += seconds
        self.settle()

    def settle(self, rounds: int = 5) -> None:
        """Run the callbacks that are ready now (a few loop iterations, no waiting)."""
        for _ in range(rounds):
            self.run_until_complete(asyncio.sleep(0))

    def run_until(self, condition, timeout: float = 5.0) -> None:
        """Run real I/O (sockets) until ``condition()`` holds; the clock does not move."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            time.sleep(0.005)                  # real time for the sockets; polled below
            self.settle(1)


class RecordingTransport(asyncio.Transport):
    """What the proxy wrote to its client, and what it did to the connection."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000),
                 sock: socket.socket | None = None) -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.paused = False
        self.eof_written = False
        self.high_water: int | None = None
        self.protocol: asyncio.BaseProtocol | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # by default an unconnected TCP socket: it has no saved SYN, as a connection from a
        # listener without TCP_SAVE_SYN; ``sock``: a real accepted socket instead
        self.sock = sock if sock is not None else socket.socket(socket.AF_INET,
                                                                socket.SOCK_STREAM)

    def get_extra_info(self, name, default=None):
        return {"peername": self.peer, "socket": self.sock}.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.high_water = high

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        """Closed; as asyncio does, the protocol's ``connection_lost`` comes soon after."""
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        if self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def take(self) -> bytes:
        """What was written since the last ``take``."""
        data = bytes(self.written)
        self.written.clear()
        return data


class RecordingProxy(Proxy):
    """The real Proxy; finished records are kept in ``records``."""

    def __init__(self, config: ProxyConfig, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config, loop)
        self.records: list[dict] = []

    def store_record(self, record: dict) -> None:
        self.records.append(record)

    def listening_on(self, host: str, port: int) -> None:
        """Say the proxy listens on host:port (what ``start`` notes of each listener), so a
        request for it is a loop."""
        self._own.add((host, port))


@contextlib.contextmanager
def running_proxy(ca_dir: Path, **options):
    """A proxy on a ``ClockLoop``, with no listener and no store; ``options`` are ProxyConfig
    fields. Yields the proxy (its loop is ``proxy.loop``)."""
    loop = ClockLoop()
    config = ProxyConfig(listeners=[Listener("http", "127.0.0.1", 0)], ca_dir=ca_dir,
                         store_path=None, **options)
    proxy = RecordingProxy(config, loop)
    try:
        yield proxy
    finally:
        loop.settle()
        proxy.executor.shutdown(wait=True)
        proxy.leaves.close()
        loop.close()


def connect_client(proxy: Proxy, mode: str, target=None,
                   sock: socket.socket | None = None) -> tuple[ProxyConnection, RecordingTransport]:
    """A client connection accepted in ``mode`` ("http", "socks5", "reverse", "transparent"),
    on ``sock`` when given (a real accepted socket: what ``getsockname`` and ``getsockopt``
    say of it is what the proxy sees)."""
    conn = ProxyConnection(proxy, mode, target)
    transport = RecordingTransport(sock=sock)
    transport.protocol, transport.loop = conn, proxy.loop
    conn.connection_made(transport)
    return conn, transport


def feed(conn: ProxyConnection, data: bytes, *, step: int | None = None) -> None:
    """The client's bytes, all at once or ``step`` bytes at a time (stopping at a close)."""
    if step is None:
        conn.data_received(data)
        return
    for i in range(0, len(data), step):
        if conn.transport.is_closing():
            return
        conn.data_received(data[i:i + step])


def openssl_hello(server_name: str = "example.test") -> bytes:
    """The first flight of Python's ssl (OpenSSL) for ``server_name``: a real ClientHello
    whose ciphers, groups and signature algorithms BoringSSL cannot all send."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("a handshake with no server cannot complete")

"""The plain-TCP side of a relay (HTTP without TLS, raw bytes, passthrough TLS): a connection
to the destination, directly or through an upstream proxy tunnel (HTTP CONNECT or SOCKS5,
``mirror.wire.proxy_client``). Client bytes written before the connection (and the tunnel)
is ready are queued; half-closes are passed on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import cast

from mirror.emit.routes import UpstreamProxy
from mirror.net.tcp_mirror import TcpMirror
from mirror.wire.errors import WireError
from mirror.wire.proxy_client import ProxyHandshake
from mirror.wire.tcp import TcpSyn


class PlainUpstream(asyncio.Protocol):
    """``owner`` is the connection's ``PlainRelay``: it gets the server's bytes, end and
    failures."""

    def __init__(self, owner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.pending_eof = False
        self.closed = False
        self.eof = False          # the server has finished sending
        self.ready = False        # connected, and the proxy tunnel (if any) is open
        self.handshake: ProxyHandshake | None = None
        self.proxy: UpstreamProxy | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def connect(self, host: str, port: int, timeout: float,
                      proxy: UpstreamProxy | None = None,
                      proxy_tls: ssl.SSLContext | None = None,
                      tcp: TcpMirror | None = None, syn: TcpSyn | None = None,
                      source: str | None = None) -> None:
        """Connect (through ``proxy`` if given; an https:// proxy is verified with
        ``proxy_tls``). Direct connections carry the client's SYN when ``tcp`` and ``syn``
        are given."""
        loop = self.owner.loop
        where, there = (proxy.host, proxy.port) if proxy else (host, port)
        if proxy is not None:
            self.proxy = proxy
            self.handshake = ProxyHandshake(proxy.scheme, host, port, proxy.username,
                                            proxy.password)
        context = proxy_tls if proxy and proxy.scheme == "https" else None
        try:
            if tcp is not None and syn is not None:
                await asyncio.wait_for(self._connect_mirrored(host, port, tcp, syn, source),
                                       timeout)
            else:
                await asyncio.wait_for(loop.create_connection(lambda: self, where, there,
                                                              ssl=context), timeout)
        except TimeoutError:
            self._failed("upstream-timeout", f"connecting to {where}:{there} timed out after "
                                             f"{timeout:.0f}s", timeout=True)
            return
        except (OSError, ssl.SSLError) as exc:
            stage = "upstream-dns" if isinstance(exc, socket.gaierror) else "upstream-connect"
            self._failed(stage, f"cannot connect to {where}:{there}: {exc.strerror or exc}")
            return
        if self.handshake is not None and not self.ready:
            self._timer = loop.call_later(timeout, self._handshake_timeout, timeout)

    async def _connect_mirrored(self, host: str, port: int, tcp: TcpMirror, syn: TcpSyn,
                                source: str | None) -> None:
        loop = self.owner.loop
        family, kind, proto, _, address = (await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM))[0]
        sock = socket.socket(family, kind, proto)
        bound = None
        try:
            sock.setblocking(False)
            bound = tcp.prepare(sock.fileno(), syn, source)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        finally:
            self.owner.record_tcp(tcp.finish(bound, syn))
        await loop.create_connection(lambda: self, sock=sock)

    def _failed(self, stage: str, message: str, *, timeout: bool = False) -> None:
        if self.proxy is not None:
            stage = "upstream-proxy" if stage != "upstream-timeout" else stage
            message = f"{self.proxy.redact(message)} (via {self.proxy.display})"
        self.owner.failed(stage, message, timeout)

    def _handshake_timeout(self, timeout: float) -> None:
        if not self.ready and not self.closed:
            self._failed("upstream-timeout", f"the upstream proxy did not open the tunnel "
                                             f"within {timeout:.0f}s", timeout=True)
            self.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            transport.close()
            return
        # a stream transport (uvloop's do not subclass asyncio.Transport: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        if self.handshake is not None:
            self.transport.write(self.handshake.start())
        else:
            self._ready()

    def _connected(self) -> asyncio.Transport:
        """The transport; only called once connected (``ready`` implies it)."""
        if self.transport is None:
            raise RuntimeError("the upstream connection is not made yet")
        return self.transport

    def _ready(self) -> None:
        self.ready = True
        if self._timer is not None:
            self._timer.cancel()
        for chunk in self.pending:
            self._connected().write(chunk)
        self.pending = []
        if self.pending_eof and self._connected().can_write_eof():
            self._connected().write_eof()
        self.owner.ready()

    def data_received(self, data: bytes) -> None:
        if self.ready:
            self.owner.server_data(data)
            return
        handshake = self.handshake
        assert handshake is not None  # not ready without a handshake: connection_made is ready
        try:
            reply = handshake.feed(data)
        except WireError as exc:
            self._failed("upstream-proxy", str(exc))
            self.close()
            return
        if reply:
            self._connected().write(reply)
        if handshake.done:
            leftover = handshake.leftover
            self._ready()
            if leftover:
                self.owner.server_data(leftover)

    def eof_received(self):
        if not self.ready:
            self._failed("upstream-proxy", "the upstream proxy closed the connection before "
                                           "the tunnel was open")
            return None
        self.eof = True
        self.owner.server_eof()
        return True

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.owner.lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_client()

    def resume_writing(self) -> None:
        self.owner.resume_client()

    def write(self, data: bytes) -> None:
        if self.ready:
            self._connected().write(data)
        else:
            self.pending.append(data)

    def write_eof(self) -> None:
        if self.ready:
            if self._connected().can_write_eof():
                self._connected().write_eof()
        else:
            self.pending_eof = True

    def buffered(self) -> int:
        if not self.ready:
            return sum(map(len, self.pending))
        return self._connected().get_write_buffer_size()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

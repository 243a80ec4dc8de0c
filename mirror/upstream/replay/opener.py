"""Open a replay-engine upstream connection on the event loop: resolve, connect (the client's
SYN mirrored through ``prepare_socket``), open an upstream proxy's tunnel (HTTP CONNECT or
SOCKS5), then run the ``ReplayClient`` handshake over the socket.

The chain is verified against the same trust as the BoringSSL engine's (``--upstream-ca`` or
the system bundle; nothing with ``--insecure-upstream``) and held to ``mirror.tls_policy``
through the engine's hooks. Raises ``UpstreamError`` with the stage that failed, or
``NeedsBoringssl`` when the server chose what only BoringSSL completes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mirror.emit.routes import UpstreamProxy
from mirror.replay.client import (
    ApplicationData,
    Closed,
    HandshakeComplete,
    ReplayClient,
    ReplayConfig,
)
from mirror.replay.errors import ReplayError
from mirror.tls_policy import check_chain, check_server_choice
from mirror.upstream.connection import UpstreamError, UpstreamTarget
from mirror.upstream.replay.connection import READ_SIZE, ReplayConnection
from mirror.upstream.replay.errors import upstream_error
from mirror.upstream.replay.keylog import keylog_lines
from mirror.upstream.replay.trust import trust_store
from mirror.upstream.trust import system_ca_file
from mirror.wire.errors import WireError
from mirror.wire.proxy_client import ProxyHandshake
from mirror.wire.tls import ClientHello


@dataclass(slots=True)
class ReplayOptions:
    """How to verify the server and reach it (the proxy's configuration)."""

    verify: bool = True
    ca_file: str | None = None
    timeout: float = 10.0
    proxy: UpstreamProxy | None = None                 # http:// or socks5(h):// only
    prepare_socket: Callable[[int], None] | None = None  # before connect: the SYN plan
    keylog: Callable[[str], None] | None = None          # --keylog: NSS key-log lines


def _policy_chain(chain, offered_groups) -> None:
    check_chain(chain, offered_groups)


def _policy_choice(hello, version, cipher) -> None:
    check_server_choice(hello, version, cipher)


def replay_config(hello: ClientHello, target: UpstreamTarget,
                  options: ReplayOptions) -> ReplayConfig:
    """The engine's configuration: the client's hello, the trust, the policy hooks."""
    if not options.verify:
        return ReplayConfig(client_hello=hello, server_name=target.sni or target.host,
                            insecure=True, choice_policy=_policy_choice)
    path = options.ca_file or system_ca_file()
    if path is None:
        raise UpstreamError("no CA bundle to verify the server with (use --upstream-ca)",
                            "upstream-certificate")
    return ReplayConfig(client_hello=hello, trust=trust_store(path),
                        server_name=target.sni or target.host, chain_policy=_policy_chain,
                        choice_policy=_policy_choice)


async def open_replay(loop: asyncio.AbstractEventLoop, target: UpstreamTarget,
                      hello: ClientHello, options: ReplayOptions,
                      reason: str = "") -> ReplayConnection:
    """Connect to ``target`` and complete the replayed handshake (see the module doc)."""
    config = replay_config(hello, target, options)
    proxy = options.proxy
    try:
        return await asyncio.wait_for(_open(loop, target, config, options, reason),
                                      options.timeout)
    except TimeoutError:
        where = f" (via {proxy.display})" if proxy is not None else ""
        raise UpstreamError(f"connecting to {target.host}:{target.port} timed out after "
                            f"{options.timeout:g}s{where}", "upstream-timeout") from None


async def _open(loop, target: UpstreamTarget, config: ReplayConfig, options: ReplayOptions,
                reason: str) -> ReplayConnection:
    sock, leftover = await _connect(loop, target, options)
    try:
        return await _handshake(loop, sock, leftover, config, reason, options.keylog)
    except BaseException:
        sock.close()
        raise


async def _connect(loop, target: UpstreamTarget,
                   options: ReplayOptions) -> tuple[socket.socket, bytes]:
    proxy = options.proxy
    host, port = (proxy.host, proxy.port) if proxy is not None else (target.host, target.port)
    try:
        addresses = _address_literal(host, port) or await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise _proxy_error(UpstreamError(f"cannot resolve {host}: {error.strerror or error}",
                                         "upstream-dns"), proxy) from None
    failure: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if options.prepare_socket is not None:
                options.prepare_socket(sock.fileno())
            await loop.sock_connect(sock, address)
        except OSError as error:
            sock.close()
            failure = error
            continue
        except BaseException:
            sock.close()
            raise
        try:
            leftover = await _tunnel(loop, sock, target, proxy) if proxy is not None else b""
        except BaseException:
            sock.close()
            raise
        return sock, leftover
    reason = failure.strerror if failure is not None and failure.strerror else failure
    raise _proxy_error(UpstreamError(f"cannot connect to {host}:{port}: {reason}",
                                     "upstream-connect"), proxy)


def _address_literal(host: str, port: int) -> list | None:
    """What getaddrinfo answers for an IP address (the usual target: the client's original
    destination, or a --resolve address), without a trip through the resolver's thread."""
    if "%" in host:  # a scoped IPv6 address: left to getaddrinfo
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]


def _proxy_error(error: UpstreamError, proxy: UpstreamProxy | None) -> UpstreamError:
    if proxy is None:
        return error
    return UpstreamError(f"{proxy.redact(str(error))} (via {proxy.display})", "upstream-proxy")


async def _tunnel(loop, sock: socket.socket, target: UpstreamTarget,
                  proxy: UpstreamProxy) -> bytes:
    """Open the proxy's tunnel to ``target``; returns tunnel bytes that came with its answer."""
    tunnel = ProxyHandshake(proxy.scheme, target.host, target.port, proxy.username,
                            proxy.password)
    try:
        await loop.sock_sendall(sock, tunnel.start())
        while not tunnel.done:
            data = await loop.sock_recv(sock, READ_SIZE)
            if not data:
                raise WireError("the proxy closed the connection before opening the tunnel",
                                layer="upstream-proxy")
            answer = tunnel.feed(data)
            if answer:
                await loop.sock_sendall(sock, answer)
    except (WireError, OSError) as error:
        message = str(error) if isinstance(error, WireError) else (error.strerror or str(error))
        raise _proxy_error(UpstreamError(message, "upstream-proxy"), proxy) from None
    return tunnel.leftover


async def _handshake(loop, sock: socket.socket, leftover: bytes, config: ReplayConfig,
                     reason: str, keylog=None) -> ReplayConnection:
    try:
        client = ReplayClient(config)
        await loop.sock_sendall(sock, client.start())
    except ReplayError as error:
        raise upstream_error(error) from None
    done: HandshakeComplete | None = None
    plaintext = bytearray()
    data = leftover
    while done is None:
        if not data:
            try:
                data = await loop.sock_recv(sock, READ_SIZE)
            except OSError as error:
                raise UpstreamError(f"TLS handshake failed: {error.strerror or error}",
                                    "upstream-tls") from None
        try:
            events = client.receive(data) if data else client.eof()
        except ReplayError as error:
            alert = client.data_to_send()
            if alert:
                try:
                    sock.send(alert)
                except OSError:
                    pass
            raise upstream_error(error) from None
        data = b""
        for event in events:
            if isinstance(event, HandshakeComplete):
                done = event
            elif isinstance(event, ApplicationData):
                plaintext += event.data
            elif isinstance(event, Closed) and done is None:
                raise UpstreamError("the server closed the connection during the handshake",
                                    "upstream-tls")
        if done is not None and keylog is not None:
            for line in keylog_lines(client, done.version):
                keylog(line)
        out = client.data_to_send()
        if out:
            await loop.sock_sendall(sock, out)
    return ReplayConnection(sock, client, done.alpn, bytes(plaintext), reason)

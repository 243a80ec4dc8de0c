"""Open a replay-engine upstream connection on the event loop: resolve, connect (the client's
SYN mirrored through ``prepare_socket``), open an upstream proxy's tunnel (HTTP CONNECT or
SOCKS5), then run the ``ReplayClient`` handshake over the socket. To an IP address without an
upstream proxy (the usual case) the connect and the handshake run on the loop's reader and
writer callbacks alone (``HandshakeDriver``); a name to resolve or a tunnel to open goes
through coroutines first.

The chain is verified against the same trust as the BoringSSL engine's (``--upstream-ca`` or
the system bundle; nothing with ``--insecure-upstream``) and held to ``mirror.tls_policy``
through the engine's hooks. Raises ``UpstreamError`` with the stage that failed, or
``NeedsBoringssl`` when the server chose what only BoringSSL completes.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mirror.emit.routes import UpstreamProxy
from mirror.replay.client import ReplayClient, ReplayConfig
from mirror.replay.errors import ReplayError
from mirror.tls_policy import check_chain, check_server_choice
from mirror.upstream.connection import UpstreamError, UpstreamTarget
from mirror.upstream.replay.connection import READ_SIZE, ReplayConnection
from mirror.upstream.replay.driver import HandshakeDriver, upstream_socket
from mirror.upstream.replay.errors import upstream_error
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
        client = ReplayClient(config)
    except ReplayError as error:
        raise upstream_error(error) from None
    driver = HandshakeDriver(loop, client, reason, options.keylog)
    addresses = _address_literal(target.host, target.port) if proxy is None else None
    if addresses is not None:   # the usual case: all of it on the loop's callbacks
        driver.time_out(options.timeout, lambda: _timed_out(target, options))
        try:
            driver.connect(addresses, options.prepare_socket,
                           lambda failure: _connect_failed(target.host, target.port, failure,
                                                           None))
        except BaseException:
            driver.future.cancel()      # the timer and the socket go with it
            raise
        return await driver.future
    try:
        return await asyncio.wait_for(_open(loop, target, driver, options), options.timeout)
    except TimeoutError:
        raise _timed_out(target, options) from None


def _timed_out(target: UpstreamTarget, options: ReplayOptions) -> UpstreamError:
    proxy = options.proxy
    where = f" (via {proxy.display})" if proxy is not None else ""
    return UpstreamError(f"connecting to {target.host}:{target.port} timed out after "
                         f"{options.timeout:g}s{where}", "upstream-timeout")


def _connect_failed(host: str, port: int, failure: OSError | None,
                    proxy: UpstreamProxy | None) -> UpstreamError:
    reason = failure.strerror if failure is not None and failure.strerror else failure
    return _proxy_error(UpstreamError(f"cannot connect to {host}:{port}: {reason}",
                                      "upstream-connect"), proxy)


async def _open(loop, target: UpstreamTarget, driver: HandshakeDriver,
                options: ReplayOptions) -> ReplayConnection:
    """Through a resolver or an upstream proxy's tunnel: the connect as coroutines, then the
    handshake on the driver's callbacks."""
    sock, leftover = await _connect(loop, target, options)
    try:
        driver.handshake(sock, leftover)
    except BaseException:
        sock.close()
        raise
    return await driver.future


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
        try:
            sock = upstream_socket(family, kind, proto, options.prepare_socket)
        except OSError as error:
            failure = error
            continue
        try:
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
    raise _connect_failed(host, port, failure, proxy)


@functools.lru_cache(maxsize=1024)
def _address_literal(host: str, port: int) -> tuple | None:
    """What getaddrinfo answers for an IP address (the usual target: the client's original
    destination, or a --resolve address), without a trip through the resolver's thread;
    remembered, as the same few destinations come again and again."""
    if "%" in host:  # a scoped IPv6 address: left to getaddrinfo
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 4:
        return ((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port)),)
    return ((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0)),)


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

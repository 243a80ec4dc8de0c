"""The running proxy: configuration, listeners per mode, shared resources, graceful stop.

Shared by every connection: the CA's leaf cache, the capture store, the libcurl multi handle
that makes every upstream handshake on the event loop (``upstream.curl.multi``), and worker threads
on which leaves are minted so the event loop never waits for that.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import ssl
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mirror.ca import CertificateAuthority, LeafCache
from mirror.emit.routes import Router
from mirror.net.keylog import KeyLog
from mirror.net.listen import make_listener
from mirror.net.listen_error import listen_error
from mirror.net.tcp_mirror import TcpMirror
from mirror.proxy.access import AccessPolicy
from mirror.proxy.connection import ProxyConnection
from mirror.proxy.heap_trim import HeapTrimmer
from mirror.proxy.worker_balance import Balancer
from mirror.upstream.connection import UpstreamError
from mirror.upstream.curl.handshake import MirroredHandshake
from mirror.upstream.curl.multi import CurlLoop
from mirror.upstream.curl.native import native
from mirror.upstream.engine import (
    BORINGSSL,
    REPLAY,
    EngineChoice,
    EngineChooser,
    engine_failed,
    plan_is_exact,
)
from mirror.upstream.replay.errors import NeedsBoringssl
from mirror.upstream.replay.opener import ReplayOptions, open_replay
from mirror.upstream.trust import system_ca_file

log = logging.getLogger("mirror.proxy")

LISTEN_BACKLOG = 1024
MAX_UNTERMINABLE = 4096   # hosts remembered as refusing our certificates (oldest forgotten)
DEFAULT_LISTEN = {"http": ("127.0.0.1", 8080), "socks5": ("127.0.0.1", 1080),
                  "transparent": ("0.0.0.0", 8081), "reverse": ("127.0.0.1", 8443)}



def _internal_error(exc: Exception, target, engine: str, reason: str) -> UpstreamError:
    """A bug while opening the upstream, logged with its traceback, as the 502 the client gets
    (an engine must never leave its client hanging)."""
    log.exception("upstream connection to %s:%s (%s engine) failed unexpectedly", target.host,
                  target.port, engine)
    return engine_failed(UpstreamError(f"internal error: {exc}", "upstream-connect"), engine,
                         reason)

class ListenError(OSError):
    """A listening address that cannot be used; the message names the option and address."""


@dataclass(slots=True)
class Listener:
    mode: str
    host: str
    port: int
    target: tuple[str, str, int] | None = None    # reverse mode: (scheme, host, port)


@dataclass
class ProxyConfig:
    listeners: list[Listener]
    ca_dir: Path
    store_path: Path | str | None       # a SQLite file or a postgresql:// URL (None: no store)
    upstream_ca: str | None = None
    insecure_upstream: bool = False
    ignore_hosts: re.Pattern | None = None
    tproxy: bool = False
    connect_timeout: float = 10.0
    first_bytes_timeout: float = 30.0
    workers: int = 4                    # leaf-minting threads per process
    workers_count: int = 1              # processes (--workers), SO_REUSEPORT listeners
    resolve: dict[tuple[str, int], str] = field(default_factory=dict)
    router: Router = field(default_factory=Router)
    syn_rewrite: bool = True
    spoof_source: bool = False
    on_mismatch: str = "warn"           # strict | warn | passthrough
    keylog: str | None = None
    access: AccessPolicy = field(default_factory=AccessPolicy)
    idle_timeout: float = 300.0
    upstream_response_timeout: float = 60.0   # 0: none
    max_head_size: int = 65536
    max_headers: int = 100
    gateway_name: str = ""              # what this proxy's records say in their gateway field
    metrics_listen: tuple[str, int] | None = None   # --metrics HOST:PORT (None: off)
    ca_created: bool = False            # the CA was made by this run before its workers started
    tls_engine: str = "auto"            # --tls-engine: auto | replay | boringssl


def _proxy_tls_context(config: ProxyConfig) -> ssl.SSLContext:
    """How plain tunnels verify an https:// upstream proxy: like servers (--upstream-ca, the
    system store, or not at all with --insecure-upstream)."""
    context = ssl.create_default_context(cafile=config.upstream_ca or system_ca_file())
    # the TLS policy's floor for mirror's own connection to a proxy: TLS 1.2, and OpenSSL's
    # security level 2 (RSA keys of 2048 bits and more, no SHA-1 or MD5 signatures)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("DEFAULT:@SECLEVEL=2")
    if config.insecure_upstream:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _client_side_context() -> ssl.SSLContext:
    """The server context mirror shows clients: no session tickets and no session cache. A
    client that resumed with mirror would offer a pre_shared_key that no upstream hello can
    carry; without one it sends the hello of a full handshake, which mirror mirrors whole (and
    each handshake saves making and encrypting two tickets)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    return context


class Proxy:
    """Owns listeners, the leaf cache, the store, the libcurl multi handle and the minting
    threads."""

    def __init__(self, config: ProxyConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.router = config.router
        self.access = config.access
        self.head_limits = {"max_head_size": config.max_head_size, "max_headers": config.max_headers}
        self.proxy_tls = _proxy_tls_context(config)
        self.tcp = TcpMirror(rewrite=config.syn_rewrite)
        self.keylog = KeyLog(config.keylog) if config.keylog else None
        self.loop = loop
        native()                                   # fail at start, not on the first client
        self.ca = CertificateAuthority.init(config.ca_dir)
        self.leaves = LeafCache(self.ca, context_factory=_client_side_context)
        self.store = None
        if config.store_path is not None:
            from mirror.store.store_process import StoreProcess
            self.store = StoreProcess(config.store_path, gateway=config.gateway_name)
        self.metrics = None
        self.metrics_bound: tuple[str, int] | None = None
        if config.metrics_listen is not None:
            from mirror.proxy.metrics import ProxyMetrics
            self.metrics = ProxyMetrics()
        self.executor = ThreadPoolExecutor(max_workers=config.workers,
                                           thread_name_prefix="mirror-upstream")
        self.curl: CurlLoop | None = None        # upstream handshakes (made in start)
        self.engines = EngineChooser(config.tls_engine)
        self._tasks: set[asyncio.Task] = set()   # replay-engine connections being opened
        self.heap: HeapTrimmer | None = None     # free C heap given back (made in start)
        self.servers: list[asyncio.base_events.Server] = []
        self.balancer: Balancer | None = None    # with --workers N: evens out connections
        self.bound: list[tuple[str, str, int]] = []
        self.connections: set[ProxyConnection] = set()
        self._own: set[tuple[str, int]] = set()
        self.syn_warnings: list[str] = []
        self._unterminable: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._warned: set[str] = set()

    # --- listeners --------------------------------------------------------------------------
    async def start(self, serve_metrics: bool = True) -> None:
        if self.metrics is not None:
            if self.store is not None:
                self.metrics.watch_store(self.store)
            if serve_metrics and self.config.metrics_listen is not None:
                self.metrics_bound = self.metrics.serve(*self.config.metrics_listen)
        self.curl = CurlLoop(self.loop)
        self.heap = HeapTrimmer(self.loop, lambda: bool(self.connections))
        self.heap.start()
        self.tcp.start(self.loop)
        for spec in self.config.listeners:
            try:
                sock, syn_error = make_listener(
                    spec.host, spec.port, reuse_port=self.config.workers_count > 1,
                    transparent=spec.mode == "transparent" and self.config.tproxy)
            except OSError as error:
                raise ListenError(listen_error("--listen", spec.host, spec.port, error)) from None
            if syn_error:
                self.syn_warnings.append(syn_error)
            factory = functools.partial(ProxyConnection, self, spec.mode, spec.target)
            server = await self.loop.create_server(
                self.balancer.arrivals(factory) if self.balancer is not None else factory,
                sock=sock, backlog=LISTEN_BACKLOG)   # asyncio would otherwise re-listen with 100
            self.servers.append(server)
            host, port = sock.getsockname()[:2]
            self.bound.append((spec.mode, host, port))
            self._own.add((host, port))

    def resolve(self, host: str, port: int) -> str:
        """The address to connect to for ``host:port`` (``--resolve`` overrides, else host)."""
        return self.config.resolve.get((host.lower(), port), host)

    def is_own_address(self, host: str, port: int) -> bool:
        """True for a destination that is one of our listeners (a request that would loop)."""
        for own_host, own_port in self._own:
            if port != own_port:
                continue
            own_loopback = own_host in ("0.0.0.0", "::") or ipaddress.ip_address(own_host).is_loopback
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                if host.lower() == "localhost" and own_loopback:
                    return True
                continue
            if str(address) == own_host or (address.is_loopback and own_loopback):
                return True
        return False

    # --- per connection -----------------------------------------------------------------------
    def choose_engine(self, plan, host: str, port: int, route=None) -> EngineChoice:
        """The engine ``--tls-engine`` picks for a connection to ``host:port`` (the address
        connected to) through ``route`` (an upstream proxy, or None)."""
        choice = self.engines.choose(plan, host, port)
        if choice.engine == REPLAY and route is not None and route.scheme == "https":
            choice = EngineChoice(BORINGSSL, "the replay engine does not tunnel through an "
                                             "https:// upstream proxy")
        return choice

    def open_upstream(self, target, plan, hello, route=None, syn=None, source=None,
                      choice: EngineChoice | None = None):
        """Make the mirrored upstream connection with the engine ``--tls-engine`` picks for it
        (``EngineChooser``), driven by the event loop, and pick the client's context. Returns
        a future of (upstream or None, server SSLContext for the client, error or None, what
        our SYN carried or None). The client's SYN is
        mirrored when the connection goes straight to the server (through an upstream proxy,
        the server sees that proxy's SYN). A leaf not minted yet is minted on a worker
        thread, never on the loop."""
        keys: list[int] = []       # one per socket an engine opened (TcpMirror.prepare's)
        started = self.loop.time()
        mirror_syn = syn is not None and route is None
        result = self.loop.create_future()

        def prepare_socket(fd: int) -> None:
            keys.append(self.tcp.prepare(fd, syn, source))

        def settle(up, failure) -> None:
            if self.metrics is not None:
                self.metrics.handshake(self.loop.time() - started, failure is None)
            alpn = up.alpn if up is not None else next(
                (p for p in hello.alpn if p in ("h2", "http/1.1")), None)
            tcp = None
            if mirror_syn:
                for given_up in keys[:-1]:          # sockets opened before the last one
                    self.tcp.forget(given_up)
                tcp = self.tcp.finish(keys[-1] if keys else None, syn)
            protocols = [alpn] if alpn else []
            context = self._cached_client_context(hello.sni, target.host, protocols)
            if context is not None:
                result.set_result((up, context, failure, tcp))
                return
            minting = self.loop.run_in_executor(self.executor, self._client_context,
                                                hello.sni, target.host, protocols)
            minting.add_done_callback(
                lambda done: result.set_result((up, done.result(), failure, tcp)))

        if choice is None:
            choice = self.choose_engine(plan, target.host, target.port, route)
        prepare = prepare_socket if mirror_syn else None
        if choice.engine == REPLAY:
            task = self.loop.create_task(self._open_replay(target, plan, hello, route, prepare,
                                                           settle, choice.reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._open_curl(target, plan, route, prepare, settle, choice.reason)
        return result

    async def _open_replay(self, target, plan, hello, route, prepare, settle, reason) -> None:
        """The replay engine's connection; a server that needs BoringSSL gets it instead (and
        is remembered)."""
        options = ReplayOptions(verify=not self.config.insecure_upstream,
                                ca_file=self.config.upstream_ca,
                                timeout=self.config.connect_timeout, proxy=route,
                                prepare_socket=prepare,
                                keylog=self.keylog.write if self.keylog else None)
        try:
            up = await open_replay(self.loop, target, hello, options, reason)
        except NeedsBoringssl as exc:
            self.engines.remember(target.host, target.port, str(exc))
            if self.config.on_mismatch == "strict" and not plan_is_exact(plan):
                # BoringSSL would not send the client's hello: strict refuses that
                refusal = UpstreamError(f"the server needs BoringSSL ({exc}), which would "
                                        "change the client's hello; refused "
                                        "(--on-mismatch strict)", "strict")
                settle(None, engine_failed(refusal, REPLAY, reason))
                return
            self._open_curl(target, plan, route, prepare, settle,
                            f"retried after the replay engine: {exc}")
            return
        except UpstreamError as exc:
            settle(None, engine_failed(exc, REPLAY, reason))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the client hanging; logged
            settle(None, _internal_error(exc, target, REPLAY, reason))
            return
        settle(up, None)

    def _open_curl(self, target, plan, route, prepare, settle, reason) -> None:
        """The BoringSSL engine's connection, driven by the event loop (``CurlLoop``)."""
        try:
            handshake = MirroredHandshake(
                target, plan, verify=not self.config.insecure_upstream,
                ca_file=self.config.upstream_ca, timeout=self.config.connect_timeout,
                proxy=route, keylog=self.keylog.write if self.keylog else None,
                prepare_socket=prepare)
        except UpstreamError as exc:       # e.g. an unreadable --upstream-ca
            settle(None, engine_failed(exc, BORINGSSL, reason))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the client hanging; logged
            settle(None, _internal_error(exc, target, BORINGSSL, reason))
            return

        def opened(done: asyncio.Future) -> None:
            try:
                up = done.result()
            except UpstreamError as exc:
                settle(None, engine_failed(exc, BORINGSSL, reason))
                return
            except Exception as exc:  # a bug must not leave the client hanging
                log.exception("upstream connection to %s:%s failed unexpectedly",
                              target.host, target.port)
                settle(None, engine_failed(UpstreamError(f"internal error: {exc}",
                                                         "upstream-connect"), BORINGSSL, reason))
                return
            up.engine_reason = reason
            settle(up, None)

        if self.curl is None:
            raise RuntimeError("upstream connections before start()")
        self.curl.open(handshake).add_done_callback(opened)

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _leaf_for(sni, host) -> tuple[str | None, str | None]:
        """(name, address) the client's leaf is for: the SNI, else the destination."""
        try:
            ipaddress.ip_address(host)
            return sni, host
        except ValueError:
            return sni or host, None

    def _cached_client_context(self, sni, host, alpn):
        sni, ip = self._leaf_for(sni, host)
        context = self.leaves.cached_context(sni, ip, alpn=alpn)
        if context is not None and self.keylog:
            context = self.keylog.attach(context)
        return context

    def _client_context(self, sni, host, alpn):
        sni, ip = self._leaf_for(sni, host)
        try:
            context = self.leaves.ssl_context(sni, ip, alpn=alpn)
        except ValueError:
            context = self.leaves.ssl_context("localhost", None, alpn=alpn)
        return self.keylog.attach(context) if self.keylog else context

    def warn_once(self, key: str, message: str, *args) -> None:
        """A warning logged the first time ``key`` is seen (bounded memory): a client that
        cannot be mirrored exactly is reported once, not on each of its connections."""
        if key in self._warned:
            return
        if len(self._warned) >= MAX_UNTERMINABLE:
            self._warned.clear()
        self._warned.add(key)
        log.warning(message, *args)

    def remember_unterminable(self, host: str, port: int) -> None:
        """A client refused our certificate for host:port: pass it through from now on."""
        key = (host.lower(), port)
        self._unterminable[key] = None
        self._unterminable.move_to_end(key)
        while len(self._unterminable) > MAX_UNTERMINABLE:
            self._unterminable.popitem(last=False)

    def is_unterminable(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self._unterminable

    def connection_opened(self, conn: ProxyConnection) -> None:
        self.connections.add(conn)
        if self.balancer is not None:
            self.balancer.publish(len(self.connections))

    def connection_closed(self, conn: ProxyConnection) -> None:
        self.connections.discard(conn)
        if self.balancer is not None:
            self.balancer.publish(len(self.connections))

    def store_record(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.connection_finished(record, self.tcp.rewriting)
        if self.store is not None:
            try:
                self.store.add(record)
            except Exception:
                log.exception("capture could not be queued for the store")

    # --- stopping ---------------------------------------------------------------------------
    async def stop(self, drain: float = 5.0, *, now: asyncio.Event | None = None,
                   draining=None) -> None:
        """Stop accepting, let open connections finish (up to ``drain`` s, or until ``now`` is
        set), flush the store. ``draining(n)`` is called first when n connections are open.
        A connection still open at the end is cut, and its record says so."""
        for server in self.servers:
            server.close()
        if self.balancer is not None:
            self.balancer.close()
        if self.connections and draining is not None:
            draining(len(self.connections))
        deadline = self.loop.time() + drain
        while self.connections and self.loop.time() < deadline and not (now and now.is_set()):
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            record = getattr(conn, "record", None)
            if isinstance(record, dict) and not record.get("error"):
                record["error"] = {"stage": "shutdown", "message": "cut: the proxy stopped "
                                   "while the connection was open"}
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        if self.curl is not None:
            self.curl.close()
        if self.heap is not None:
            self.heap.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.tcp.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.store is not None:
            from mirror.store import StoreError
            try:
                await self.loop.run_in_executor(None, self.store.close)
            except StoreError as error:        # e.g. its database is down: said, not raised
                log.error("capture store at stop: %s", error)
        self.leaves.close()
        if self.keylog:
            self.keylog.close()

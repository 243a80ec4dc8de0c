"""The plain half of a relay: plain HTTP (observed), passthrough TLS and unknown bytes go to
the destination over TCP (``PlainUpstream``), the server's bytes come back unchanged.

Failures to connect reach a plain-HTTP client as a 502 / 504; half-closes are passed on.
``conn`` is the ProxyConnection: the client side, its record and stage.
"""

from __future__ import annotations

import logging
import time

from mirror.proxy.capture_record import record_error, record_tcp
from mirror.proxy.error_reply import http1_error
from mirror.proxy.plain_upstream import PlainUpstream
from mirror.proxy.response_watch import ResponseWatch
from mirror.proxy.stage import PLAIN, Stage
from mirror.proxy.upstream_route import source_address, upstream_route

log = logging.getLogger("mirror.proxy")

HIGH_WATER = 1 << 20          # bytes buffered towards the server before the client pauses


class PlainRelay:
    """What ``PlainUpstream`` reports to (its ``owner``), and the client's bytes towards it."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.upstream = PlainUpstream(self)

    def start(self, protocol: str, first: bytes) -> None:
        """Relay ``protocol`` ("http", "passthrough" or "raw"), ``first`` the bytes so far."""
        conn = self.conn
        conn.record["protocol"] = protocol
        conn.stage = Stage.PLAIN if protocol == "http" else Stage.RAW
        if protocol in ("http", "passthrough"):
            conn.watch = ResponseWatch.start(conn)
        self.client_bytes(first)
        host, port = conn.dst.host, conn.dst.port
        route = upstream_route(conn, host)
        proxy = conn.proxy
        task = self.loop.create_task(self.upstream.connect(
            proxy.resolve(host, port), port, proxy.config.connect_timeout, route,
            proxy.proxy_tls, proxy.tcp if route is None and conn.syn is not None else None,
            conn.syn, source_address(conn)))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def client_bytes(self, data: bytes) -> None:
        if not data:
            return
        conn = self.conn
        conn.bytes_up += len(data)
        if conn.observer is not None and conn.stage is PLAIN:
            data = conn.observer.feed(data)
            conn.observer.stamp(time.time())
        self.upstream.write(data)
        if conn.watch is not None:
            conn.watch.plain()
        if self.upstream.buffered() > HIGH_WATER:
            conn.pause_client()

    def client_eof(self) -> None:
        """The client has finished sending: passed on; once both have, both close."""
        self.conn.client_eof = True
        self.upstream.write_eof()
        if self.upstream.eof:
            self.conn.close_both()

    # --- what PlainUpstream reports ---------------------------------------------------------
    def failed(self, stage: str, message: str, timeout: bool) -> None:
        conn = self.conn
        record_error(conn.record, stage, message, upstream=True)
        log.warning("%s:%s -> %s:%s: %s: %s", *conn.peer, conn.dst.host, conn.dst.port, stage,
                    message)
        if conn.stage == Stage.PLAIN and conn.transport is not None:
            conn.transport.write(http1_error(504 if timeout else 502, stage, message))
        conn.close_client()

    def ready(self) -> None:
        """Connected (and tunnelled): what was queued has gone out."""
        if self.conn.watch is not None:
            self.conn.watch.plain()

    def server_data(self, data: bytes) -> None:
        conn = self.conn
        conn.last_activity = self.loop.time()
        if conn.watch is not None:
            conn.watch.plain(server=True)
        conn.bytes_down += len(data)
        if conn.observer is not None:
            conn.observer.server_bytes(data)
            conn.observer.stamp(time.time())
        if conn.transport is not None:
            conn.transport.write(data)

    def server_eof(self) -> None:
        conn = self.conn
        if conn.client_eof or conn.transport is None or not conn.transport.can_write_eof():
            conn.close_both()
        else:
            conn.transport.write_eof()

    def lost(self, exc: Exception | None) -> None:
        """The upstream connection is gone (reset: passed on as a reset)."""
        if exc is not None:
            self.conn.record["error"] = {"stage": "relay", "message": f"upstream: {exc}"}
        self.conn.close_client(abort=exc is not None)

    def record_tcp(self, result) -> None:
        record_tcp(self.conn.record, self.conn.tcp_fidelity, result)

    def pause_client(self) -> None:
        self.conn.pause_client()

    def resume_client(self) -> None:
        self.conn.resume_client()

    def close(self) -> None:
        self.upstream.close()

"""The two client-side timers of one connection: the start (``--first-bytes-timeout``) and
idleness (``--idle-timeout``), on the connection's event loop and clock (``loop.time``).

A client that has not finished its start in time (a slowloris trickle included) is closed:
the proxy request or SOCKS5 exchange, the ClientHello, the TLS handshake, the first HTTP/1
request head on a plain relay. A connection on which nothing moved, either way, for the idle
timeout is closed (``conn.last_activity`` is when something last moved).
"""

from __future__ import annotations

import logging

from mirror.proxy.refusals import fail
from mirror.proxy.stage import Stage

log = logging.getLogger("mirror.proxy")


class ClientTimers:
    def __init__(self, conn) -> None:
        self.conn = conn
        config = conn.proxy.config
        self.first_limit = config.first_bytes_timeout
        self.idle_limit = config.idle_timeout
        self.first = conn.loop.call_later(self.first_limit, self._first_timeout)
        self.idle = conn.loop.call_later(self.idle_limit, self._idle_check)

    def cancel(self) -> None:
        self.first.cancel()
        self.idle.cancel()

    def _starting(self) -> bool:
        conn = self.conn
        return (conn.stage in (Stage.FRONT, Stage.FIRST)
                or (conn.stage == Stage.TLS and not conn.tls_relay.tls.handshake_done)
                or (conn.stage == Stage.PLAIN and conn.observer is not None
                    and conn.observer.count == 0))

    def _first_timeout(self) -> None:
        if self._starting():
            fail(self.conn, "client-timeout", f"the client did not finish its start (request "
                                          f"head, ClientHello or TLS handshake) within "
                                          f"{self.first_limit:.0f}s")

    def _idle_check(self) -> None:
        conn = self.conn
        if conn.stage == Stage.CLOSED:
            return
        idle = conn.loop.time() - conn.last_activity
        if idle >= self.idle_limit:
            log.info("%s:%s: idle for %.0fs, closing", *conn.peer, idle)
            conn.record["error"] = conn.record["error"] or {
                "stage": "idle", "message": f"nothing sent either way for {idle:.0f}s"}
            conn.close_both()
            return
        self.idle = conn.loop.call_later(self.idle_limit - idle, self._idle_check)

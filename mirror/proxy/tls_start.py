"""A whole ClientHello has arrived: record it, apply the TLS decision (``tls_decision``) and
start the relay it calls for: the mirrored TLS relay, a passthrough, or a strict refusal.
``--on-mismatch`` judges what BoringSSL would send: a hello the replay engine sends goes
upstream as the client's own, so nothing is refused or passed through for it.
"""

from __future__ import annotations

import logging

from mirror.emit.relay_plan import cached_relay_plan
from mirror.proxy import capture_record
from mirror.proxy.refusals import fail
from mirror.proxy.tls_decision import (
    PassThrough,
    StrictRefusal,
    decide_for_plan,
    passthrough_before_plan,
)
from mirror.proxy.tls_relay import TlsRelay
from mirror.proxy.upstream_route import upstream_route
from mirror.upstream.connection import UpstreamTarget
from mirror.upstream.engine import REPLAY

log = logging.getLogger("mirror.proxy")


def start_tls(conn, hello, first: bytes) -> None:
    """``conn``: the ProxyConnection; ``first``: the raw bytes ``hello`` came in."""
    capture_record.record_hello(conn.record, hello, first)
    config = conn.proxy.config
    if passthrough_before_plan(hello.sni, conn.dst.host, conn.dst.port, config.ignore_hosts,
                               conn.proxy.is_unterminable) is not None:
        conn.start_plain("passthrough", first)
        return
    plan = cached_relay_plan(hello)
    capture_record.record_plan(conn.record, plan, conn.tcp_fidelity)
    host, port = conn.dst.host, conn.dst.port
    target = UpstreamTarget(conn.proxy.resolve(host, port), port, hello.sni or host)
    route = upstream_route(conn, hello.sni or host)
    engine = conn.proxy.choose_engine(plan, target.host, port, route)
    decision = decide_for_plan(plan.fidelity, config.on_mismatch,
                               replayed=engine.engine == REPLAY)
    if isinstance(decision, StrictRefusal):
        fail(conn, decision.stage, decision.message)
        return
    if isinstance(decision, PassThrough):
        log.warning("%s:%s: passed through untouched (--on-mismatch passthrough): %s",
                    *conn.peer, decision.differences)
        conn.record["emitted"] = None
        conn.start_plain("passthrough", first)
        return
    if decision.differences:
        conn.proxy.warn_once(plan.ja4_o,
                             "%s:%s: mirrored with differences (logged once per JA4_o): %s",
                             *conn.peer, decision.differences)
    conn.tls_relay = TlsRelay(conn)
    conn.tls_relay.open(hello, plan, first, target, route, engine)

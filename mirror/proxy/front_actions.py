"""What a connection does with the decisions of its fronts (``front_events``): the reply
written, the destination recorded, the stage it moves to and the relay it starts.

``conn`` is the ProxyConnection. The HTTP-proxy and SOCKS5 fronts (and the start of a
connection whose destination is known at accept, ``accept``) decide how the client gets to a
destination: a tunnel (then the first bytes decide), plain HTTP forwarded, or a refusal. The
first bytes (``sniff``) decide what is relayed: a ClientHello (``tls_start``), plain HTTP, raw
bytes, or a refusal.
"""

from __future__ import annotations

from mirror.proxy.capture_record import record_destination
from mirror.proxy.front_events import (
    Destination,
    Forward,
    FrontStep,
    PlainHttp,
    RawBytes,
    Refusal,
    TlsHello,
    Tunnel,
)
from mirror.proxy.observe import Http1Observer
from mirror.proxy.refusals import close_refused
from mirror.proxy.stage import Stage
from mirror.proxy.tls_start import start_tls


def after_front(conn, step: FrontStep) -> None:
    """A step of the HTTP-proxy or SOCKS5 front: its reply goes out in clear."""
    if step.reply and conn.transport is not None:
        conn.transport.write(step.reply)
    decision = step.decision
    if isinstance(decision, Refusal):
        if decision.destination is not None:
            set_destination(conn, decision.destination)
        close_refused(conn, decision)
    elif isinstance(decision, Tunnel):
        set_destination(conn, decision.destination)
        conn.stage = Stage.FIRST
        if decision.rest:
            after_first_bytes(conn, conn.first.receive(decision.rest))
    elif isinstance(decision, Forward):
        set_destination(conn, decision.destination)
        conn.observer = Http1Observer(rewrite=decision.rewrite, **conn.proxy.head_limits)
        conn.start_plain("http", decision.data)


def after_first_bytes(conn, step: FrontStep) -> None:
    """A step of the first bytes (``sniff``): what is relayed, and how."""
    decision = step.decision
    if isinstance(decision, Refusal):
        if step.reply:
            conn.send_to_client(step.reply)
        close_refused(conn, decision)
    elif isinstance(decision, TlsHello):
        start_tls(conn, decision.hello, decision.raw)
    elif isinstance(decision, PlainHttp):
        conn.observer = Http1Observer(**conn.proxy.head_limits)
        conn.start_plain("http", decision.data)
    elif isinstance(decision, RawBytes):
        conn.start_plain("raw", decision.data)


def set_destination(conn, destination: Destination) -> None:
    """Where the client goes from now on, and in its capture record."""
    conn.dst = destination
    record_destination(conn.record, destination)

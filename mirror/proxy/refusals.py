"""A connection ended for a reason: the reason logged and put in the capture record, the client
told in what it speaks (``bad_input``: 400, GOAWAY or nothing), then the client's side closed.

``conn`` is the ProxyConnection. :func:`refuse` is for bad bytes from the client (a
``WireError``), :func:`fail` for any other reason with its stage ("access", "client-timeout",
"strict", ...), :func:`client_tls_failed` for a client that refused the proxy's handshake, and
:func:`close_refused` for a refusal a front decided.
"""

from __future__ import annotations

import logging
import ssl

from mirror.proxy.bad_input import bad_input_reply
from mirror.proxy.capture_record import record_error
from mirror.proxy.front_events import Refusal
from mirror.wire.errors import WireError

log = logging.getLogger("mirror.proxy")


def close_refused(conn, refusal: Refusal) -> None:
    """Log ``refusal``, record it, close the client's side (what it was told is sent)."""
    log.warning("%s:%s: %s", *conn.peer, refusal.log_line)
    record_error(conn.record, refusal.stage, refusal.message)
    conn.close_client()


def fail(conn, stage: str, message: str) -> None:
    """End the connection at ``stage`` for ``message`` (the client is told nothing more)."""
    close_refused(conn, Refusal(stage, message))


def refuse(conn, exc: WireError) -> None:
    """Bad input from the client: the answer its stage calls for, then the close."""
    refusal, reply = bad_input_reply(exc, conn.stage, conn.mode, conn.observer)
    conn.send_to_client(reply)
    close_refused(conn, refusal)


def client_tls_failed(conn, exc: ssl.SSLError) -> None:
    """The client refused our handshake (``TlsRelay.client_refused`` remembers why)."""
    reason = exc.reason or str(exc)
    if conn.tls_relay is not None:
        conn.tls_relay.client_refused(reason)
    fail(conn, "client-tls", f"TLS with the client failed: {reason}")

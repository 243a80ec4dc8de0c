"""Which way one connection's upstream leaves: through which upstream proxy (``--upstream-proxy``
routes, chosen by host; None: direct), recorded in the capture, and from which address (the
client's own with ``--spoof-source``; None: the system's choice).

``conn`` is the ProxyConnection; both relays (``plain_relay``, ``tls_relay``) ask here before
they open their upstream.
"""

from __future__ import annotations

from mirror.proxy.capture_record import record_route


def upstream_route(conn, host: str):
    """The upstream proxy for ``host`` (None: direct), recorded in the capture."""
    proxy = conn.proxy.router.choose(host)
    record_route(conn.record, proxy)
    return proxy


def source_address(conn) -> str | None:
    """The address upstream connections leave from: the client's with --spoof-source."""
    return conn.peer[0] if conn.proxy.config.spoof_source else None

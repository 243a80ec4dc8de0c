"""The parts of a connection's capture record that the store process makes (``Deferred``).

The proxy hands over what they are made from, in the cheapest form to pickle: the client's
first bytes, raw SYNs, per-field TCP verdicts as ``(status, detail)`` pairs (a relay plan's
views come encoded as JSON: :mod:`mirror.record.plan_views`). Everything here is a pure
function of those, and this module imports only the parsers and fingerprint functions, so the
store process never loads libcurl, the TLS stacks or the event loop (about 20 MiB less).
"""

from __future__ import annotations

import functools

from mirror.fingerprint.report import tcp_report, tls_report
from mirror.wire.tcp import parse_syn
from mirror.wire.tls import DEFAULT_MAX_HELLO, read_client_hello


@functools.lru_cache(maxsize=16)
def _hello_of(first: bytes):
    # the proxy refuses a larger ClientHello with the same limit, so what it accepted parses
    return read_client_hello(first, max_size=DEFAULT_MAX_HELLO)


def tls_report_of(first: bytes) -> dict:
    """The full ClientHello report, from the client's first bytes."""
    return tls_report(_hello_of(first))


def syn_report_of(raw_syn: bytes) -> dict:
    """A SYN's report (the client's, or the one we sent), from its raw headers."""
    return tcp_report(parse_syn(raw_syn))


def fidelity_report(tls: dict, tcp: dict) -> dict:
    """Per field, how faithfully it was mirrored: TLS fields, then ``tcp.<field>``; each
    verdict a ``(status, detail)`` pair."""
    report = {name: {"status": status, "detail": detail} for name, (status, detail) in tls.items()}
    report.update({f"tcp.{name}": {"status": status, "detail": detail}
                   for name, (status, detail) in tcp.items()})
    return report

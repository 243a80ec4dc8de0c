"""Upstream handles are duplicated from a per-plan template: what they send is what a handle
configured from scratch sends, for every plan, even once its template has been evicted."""

from __future__ import annotations

from conftest import first_flight

from mirror.emit.relay_plan import relay_plan
from mirror.fingerprint.tls import tls_fingerprints
from mirror.upstream.connection import UpstreamError, UpstreamTarget
from mirror.upstream.curl import handshake
from mirror.upstream.curl.handshake import MirroredHandshake
from mirror.wire.tls import read_client_hello


def emitted_hello(make_handshake) -> bytes:
    """The first flight a handshake sends to a listener that never answers."""
    def client(port: int) -> None:
        try:
            make_handshake(port).perform()
        except UpstreamError:
            pass                              # the listener hangs up: expected

    return first_flight(client)


def fingerprints(flight: bytes) -> dict:
    found = tls_fingerprints(read_client_hello(flight))
    return {name: found[name] for name in ("ja3", "ja4", "ja4_o", "ja4_ro")}


def test_duplicated_handles_send_what_a_fresh_handle_sends(real_hellos, monkeypatch):
    plans = {name: relay_plan(read_client_hello(real_hellos[name]))
             for name in ("chrome", "firefox", "safari")}

    def from_template(plan):
        return lambda port: MirroredHandshake(UpstreamTarget("127.0.0.1", port, "t.test"), plan,
                                              verify=False, timeout=3)

    class FromScratch:                        # each handle configured option by option
        @staticmethod
        def new_curl(plan, verify, timeout):
            return handshake._configured(plan, verify, timeout)

    def from_scratch(plan):
        def make(port):
            monkeypatch.setattr(handshake, "_templates", FromScratch())
            return from_template(plan)(port)
        return make

    expected = {name: fingerprints(emitted_hello(from_scratch(plan)))
                for name, plan in plans.items()}
    assert len({e["ja4"] for e in expected.values()}) == 3     # three different clients
    templates = handshake._Templates()
    templates.SIZE = 1                        # every other plan evicts the one before
    monkeypatch.setattr(handshake, "_templates", templates)
    for name in ("chrome", "firefox", "chrome", "safari", "safari", "firefox"):
        assert fingerprints(emitted_hello(from_template(plans[name]))) == expected[name], name
    assert len(templates._entries) == 1

"""mirror.check.compare.judge on a real client hello: what a capture may excuse, per engine.

The relay plan's verdicts (the capture's ``emitted.fidelity``) say what BoringSSL cannot send
exactly, e.g. the padding it adds to a hello with GREASE ECH. They excuse a difference only on a
connection BoringSSL made: the replay engine sends the client's own hello, so on one of its
connections a difference passes only where the client's own hello on that connection (the
capture) already had it, as padding that comes and goes with a BoringSSL client's GREASE ECH.
"""

from __future__ import annotations

import struct

import pytest
from conftest import capture_client_hello, make_hello

from mirror.check.compare import judge
from mirror.fingerprint.report import tls_report
from mirror.record.capture import CaptureRecord
from mirror.record.values import tls_report_of
from mirror.wire.tls import parse_client_hello, read_client_hello

PADDING = 21
PADDING_DECLARED = {"padding": {"status": "approximated",
                                "detail": "BoringSSL pads the hello where the client did not"}}


@pytest.fixture(scope="module")
def client_first_flight() -> bytes:
    return capture_client_hello("firefox")      # NSS's shape: GREASE ECH, no padding


def padded_message(first_flight: bytes) -> bytes:
    """The same hello (a handshake message) with a padding extension added, as BoringSSL adds."""
    hello = read_client_hello(first_flight)
    assert hello is not None and PADDING not in hello.extension_types
    extensions = [(e.type, e.data) for e in hello.extensions] + [(PADDING, bytes(37))]
    return make_hello(hello.cipher_suites, extensions, legacy_version=hello.legacy_version,
                      session_id=hello.session_id)


def padded(first_flight: bytes) -> dict:
    """The echo's report of the padded hello."""
    return {"tls": tls_report(parse_client_hello(padded_message(first_flight)))}


def capture(first_flight: bytes, engine: str) -> CaptureRecord:
    return CaptureRecord.from_stored({"tls": tls_report_of(first_flight),
                                      "emitted": {"fidelity": PADDING_DECLARED},
                                      "upstream": {"engine": engine}})


def test_a_difference_the_plan_declared_is_excused_on_a_boringssl_connection(client_first_flight):
    direct = {"tls": tls_report(read_client_hello(client_first_flight))}
    verdicts = judge(direct, padded(client_first_flight), capture(client_first_flight, "boringssl"))
    assert verdicts["ja4"].status == "same but padding"
    assert verdicts["ja3_string"].status == "same but padding"
    assert all(v.ok for v in verdicts.values())


def test_the_replay_engine_declares_nothing(client_first_flight):
    direct = {"tls": tls_report(read_client_hello(client_first_flight))}
    verdicts = judge(direct, padded(client_first_flight), capture(client_first_flight, "replay"))
    assert verdicts["ja4"].status == "DIFFERENT"
    assert verdicts["ja3_string"].status == "DIFFERENT"
    assert verdicts["ja4_o"].status == "DIFFERENT"
    assert verdicts["supported_groups"].status == "same"


def test_the_replay_engine_sending_the_clients_hello_is_the_same(client_first_flight):
    direct = {"tls": tls_report(read_client_hello(client_first_flight))}
    verdicts = judge(direct, direct, capture(client_first_flight, "replay"))
    assert {v.status for v in verdicts.values()} == {"same"}


def test_padding_the_client_itself_sent_on_that_connection_is_its_own_variation(
        client_first_flight):
    """The client padded its hello on the proxied connection (not in the direct run) and the
    replay engine sent that: the server saw the client, padding and all."""
    direct = {"tls": tls_report(read_client_hello(client_first_flight))}
    message = padded_message(client_first_flight)
    first_flight = b"\x16\x03\x01" + struct.pack("!H", len(message)) + message
    verdicts = judge(direct, padded(client_first_flight), capture(first_flight, "replay"))
    assert verdicts["ja4"].status == "same but padding"
    assert {verdicts[f].status for f in ("ja4_o", "ja3_string", "supported_groups")} == {"same"}


def test_a_difference_only_the_measurement_found_is_not_excused():
    """The plan predicted BoringSSL sends Safari's hello exactly; the hello measured upstream
    lacks a cipher. The record says so (``ciphers`` approximated, "measured, not predicted"),
    but that was not declared before connecting: the check reports the difference."""
    from mirror.emit.relay_plan import cached_relay_plan
    from mirror.record.measured_fidelity import UNPREDICTED, measured_fidelity_of
    from mirror.record.plan_views import plan_views_json

    first_flight = capture_client_hello("safari")
    hello = read_client_hello(first_flight)
    plan = cached_relay_plan(hello)
    assert plan.fidelity["ciphers"].status == "exact"
    sent = make_hello(hello.cipher_suites[:-1], [(e.type, e.data) for e in hello.extensions],
                      legacy_version=hello.legacy_version, session_id=hello.session_id)
    fidelity = measured_fidelity_of(plan_views_json(plan), {}, first_flight, sent, "boringssl")
    assert fidelity["ciphers"]["status"] == "approximated"
    assert fidelity["ciphers"]["detail"].startswith(UNPREDICTED + "cipher_suites: client ")
    record = CaptureRecord.from_stored({"tls": tls_report_of(first_flight),
                                        "emitted": {"fidelity": fidelity},
                                        "upstream": {"engine": "boringssl"}})
    direct = {"tls": tls_report(hello)}
    proxied = {"tls": tls_report(parse_client_hello(sent))}
    verdicts = judge(direct, proxied, record)
    assert verdicts["ja4"].status == "DIFFERENT"
    assert verdicts["ja3_string"].status == "DIFFERENT"
    assert verdicts["supported_groups"].status == "same"

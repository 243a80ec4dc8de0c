"""cached_relay_plan: hellos that differ only in what changes per connection share one plan,
and that plan is exactly the one relay_plan makes for each of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import capture_client_hello, pcap_hellos, renamed_hello, vectors_dir

from mirror.emit.relay_plan import cached_relay_plan, hello_shape, relay_plan
from mirror.fingerprint.report import jsonable
from mirror.wire.tls import read_client_hello

FAMILIES = ["chrome", "edge", "firefox", "safari", "safari_ios", "chrome_android", "tor"]


def vector_hellos() -> list:
    """Every client first flight in the TLS vector capture, parsed."""
    path = vectors_dir() / "foxio-ja4" / "pcap" / "tls-handshake.pcapng"
    return [read_client_hello(data) for _, data in pcap_hellos(path)]


def same_plan(a, b) -> bool:
    return jsonable(a) == jsonable(b)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_connections_of_a_client_get_its_exact_plan(family):
    first, second = (read_client_hello(capture_client_hello(family)) for _ in range(2))
    assert first.random != second.random                  # two real, different hellos
    for hello in (first, second):
        assert same_plan(cached_relay_plan(hello), relay_plan(hello))
    if hello_shape(first) == hello_shape(second):
        assert cached_relay_plan(first) is cached_relay_plan(second)
    if family in ("firefox", "safari", "safari_ios", "tor"):  # a fixed extension order
        assert hello_shape(first) == hello_shape(second)


def test_vector_hellos_sharing_a_shape_share_the_same_plan():
    hellos = vector_hellos()
    assert len(hellos) > 20
    by_shape: dict[tuple, list] = {}
    for hello in hellos:
        by_shape.setdefault(hello_shape(hello), []).append(hello)
        assert same_plan(cached_relay_plan(hello), relay_plan(hello))
    for group in by_shape.values():
        plans = [relay_plan(hello) for hello in group]
        assert all(same_plan(plans[0], plan) for plan in plans[1:])
    # different clients never share a plan
    shapes = list(by_shape)
    for i, shape in enumerate(shapes):
        for other in shapes[i + 1:]:
            a, b = by_shape[shape][0], by_shape[other][0]
            if not same_plan(relay_plan(a), relay_plan(b)):
                assert cached_relay_plan(a) is not cached_relay_plan(b)


def test_the_server_name_length_is_part_of_the_shape():
    """BoringSSL pads a hello of 256-511 bytes: whether an unpadded client's hello is sent
    exact depends on its length, so on the server name's length, and the cache must not
    hand one name length's prediction to another."""
    path = Path(__file__).resolve().parents[1] / "fingerprints" / "edge.json"
    raw = bytes.fromhex(json.loads(path.read_text())["tls"]["raw_client_hello"])
    short = renamed_hello(raw, b"a.test", drop=(21,))          # 300 bytes, unpadded
    long = renamed_hello(raw, b"x" * 250 + b".test", drop=(21,))  # over 511 bytes
    assert relay_plan(long).hello_exact is True
    assert relay_plan(short).hello_exact is False
    assert hello_shape(long) != hello_shape(short)
    assert cached_relay_plan(long).hello_exact is True
    assert cached_relay_plan(short).hello_exact is False

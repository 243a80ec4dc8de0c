"""cached_relay_plan: hellos that differ only in what changes per connection share one plan,
and that plan is exactly the one relay_plan makes for each of them."""

from __future__ import annotations

import pytest
from conftest import capture_client_hello, pcap_hellos, vectors_dir

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

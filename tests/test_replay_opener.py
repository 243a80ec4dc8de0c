"""The replay engine's opener connects to an IP address as getaddrinfo would, without the
resolver's thread (the proxy's targets are addresses: the client's original destination or a
``--resolve`` entry)."""

from __future__ import annotations

import socket

import pytest

from mirror.upstream.replay.opener import _address_literal


@pytest.mark.parametrize("host", ["127.0.0.1", "198.18.0.7", "::1", "2001:db8::5",
                                  "::ffff:198.18.0.7"])
def test_an_address_is_what_getaddrinfo_answers(host):
    assert list(_address_literal(host, 8443)) == socket.getaddrinfo(host, 8443,
                                                                    type=socket.SOCK_STREAM)


@pytest.mark.parametrize("host", ["localhost", "bench.test", "fe80::1%lo", "1.2.3", ""])
def test_a_name_or_a_scoped_address_is_left_to_getaddrinfo(host):
    assert _address_literal(host, 443) is None

"""mirror.net.tls_server.ServerTls against a real TLS client (Python's ssl over memory BIOs):
the handshake, records split and batched any way, and no read past the data."""

from __future__ import annotations

import ssl

import pytest

from mirror.ca import CertificateAuthority, LeafCache
from mirror.net.tls_server import ServerTls


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CertificateAuthority.init(tmp_path_factory.mktemp("ca") / "mirror")
    with LeafCache(ca) as leaves:
        client = ssl.create_default_context(cafile=str(ca.cert_path))
        yield leaves.ssl_context("tls.test"), client


class CountingReads:
    """An SSLObject whose ``read`` calls are counted (everything else passes through)."""

    def __init__(self, obj: ssl.SSLObject) -> None:
        self.obj = obj
        self.reads = 0

    def read(self, *args):
        self.reads += 1
        return self.obj.read(*args)

    def __getattr__(self, name):
        return getattr(self.obj, name)


def connected(pki) -> tuple[ServerTls, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    server_context, client_context = pki
    server = ServerTls(server_context)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname="tls.test")
    for _ in range(10):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        assert server.receive(to_server.read()) == b""     # the client's flight
        to_client.write(server.outgoing())
        if server.handshake_done:
            break
    assert server.handshake_done and client.version() == "TLSv1.3"
    return server, client, to_server, to_client


def test_records_are_returned_however_they_are_batched_or_split(pki):
    server, client, to_server, _ = connected(pki)
    for piece in (b"a" * 100, b"b" * 20000, b"c"):    # 20000: two records
        client.write(piece)
    wire = to_server.read()
    assert server.receive(wire) == b"a" * 100 + b"b" * 20000 + b"c"
    client.write(b"split")
    wire = to_server.read()
    assert server.receive(wire[:7]) == b""              # a partial record waits
    assert server.receive(wire[7:-1]) == b""
    assert server.receive(wire[-1:]) == b"split"
    assert not server.closed


def test_no_read_past_the_data(pki):
    """One read per record received, none more: a read past the data would only raise
    SSLWantReadError (an exception per chunk from the client)."""
    server, client, to_server, _ = connected(pki)
    server.obj = counting = CountingReads(server.obj)
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    assert server.receive(to_server.read()) == b"GET / HTTP/1.1\r\n\r\n"
    assert counting.reads == 1
    for _ in range(3):
        client.write(b"x" * 10)
    assert server.receive(to_server.read()) == b"x" * 30
    assert counting.reads == 4
    assert server.receive(b"") == b""
    assert counting.reads == 4

"""mirror.net.tls_server.ServerTls against a real TLS client (Python's ssl over memory BIOs):
the handshake, records split and batched any way, and no read past the data; the ClientHello
answered on a worker thread (``answer_hello``)."""

from __future__ import annotations

import asyncio
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mirror.ca import CertificateAuthority, LeafCache
from mirror.net.tls_server import ServerTls, answer_hello


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



@pytest.fixture(scope="module")
def leaf_pki(tmp_path_factory):
    """A leaf's files for a server context made here, and a client context that trusts it."""
    ca = CertificateAuthority.init(tmp_path_factory.mktemp("ca") / "mirror")
    with LeafCache(ca) as leaves:
        leaf = leaves.get("tls.test")
        yield leaf, ssl.create_default_context(cafile=str(ca.cert_path))


def answered_on(leaf_pki, executor) -> tuple[set[int], int]:
    """Answer a real client's ClientHello with ``answer_hello``, then finish the handshake
    and exchange data. Returns the threads the server's SNI callback (called by OpenSSL while
    it processes the ClientHello) ran on, and the event loop's thread."""
    leaf, client_context = leaf_pki
    threads: set[int] = set()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.chain_path, leaf.key_path)
    context.sni_callback = lambda *_: threads.add(threading.get_ident())
    server = ServerTls(context)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname="tls.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()

    async def run() -> int:
        loop = asyncio.get_running_loop()
        assert await answer_hello(loop, executor, server, to_server.read()) == b""
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    to_client.write(server.outgoing())
    client.do_handshake()                                  # our flight was a whole answer
    client.write(b"after the handshake")
    assert server.receive(to_server.read()) == b"after the handshake"
    assert server.handshake_done and server.version == "TLSv1.3"
    return threads, loop_thread


def test_the_client_hello_is_answered_on_a_worker_thread(leaf_pki):
    with ThreadPoolExecutor(max_workers=1) as executor:
        threads, loop_thread = answered_on(leaf_pki, executor)
    assert threads and loop_thread not in threads


def test_a_stopped_executor_answers_on_the_callers_thread(leaf_pki):
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()
    threads, loop_thread = answered_on(leaf_pki, executor)
    assert threads == {loop_thread}


def test_a_bad_client_hello_fails_the_future_with_the_ssl_error(pki):
    server = ServerTls(pki[0])

    async def run() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as executor, pytest.raises(ssl.SSLError):
            await answer_hello(loop, executor, server, b"\x16\x03\x01\x00\x05hello")

    asyncio.run(run())

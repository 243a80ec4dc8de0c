"""The TLS 1.3 CertificateVerify signature checked apart (``ReplayConfig.defer_signature``), as
the proxy's driver does on a worker thread: against real servers, the client sends nothing
after its hello until the check passed, keeps the server's later records for then, and refuses
a wrong signature exactly as the inline check does; through the engine's opener, the check
runs off the event loop's thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading

import pytest
from conftest import capture_client_hello
from cryptography.hazmat.primitives.serialization import Encoding
from replay_hostile import HALF_RTT, HostileServer
from replay_pki import Pki
from replay_servers import NAME, openssl_server
from test_replay_hostile import refused

from mirror.replay.client import (
    ApplicationData,
    HandshakeComplete,
    ReplayClient,
    ReplayConfig,
    SignatureCheck,
)
from mirror.replay.errors import ReplayError
from mirror.wire.tls import read_client_hello

CCS = bytes.fromhex("140303000101")


@pytest.fixture(scope="module")
def flights():
    return {"chrome": capture_client_hello("chrome", NAME)}


def until_check(sock: socket.socket, client: ReplayClient) -> list:
    """The client's hello out, the server's bytes in until the client asks for its check."""
    sock.sendall(client.start())
    events: list = []
    while not any(isinstance(event, SignatureCheck) for event in events):
        chunk = sock.recv(65536)
        assert chunk, events
        events += client.receive(chunk)
        assert client.data_to_send() == b""       # no HelloRetryRequest here
    return events


def test_nothing_goes_out_before_the_signature_is_checked(tmp_path, pki, flights):
    cert, key = Pki.write(tmp_path, *pki.leaf())
    hello = read_client_hello(flights["chrome"])
    assert hello.session_id                      # so the client's flight starts with a CCS
    client = ReplayClient(ReplayConfig(client_hello=hello, trust=[pki.cert],
                                       defer_signature=True))
    with openssl_server(cert, key) as port, \
            socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(5)
        events = until_check(sock, client)
        assert [type(event) for event in events] == [SignatureCheck]
        check = events[0]
        assert check.scheme in hello.signature_algorithms
        assert client.data_to_send() == b""       # no CCS, no Finished yet
        assert not client.connected
        with pytest.raises(ReplayError) as error:
            client.send(b"GET / HTTP/1.0\r\n\r\n")
        assert error.value.reason == "closed"
        check.run()
        events = client.signature_checked()
        assert isinstance(events[0], HandshakeComplete) and client.connected
        flight = client.data_to_send()
        assert flight.startswith(CCS) and len(flight) > len(CCS)  # then the Finished
        sock.sendall(flight + client.send(b"GET / HTTP/1.0\r\n\r\n"))
        reply = b""
        while b"</HTML>" not in reply.upper():
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += b"".join(event.data for event in client.receive(chunk)
                              if isinstance(event, ApplicationData))
    assert reply.startswith(b"HTTP/1.0 200 ok"), reply[:100]


def test_records_that_come_meanwhile_wait_for_the_check(pki, leaf, flights):
    """0.5-RTT data, sent with the server's flight, comes out after HandshakeComplete."""
    server = HostileServer(*leaf, {"half-rtt"})
    client = ReplayClient(ReplayConfig(client_hello=read_client_hello(flights["chrome"]),
                                       trust=[pki.cert], defer_signature=True))
    try:
        with socket.create_connection(("127.0.0.1", server.port), 5) as sock:
            sock.settimeout(5)
            events = until_check(sock, client)
            sock.settimeout(0.5)
            try:
                while chunk := sock.recv(65536):   # all the server sends before our Finished
                    events += client.receive(chunk)
            except TimeoutError:
                pass
            assert [type(event) for event in events] == [SignatureCheck]
            events[0].run()
            events = client.signature_checked()
            assert [type(event) for event in events] == [HandshakeComplete, ApplicationData]
            assert events[1].data == HALF_RTT
            sock.sendall(client.data_to_send())
            sock.sendall(client.send(b"GET / HTTP/1.0\r\n\r\n"))
    finally:
        server.close()
    assert server.seen["client_finished_ok"]


def test_a_wrong_signature_is_refused_as_the_inline_check_refuses_it(pki, leaf, flights):
    inline = refused(pki, leaf, flights, {"bad-cv"})
    deferred = refused(pki, leaf, flights, {"bad-cv"}, config={"defer_signature": True})
    assert (deferred.reason, str(deferred), deferred.alert) == (
        inline.reason, str(inline), inline.alert)
    assert inline.reason == "bad-signature" and inline.alert == 51
    assert "signature (0x0403) is wrong" in str(inline)


def _opened(port: int, ca_file, flight: bytes) -> object:
    """Through the engine's opener, as the proxy calls it: closed again at once."""
    from mirror.upstream.connection import UpstreamTarget
    from mirror.upstream.replay.opener import ReplayOptions, open_replay

    hello = read_client_hello(flight)

    async def connect():
        connection = await open_replay(asyncio.get_running_loop(),
                                       UpstreamTarget("127.0.0.1", port, NAME), hello,
                                       ReplayOptions(ca_file=str(ca_file), timeout=5))
        connection.close()
        return connection

    return asyncio.run(connect())


@pytest.mark.parametrize("faults", [set(), {"bad-cv"}])
def test_the_opener_verifies_the_signature_off_the_loop_thread(faults, tmp_path, pki, leaf,
                                                               flights):
    """Every ``ECPublicKey.verify`` call (the P-256 leaf's CertificateVerify), on whichever
    thread it is made, as the interpreter's profiler sees it: none on the loop's thread; a
    wrong signature is refused with its reason all the same, before the client's Finished."""
    from mirror.upstream.connection import UpstreamError

    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.cert.public_bytes(Encoding.PEM))
    calls: list[int] = []

    def profile(frame, event, arg) -> None:
        if event == "c_call" and getattr(arg, "__qualname__", "") == "ECPublicKey.verify":
            calls.append(threading.get_ident())

    server = HostileServer(*leaf, faults)
    threading.setprofile(profile)   # the loop's executor threads start within asyncio.run
    sys.setprofile(profile)
    try:
        if faults:
            with pytest.raises(UpstreamError) as error:
                _opened(server.port, ca_file, flights["chrome"])
        else:
            _opened(server.port, ca_file, flights["chrome"])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        server.close()
    if faults:
        assert error.value.stage == "upstream-tls", str(error.value)
        assert (str(error.value)
                == "replay engine: bad-signature: the server's signature (0x0403) is wrong")
        assert "client_finished_ok" not in server.seen
    else:
        assert server.seen["client_finished_ok"]
    assert calls and threading.get_ident() not in calls, calls


def test_a_timeout_while_the_signature_is_checked_leaves_nothing_behind(tmp_path, pki, leaf,
                                                                        flights):
    """The loop's executor (a real one) holds the check until the attempt timed out: the
    attempt fails with the timeout, the socket is closed, the client's Finished never goes
    out, and the check's late result is dropped without an error on the loop."""
    from concurrent.futures import ThreadPoolExecutor

    from mirror.upstream.connection import UpstreamError, UpstreamTarget
    from mirror.upstream.replay.opener import ReplayOptions, open_replay

    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.cert.public_bytes(Encoding.PEM))
    submitted, gate = threading.Event(), threading.Event()

    class HeldExecutor(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.set()

            def held():
                gate.wait(10)
                return fn(*args, **kwargs)
            return super().submit(held)

    loop_errors: list = []

    async def attempt(server: HostileServer) -> UpstreamError:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(HeldExecutor(1))
        loop.set_exception_handler(lambda _, context: loop_errors.append(context))
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(UpstreamError) as error:
            await open_replay(loop, UpstreamTarget("127.0.0.1", server.port, NAME),
                              read_client_hello(flights["chrome"]),
                              ReplayOptions(ca_file=str(ca_file), timeout=1))
        assert submitted.is_set() and not gate.is_set()
        server.thread.join(5)     # its end of the connection closed (it reads our end's EOF)
        assert len(os.listdir("/proc/self/fd")) == fds    # the socket opened since is closed
        gate.set()
        await asyncio.sleep(0.3)                   # the check ends; its result is dropped
        return error.value

    server = HostileServer(*leaf, set())
    try:
        error = asyncio.run(attempt(server))
    finally:
        gate.set()
        server.close()
    assert error.stage == "upstream-timeout", str(error)
    assert "client_finished_ok" not in server.seen
    assert loop_errors == []

"""``ProxyConnection`` driven in-process (``inprocess``): the real Proxy and connection code on
an event loop whose clock the test advances, the client a recording transport fed byte by
byte. The 407, SOCKS5 one byte at a time, loop refusal, one 400 for bad input, strict
refusal, passthrough (to a real TCP server), and the start and idle timeouts; what each mode
starts with (a reverse origin, a transparent connection's original destination), what follows
a CONNECT relayed by its first bytes, the upstream route chosen by host and recorded, and a
closed TLS connection freed without the cyclic garbage collector."""

from __future__ import annotations

import contextlib
import gc
import re
import socket
import ssl
import threading
import weakref

import pytest
from inprocess import connect_client, feed, openssl_hello, running_proxy

from mirror.emit.routes import Router, parse_route
from mirror.proxy.access import AccessPolicy
from mirror.proxy.http_front import ESTABLISHED, PROXY_AUTH_REQUIRED
from mirror.proxy.stage import Stage

CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("inprocess-ca")


def only_record(proxy) -> dict:
    proxy.loop.settle()                       # connection_lost runs soon after the close
    assert len(proxy.records) == 1, proxy.records
    assert not proxy.connections
    return proxy.records[0]


def test_wrong_credentials_get_the_407_and_the_connection_closes(ca_dir):
    with running_proxy(ca_dir, access=AccessPolicy(credentials=("alice", "s3cret"))) as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, CONNECT, step=1)
        assert client.take() == PROXY_AUTH_REQUIRED
        assert client.closed and not client.aborted
        record = only_record(proxy)
        assert record["error"] == {"stage": "access", "message": "proxy authentication failed"}
        assert record["destination"] is None
        assert not proxy.access._open             # the client's slot was given back


def test_socks5_one_byte_at_a_time_reaches_the_first_bytes(ca_dir):
    with running_proxy(ca_dir) as proxy:
        conn, client = connect_client(proxy, "socks5")
        feed(conn, b"\x05\x01\x00\x05\x01\x00\x03\x0cexample.test\x01\xbb", step=1)
        assert client.take() == b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6)
        assert conn.stage == Stage.FIRST and not client.closed
        assert conn.record["destination"] == {"host": "example.test", "port": 443,
                                              "source": "socks5"}


def test_a_socks5_refusal_is_answered_and_recorded(ca_dir):
    with running_proxy(ca_dir) as proxy:
        conn, client = connect_client(proxy, "socks5")
        feed(conn, b"\x05\x01\x00\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x35", step=1)  # UDP
        assert client.take() == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)
        assert client.closed
        assert only_record(proxy)["error"] == {
            "stage": "front", "message": "SOCKS5 command 3 is not supported"}


@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_a_request_for_the_proxys_own_listener_is_refused_as_a_loop(ca_dir, mode):
    with running_proxy(ca_dir) as proxy:
        proxy.listening_on("127.0.0.1", 8080)
        conn, client = connect_client(proxy, mode)
        if mode == "http":
            feed(conn, b"CONNECT 127.0.0.1:8080 HTTP/1.1\r\n\r\n", step=3)
            answer = client.take()
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert b"\r\nX-Mirror-Error: loop\r\n" in answer and b"own listener (a loop)" in answer
        else:
            feed(conn, b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90", step=1)
            assert client.take() == b"\x05\x00" + b"\x05\x02\x00\x01" + bytes(6)
        assert client.closed
        record = only_record(proxy)
        assert record["destination"]["host"] == "127.0.0.1"
        assert record["destination"]["port"] == 8080
        assert "own listener (a loop)" in record["error"]["message"]


def test_bad_input_gets_one_400_and_one_close(ca_dir):
    with running_proxy(ca_dir) as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nBad Header\r\n\r\n",
             step=7)
        answer = client.take()
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert answer.count(b"HTTP/1.1 ") == 1 and b"X-Mirror-Error: parse\r\n" in answer
        assert client.closed
        assert only_record(proxy)["error"]["stage"] == "parse"


def test_strict_refuses_a_hello_that_cannot_be_mirrored_before_any_upstream(ca_dir):
    hello = openssl_hello("example.test")
    with running_proxy(ca_dir, on_mismatch="strict", tls_engine="boringssl") as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, CONNECT + hello, step=1)
        assert client.take() == ESTABLISHED         # nothing after the tunnel's 200
        assert client.closed
        record = only_record(proxy)
        assert record["error"]["stage"] == "strict"
        assert record["error"]["message"].startswith("refused (--on-mismatch strict)")
        assert record["sni"] == "example.test" and record["protocol"] is None
        assert record["upstream"] == {"route": "direct", "error": None}


@pytest.mark.parametrize("policy", ["strict", "passthrough"])
def test_a_hello_the_replay_engine_sends_is_neither_refused_nor_passed_through(ca_dir, policy):
    """--on-mismatch judges what BoringSSL would send: OpenSSL's hello goes by replay (the
    default engine), as the client's own, so the policy has nothing to act on."""
    hello = openssl_hello("example.test")
    with running_proxy(ca_dir, on_mismatch=policy,
                       resolve={("example.test", 443): "198.18.0.1"}) as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, CONNECT + hello, step=1)
        assert client.take() == ESTABLISHED
        assert conn.stage == Stage.CONNECTING              # the upstream is being opened
        assert conn.record["protocol"] == "tls" and conn.record["error"] is None


class OneShotServer:
    """A real TCP server on loopback (in a thread) that reads ``expect`` bytes, answers
    ``answer`` and closes its side."""

    def __init__(self, expect: int, answer: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.expect, self.answer = expect, answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener, self.listener.accept()[0] as conn:
            conn.settimeout(10)
            while len(self.received) < self.expect:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.received += chunk
            conn.sendall(self.answer)


@pytest.mark.parametrize("options", [{"ignore_hosts": re.compile(r"pinned\.test$")},
                                     {"on_mismatch": "passthrough", "tls_engine": "boringssl"}])
def test_passthrough_relays_the_hello_untouched_to_a_real_server(ca_dir, options):
    hello = openssl_hello("api.pinned.test")
    answer = b"\x16\x03\x03server-flight"
    server = OneShotServer(len(hello), answer)
    with running_proxy(ca_dir, resolve={("api.pinned.test", server.port): "127.0.0.1"},
                       **options) as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, f"CONNECT api.pinned.test:{server.port} HTTP/1.1\r\n\r\n".encode() + hello,
             step=11)
        assert client.take() == ESTABLISHED
        assert conn.stage == Stage.RAW
        proxy.loop.run_until(lambda: client.eof_written)   # the server answered and closed
        server.thread.join(10)
        assert bytes(server.received) == hello           # byte for byte
        assert client.take() == answer
        assert not client.closed                         # a half-close is passed on
        conn.eof_received()                              # the client ends too
        assert client.closed
        record = only_record(proxy)
        assert record["protocol"] == "passthrough" and record["emitted"] is None
        assert record["sni"] == "api.pinned.test" and record["error"] is None
        assert record["bytes"] == {"up": len(hello), "down": len(answer)}


def test_a_client_that_does_not_finish_its_start_is_closed_when_the_clock_says(ca_dir):
    with running_proxy(ca_dir, first_bytes_timeout=30.0) as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, b"CONNECT exam", step=1)
        proxy.loop.advance(29.5)
        assert not client.closed
        proxy.loop.advance(1.0)
        assert client.closed and client.take() == b""
        record = only_record(proxy)
        assert record["error"]["stage"] == "client-timeout"
        assert "within 30s" in record["error"]["message"]


def test_a_connection_idle_for_the_idle_timeout_is_closed(ca_dir):
    with running_proxy(ca_dir, first_bytes_timeout=1000.0, idle_timeout=10.0) as proxy:
        conn, client = connect_client(proxy, "socks5")
        proxy.loop.advance(6)
        feed(conn, b"\x05\x01\x00")                   # activity: the idle time starts again
        proxy.loop.advance(6)
        assert not client.closed                      # 12s since the start, 6s idle
        proxy.loop.advance(4.5)
        assert client.closed
        record = only_record(proxy)
        assert record["error"] == {"stage": "idle", "message": "nothing sent either way for 10s"}


class HoldingServer:
    """A real TCP server on loopback (in a thread) that reads what it is sent and answers
    ``answer`` once it has ``expect`` bytes (never, with no answer), until ``stop``."""

    def __init__(self, expect: int = 0, answer: bytes = b"") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.expect, self.answer = expect, answer
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener, self.listener.accept()[0] as conn:
            conn.settimeout(0.05)
            while not self.stopping.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                self.received += chunk
                if self.answer and len(self.received) >= self.expect:
                    conn.sendall(self.answer)
                    self.answer = b""

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


def test_absolute_form_reaches_the_origin_in_origin_form(ca_dir):
    response = b"HTTP/1.1 204 No Content\r\n\r\n"
    server = HoldingServer(0, response)
    authority = f"origin.test:{server.port}".encode()
    # what reaches the origin: the target made origin-form, the proxy's own header gone, the
    # other headers in the client's order and case
    expected = (b"GET /path?q=1 HTTP/1.1\r\nHost: " + authority + b"\r\nX-Order: B\r\n"
                b"x-order: a\r\n\r\n")
    sent = (b"GET http://" + authority + b"/path?q=1 HTTP/1.1\r\nHost: " + authority
            + b"\r\nProxy-Connection: keep-alive\r\nX-Order: B\r\nx-order: a\r\n\r\n")
    server.expect = len(expected)
    try:
        with running_proxy(ca_dir, resolve={("origin.test", server.port): "127.0.0.1"}) as proxy:
            conn, client = connect_client(proxy, "http")
            feed(conn, sent, step=5)
            proxy.loop.run_until(lambda: bytes(client.written) == response)
            assert bytes(server.received) == expected
            assert conn.stage == Stage.PLAIN and conn.record["protocol"] == "http"
            assert conn.record["destination"] == {"host": "origin.test", "port": server.port,
                                                  "source": "absolute-form"}
    finally:
        server.stop()


def test_bad_input_on_a_plain_relay_gets_a_400_and_goes_no_further(ca_dir):
    response = b"HTTP/1.1 204 No Content\r\n\r\n"
    server = HoldingServer(0, response)
    authority = f"origin.test:{server.port}".encode()
    try:
        with running_proxy(ca_dir, resolve={("origin.test", server.port): "127.0.0.1"}) as proxy:
            conn, client = connect_client(proxy, "http")
            feed(conn, b"GET http://" + authority + b"/ HTTP/1.1\r\nHost: " + authority
                 + b"\r\n\r\n")
            proxy.loop.run_until(lambda: bytes(client.written) == response)
            assert client.take() == response and conn.stage == Stage.PLAIN
            feed(conn, b"GET /next HTTP/1.1\r\nBad Header\r\n\r\n")
            answer = client.take()
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert answer.count(b"HTTP/1.1 ") == 1 and b"X-Mirror-Error: parse\r\n" in answer
            assert client.closed
            assert only_record(proxy)["error"]["stage"] == "parse"
            assert bytes(server.received) == b"GET / HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n"
    finally:
        server.stop()


def test_an_origin_that_refuses_the_connection_is_a_502(ca_dir):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                      # nothing listens there now
    with running_proxy(ca_dir) as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        proxy.loop.run_until(lambda: client.closed)
        answer = client.take()
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert b"X-Mirror-Error: upstream-connect\r\n" in answer
        record = only_record(proxy)
        assert record["error"]["stage"] == "upstream-connect"
        assert record["upstream"]["error"] == record["error"]["message"]


def test_a_request_left_unanswered_gets_a_504_when_the_clock_reaches_the_timeout(ca_dir):
    request = b"GET http://127.0.0.1:{port}/slow HTTP/1.1\r\nHost: x\r\n\r\n"
    server = HoldingServer()
    try:
        with running_proxy(ca_dir, upstream_response_timeout=60.0) as proxy:
            conn, client = connect_client(proxy, "http")
            feed(conn, request.replace(b"{port}", str(server.port).encode()))
            proxy.loop.run_until(lambda: server.received.endswith(b"\r\n\r\n"))
            proxy.loop.settle()
            proxy.loop.advance(59.0)
            assert client.written == b"" and not client.closed
            proxy.loop.advance(1.5)
            answer = client.take()
            assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
            assert b"X-Mirror-Error: upstream-response-timeout\r\n" in answer
            assert client.closed
            record = only_record(proxy)
            assert record["error"]["stage"] == "upstream-response-timeout"
            assert record["http"]["requests"][0]["response"]["status"] == 504
    finally:
        server.stop()


def test_a_reverse_listener_whose_origin_is_the_proxy_itself_is_refused_as_a_loop(ca_dir):
    with running_proxy(ca_dir) as proxy:
        proxy.listening_on("127.0.0.1", 8443)
        conn, client = connect_client(proxy, "reverse", ("https", "127.0.0.1", 8443))
        assert client.closed and client.take() == b""
        record = only_record(proxy)
        assert record["destination"] == {"host": "127.0.0.1", "port": 8443, "source": "reverse"}
        assert record["error"]["stage"] == "loop"
        assert "own listener (a loop)" in record["error"]["message"]


def test_a_transparent_connection_without_an_original_destination_is_refused(ca_dir):
    # the harness's socket was never connected, let alone REDIRECTed: conntrack knows nothing
    with running_proxy(ca_dir) as proxy:
        conn, client = connect_client(proxy, "transparent")
        assert client.closed and client.take() == b""
        record = only_record(proxy)
        assert record["error"]["stage"] == "front"
        assert "no original destination (SO_ORIGINAL_DST" in record["error"]["message"]
        assert record["destination"] is None


@pytest.mark.parametrize("own", [False, True], ids=["elsewhere", "the-proxy-itself"])
def test_a_tproxy_connection_goes_to_its_own_local_address_unless_that_is_the_proxy(ca_dir, own):
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as far_end:
        accepted = listener.accept()[0]
        host, port = accepted.getsockname()
        try:
            with running_proxy(ca_dir, tproxy=True) as proxy:
                if own:
                    proxy.listening_on(host, port)
                conn, client = connect_client(proxy, "transparent", sock=accepted)
                assert conn.record["destination"] == {"host": host, "port": port,
                                                      "source": "tproxy"}
                if own:
                    assert client.closed and client.take() == b""
                    assert only_record(proxy)["error"]["stage"] == "loop"
                else:
                    assert conn.stage == Stage.FIRST and not client.closed
                    client.close()
                    assert only_record(proxy)["error"] is None
        finally:
            accepted.close()
            far_end.close()


@pytest.mark.parametrize("first, answer, stage, protocol", [
    (b"GET /in-tunnel HTTP/1.1\r\nHost: tunnel.test\r\n\r\n",
     b"HTTP/1.1 204 No Content\r\n\r\n", Stage.PLAIN, "http"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", b"SSH-2.0-server\r\n", Stage.RAW, "raw"),
], ids=["plain-http", "raw"])
def test_what_follows_a_connect_in_the_same_packet_is_relayed_by_its_first_bytes(
        ca_dir, first, answer, stage, protocol):
    server = HoldingServer(len(first), answer)
    try:
        with running_proxy(ca_dir, resolve={("tunnel.test", server.port): "127.0.0.1"}) as proxy:
            conn, client = connect_client(proxy, "http")
            feed(conn, f"CONNECT tunnel.test:{server.port} HTTP/1.1\r\n\r\n".encode() + first)
            assert client.take() == ESTABLISHED
            assert conn.stage == stage and conn.record["protocol"] == protocol
            proxy.loop.run_until(lambda: bytes(client.written) == answer)
            assert bytes(server.received) == first             # untouched
            if stage == Stage.PLAIN:
                assert conn.observer.count == 1                # the request was observed
            else:
                assert conn.observer is None
            assert conn.record["destination"] == {"host": "tunnel.test", "port": server.port,
                                                  "source": "connect"}
    finally:
        server.stop()


def test_the_upstream_route_is_chosen_by_host_and_recorded(ca_dir):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                      # nothing listens there now
    router = Router(routes=(parse_route(rf"\.via\.test$=socks5://127.0.0.1:{port}", None),))
    hosts = {"a.via.test": "127.0.0.1", "direct.test": "127.0.0.1"}
    with running_proxy(ca_dir, router=router,
                       resolve={(host, port): address for host, address in hosts.items()}) as proxy:
        for host in hosts:
            conn, client = connect_client(proxy, "http")
            feed(conn, f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            proxy.loop.run_until(client.is_closing)
            assert client.take().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        proxy.loop.settle()
        via, direct = proxy.records
        assert via["upstream"]["route"] == f"via socks5://127.0.0.1:{port}"
        assert via["upstream"]["proxy_exchange"] == (
            "SOCKS5 with the upstream proxy, made by mirror (not the client's)")
        assert direct["upstream"]["route"] == "direct" and "proxy_exchange" not in direct["upstream"]


class OneTlsExchange:
    """A real TLS server on loopback (in a thread), with a leaf for ``host`` from the CA in
    ``origin_ca``: it answers one HTTP/1.1 request with ``ok`` and closes."""

    def __init__(self, origin_ca, host: str) -> None:
        from mirror.ca import CertificateAuthority, LeafCache

        leaf = LeafCache(CertificateAuthority.init(origin_ca)).get(host)
        for name, pem in (("leaf.pem", leaf.cert_pem), ("key.pem", leaf.key_pem)):
            (origin_ca / name).write_bytes(pem if isinstance(pem, bytes) else pem.encode())
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(origin_ca / "leaf.pem", origin_ca / "key.pem")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener, self.listener.accept()[0] as raw:
            raw.settimeout(10)
            with self.context.wrap_socket(raw, server_side=True) as tls:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                with contextlib.suppress(ssl.SSLError, OSError):   # the proxy may close first
                    tls.unwrap()


def test_a_closed_tls_connection_is_freed_without_the_cyclic_garbage_collector(ca_dir, tmp_path):
    """Once a relayed TLS connection has closed, nothing of it waits for the cyclic GC: its
    timers, relay, upstream pipe and response watch no longer hold it (or each other)."""
    server = OneTlsExchange(tmp_path, "tls.test")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    gc.collect()
    gc.disable()
    try:
        with running_proxy(ca_dir, insecure_upstream=True,
                           resolve={("tls.test", server.port): "127.0.0.1"}) as proxy:
            client = ssl.create_default_context(cafile=str(proxy.ca.cert_path)).wrap_bio(
                incoming, outgoing, server_hostname="tls.test")     # trusts mirror's CA
            conn, transport = connect_client(proxy, "http")

            def exchange(wanted) -> None:
                """Run the proxy until the client's TLS has what ``wanted`` says."""
                while True:
                    with contextlib.suppress(ssl.SSLWantReadError):
                        if wanted():
                            return
                    if outgoing.pending:
                        feed(conn, outgoing.read())
                    proxy.loop.run_until(lambda: transport.written or transport.closed)
                    incoming.write(transport.take())

            with contextlib.suppress(ssl.SSLWantReadError):
                client.do_handshake()
            feed(conn, f"CONNECT tls.test:{server.port} HTTP/1.1\r\n\r\n".encode())
            assert transport.take() == ESTABLISHED
            exchange(lambda: client.do_handshake() or True)
            client.write(b"GET / HTTP/1.1\r\nHost: tls.test\r\n\r\n")
            answer = bytearray()
            exchange(lambda: answer.extend(client.read(65536)) or answer.endswith(b"ok"))
            proxy.loop.run_until(lambda: transport.closed)   # the server closed: so does mirror
            server.thread.join(10)
            record = only_record(proxy)
            assert record["protocol"] == "tls" and record["error"] is None
            assert record["http"]["requests"][0]["response"]["status"] == 200
            freed = weakref.ref(conn)
            transport.protocol = conn = None
            assert freed() is None
    finally:
        gc.enable()

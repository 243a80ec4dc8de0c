"""``ProxyConnection`` driven in-process (``inprocess``): the real Proxy and connection code on
an event loop whose clock the test advances, the client a recording transport fed byte by
byte. The 407, SOCKS5 one byte at a time, loop refusal, one 400 for bad input, strict
refusal, passthrough (to a real TCP server), and the start and idle timeouts."""

from __future__ import annotations

import re
import socket
import threading

import pytest
from inprocess import connect_client, feed, openssl_hello, running_proxy

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
    with running_proxy(ca_dir, on_mismatch="strict") as proxy:
        conn, client = connect_client(proxy, "http")
        feed(conn, CONNECT + hello, step=1)
        assert client.take() == ESTABLISHED         # nothing after the tunnel's 200
        assert client.closed
        record = only_record(proxy)
        assert record["error"]["stage"] == "strict"
        assert record["error"]["message"].startswith("refused (--on-mismatch strict)")
        assert record["sni"] == "example.test" and record["protocol"] is None
        assert record["upstream"] == {"route": "direct", "error": None}


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
                                     {"on_mismatch": "passthrough"}])
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

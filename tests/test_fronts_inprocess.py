"""The proxy's fronts and its TLS decision, sans-I/O, driven in-process byte by byte: the
explicit HTTP front (CONNECT, absolute form, 407, loop refusal), the SOCKS5 front (fed one
byte at a time, with and without username/password, and its refusals), first-bytes sniffing
(a real ClientHello, plain HTTP, other bytes, bad TLS), the mirror / strict / passthrough
decision made from a real relay plan, and what a client whose bytes are refused is told
(a 400, a GOAWAY from real HTTP/2 frames, or nothing)."""

from __future__ import annotations

import base64
import re

import h2.config
import h2.connection
import pytest
from hyperframe.frame import Frame, GoAwayFrame
from inprocess import openssl_hello

from mirror.emit.relay_plan import cached_relay_plan
from mirror.proxy.access import AccessPolicy
from mirror.proxy.bad_input import bad_input_reply
from mirror.proxy.front_events import (
    Destination,
    Forward,
    PlainHttp,
    RawBytes,
    Refusal,
    TlsHello,
    Tunnel,
)
from mirror.proxy.http_front import ESTABLISHED, PROXY_AUTH_REQUIRED, HttpFront
from mirror.proxy.observe import Http1Observer, Http2Observer
from mirror.proxy.sniff import FirstBytes
from mirror.proxy.socks_front import SocksFront
from mirror.proxy.stage import Stage
from mirror.proxy.tls_decision import (
    MirrorHello,
    PassThrough,
    StrictRefusal,
    decide_for_plan,
    passthrough_before_plan,
)
from mirror.wire.errors import WireError
from mirror.wire.http1 import parse_request_head
from mirror.wire.tls import read_client_hello

LIMITS = {"max_head_size": 65536, "max_headers": 100}
OWN = ("127.0.0.1", 8080)          # where the proxy under test "listens"


def is_own(host: str, port: int) -> bool:
    return (host, port) == OWN


def feed_bytewise(front, data: bytes):
    """Feed one byte at a time; the replies sent along the way and the decision with the
    index of the byte that brought it."""
    replies = []
    for index in range(len(data)):
        step = front.receive(data[index:index + 1])
        if step.reply:
            replies.append((index, step.reply))
        if step.decision is not None:
            return replies, step.decision, index
    return replies, None, None


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------------- HTTP front
def test_connect_fed_byte_by_byte_is_decided_on_the_last_byte_of_its_head():
    request = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
    front = HttpFront(AccessPolicy(), LIMITS, is_own)
    replies, decision, index = feed_bytewise(front, request + b"\x16\x03\x01")
    assert index == len(request) - 1
    assert replies == [(index, ESTABLISHED)]
    assert decision == Tunnel(Destination("example.test", 443, "connect"), b"")
    # what came with the head belongs to the tunnel
    step = HttpFront(AccessPolicy(), LIMITS, is_own).receive(request + b"\x16\x03\x01")
    assert step.decision.rest == b"\x16\x03\x01"


@pytest.mark.parametrize("authorization", [None, basic("alice", "wrong"), basic("bob", "s3cret")])
def test_wrong_or_missing_proxy_credentials_get_a_407_and_one_refusal(authorization):
    head = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n"
    if authorization:
        head += f"Proxy-Authorization: Basic {authorization}\r\n".encode()
    front = HttpFront(AccessPolicy(credentials=("alice", "s3cret")), LIMITS, is_own)
    replies, decision, _ = feed_bytewise(front, head + b"\r\n")
    assert replies == [(len(head) + 1, PROXY_AUTH_REQUIRED)]
    assert PROXY_AUTH_REQUIRED.startswith(b"HTTP/1.1 407 ")
    assert b'Proxy-Authenticate: Basic realm="mirror"' in PROXY_AUTH_REQUIRED
    assert decision == Refusal("access", "proxy authentication failed",
                               logged="refused: proxy authentication required or wrong")


def test_right_proxy_credentials_open_the_tunnel():
    front = HttpFront(AccessPolicy(credentials=("alice", "s3cret")), LIMITS, is_own)
    step = front.receive(b"CONNECT example.test:443 HTTP/1.1\r\n"
                         b"Proxy-Authorization: Basic " + basic("alice", "s3cret").encode()
                         + b"\r\n\r\n")
    assert step.reply == ESTABLISHED
    assert isinstance(step.decision, Tunnel)


def test_absolute_form_is_forwarded_with_each_request_made_origin_form():
    first = (b"GET http://example.test:8000/a?b=1 HTTP/1.1\r\nHost: example.test:8000\r\n"
             b"Proxy-Connection: keep-alive\r\nX-Case: Kept\r\n\r\n")
    step = HttpFront(AccessPolicy(), LIMITS, is_own).receive(first)
    assert step.reply == b""
    decision = step.decision
    assert isinstance(decision, Forward)
    assert decision.destination == Destination("example.test", 8000, "absolute-form")
    assert decision.data == first
    rewritten = decision.rewrite(parse_request_head(first))
    assert rewritten == b"GET /a?b=1 HTTP/1.1\r\nHost: example.test:8000\r\nX-Case: Kept\r\n\r\n"
    other = parse_request_head(b"GET http://elsewhere.test/ HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n")
    with pytest.raises(ValueError, match="open a new connection"):
        decision.rewrite(other)


@pytest.mark.parametrize(("request_bytes", "says"), [
    (b"GET https://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n", "must use CONNECT"),
    (b"CONNECT example.test HTTP/1.1\r\n\r\n", "has no port"),
    (b"GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n", ""),
    (b"\x16\x03\x01\x02\x00\r\n\r\n", ""),
])
def test_bad_proxy_requests_get_one_400_that_says_why(request_bytes, says):
    step = HttpFront(AccessPolicy(), LIMITS, is_own).receive(request_bytes)
    assert isinstance(step.decision, Refusal)
    assert step.decision.stage == "parse"
    assert step.reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert step.reply.count(b"HTTP/1.1") == 1
    assert b"X-Mirror-Error: parse\r\n" in step.reply
    assert says in step.decision.message and step.decision.message.encode() in step.reply


@pytest.mark.parametrize("request_bytes", [
    b"CONNECT 127.0.0.1:8080 HTTP/1.1\r\n\r\n",
    b"GET http://127.0.0.1:8080/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
])
def test_a_request_to_the_proxys_own_listener_is_refused_as_a_loop(request_bytes):
    step = HttpFront(AccessPolicy(), LIMITS, is_own).receive(request_bytes)
    assert step.reply.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nX-Mirror-Error: loop\r\n" in step.reply and b"own listener (a loop)" in step.reply
    assert step.decision.stage == "loop"
    assert step.decision.destination is not None
    assert (step.decision.destination.host, step.decision.destination.port) == OWN


# ---------------------------------------------------------------------------------- SOCKS5 front
CONNECT_DOMAIN = b"\x05\x01\x00\x03\x0cexample.test\x01\xbb"


def test_socks5_fed_one_byte_at_a_time_answers_each_message_when_it_is_whole():
    greeting = b"\x05\x02\x00\x02"
    data = greeting + CONNECT_DOMAIN + b"\x16\x03\x01"
    front = SocksFront(AccessPolicy(), is_own)
    replies, decision, index = feed_bytewise(front, data)
    end = len(greeting) + len(CONNECT_DOMAIN) - 1
    assert replies == [(len(greeting) - 1, b"\x05\x00"),
                       (end, b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")]
    assert index == end
    assert decision == Tunnel(Destination("example.test", 443, "socks5"), b"")
    whole = SocksFront(AccessPolicy(), is_own).receive(data)
    assert whole.reply == b"\x05\x00" + b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert whole.decision.rest == b"\x16\x03\x01"


def test_socks5_username_and_password_byte_by_byte():
    auth = b"\x01\x05alice\x06s3cret"
    front = SocksFront(AccessPolicy(credentials=("alice", "s3cret")), is_own)
    replies, decision, _ = feed_bytewise(front, b"\x05\x01\x02" + auth + CONNECT_DOMAIN)
    assert [reply for _, reply in replies] == [b"\x05\x02", b"\x01\x00",
                                               b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"]
    assert decision.destination == Destination("example.test", 443, "socks5")


def test_socks5_wrong_password_is_refused_after_its_status():
    front = SocksFront(AccessPolicy(credentials=("alice", "s3cret")), is_own)
    replies, decision, _ = feed_bytewise(front, b"\x05\x01\x02\x01\x05alice\x05wrong" + CONNECT_DOMAIN)
    assert [reply for _, reply in replies] == [b"\x05\x02", b"\x01\x01"]
    assert decision == Refusal("access", "refused: SOCKS5 username/password")


NO_AUTH = b"\x05\x01\x00"
ACCEPTED = b"\x05\x00"


def refused(code: int) -> bytes:
    """A SOCKS5 reply with ``code``, built by hand (RFC 1928 §6: bound address 0.0.0.0:0)."""
    return bytes((5, code, 0, 1)) + bytes(6)


@pytest.mark.parametrize(("data", "at", "reply", "stage", "says"), [
    (NO_AUTH + b"\x05\x02\x00\x03\x0cexample.test\x01\xbb", -1, ACCEPTED + refused(7), "front",
     "SOCKS5 command 2 is not supported"),                                  # BIND
    (NO_AUTH + b"\x05\x01\x00\x09", -1, ACCEPTED + refused(8), "parse", "unknown address type 9"),
    (NO_AUTH + b"\x05\x01\x00\x03\x03a b\x00\x50", 9, ACCEPTED + refused(1), "parse",
     "byte 0x20 not allowed"),
    (b"\x04\x01\x00\x50", 0, b"", "parse", "greeting version is 4, not 5"),  # SOCKS4
    (NO_AUTH + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90", -1, ACCEPTED + refused(2), "parse",
     "127.0.0.1:8080 is this proxy's own listener (a loop)"),
])
def test_socks5_refusals_answer_once_then_decide(data, at, reply, stage, says):
    front = SocksFront(AccessPolicy(), is_own)
    replies, decision, index = feed_bytewise(front, data)
    assert index == at % len(data)          # refused as soon as the bad byte is there
    assert b"".join(r for _, r in replies) == reply
    assert isinstance(decision, Refusal) and decision.stage == stage and says in decision.message
    assert front.receive(NO_AUTH).reply == b""          # nothing more after a refusal


def test_socks5_without_an_acceptable_method_is_told_so():
    front = SocksFront(AccessPolicy(credentials=("alice", "s3cret")), is_own)
    step = front.receive(NO_AUTH)
    assert step.reply == b"\x05\xff"
    assert step.decision == Refusal("front", "SOCKS5 client offered no acceptable method")


# ---------------------------------------------------------------------------------- first bytes
def test_a_real_client_hello_fed_byte_by_byte_is_decided_when_it_is_whole():
    hello = openssl_hello("sniffed.example")
    sniffer = FirstBytes(65536)
    replies, decision, index = feed_bytewise(sniffer, hello)
    assert replies == [] and index == len(hello) - 1
    assert isinstance(decision, TlsHello)
    assert decision.raw == hello and decision.hello.sni == "sniffed.example"


@pytest.mark.parametrize(("data", "kind"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PlainHttp),
    (b"OPTIONS * HTTP/1.0\r\n", PlainHttp),
    (b"SSH-2.0-OpenSSH_9.6\r\n", RawBytes),
    (b"\x00\x01\x02\x03", RawBytes),
])
def test_plain_http_and_other_bytes_are_told_apart(data, kind):
    decision = FirstBytes(65536).receive(data).decision
    assert isinstance(decision, kind) and decision.data == data


def test_a_method_alone_waits_for_more_bytes():
    sniffer = FirstBytes(65536)
    assert sniffer.receive(b"GE").decision is None
    assert sniffer.receive(b"T").decision is None
    assert isinstance(sniffer.receive(b" /x HTTP/1.1\r\n").decision, PlainHttp)


def test_bad_or_oversized_tls_is_one_refusal_without_an_http_answer():
    hello = openssl_hello()
    not_a_hello = hello[:5] + b"\x02" + hello[6:]            # a ServerHello type
    step = FirstBytes(65536).receive(not_a_hello)
    assert isinstance(step.decision, Refusal) and step.reply == b""
    assert step.decision.message.startswith("tls:")
    small = FirstBytes(len(hello) // 2).receive(hello)
    assert isinstance(small.decision, Refusal) and small.reply == b""


def test_a_reverse_listener_refuses_the_wrong_kind_with_a_400_when_http_is_spoken():
    step = FirstBytes(65536, "https", "origin.test:443").receive(b"GET / HTTP/1.1\r\n\r\n")
    assert step.reply.startswith(b"HTTP/1.1 400 ") and b"must speak TLS" in step.reply
    step = FirstBytes(65536, "http", "origin.test:80").receive(openssl_hello())
    assert step.reply == b"" and "must speak plain HTTP" in step.decision.message


# ---------------------------------------------------------------------------------- TLS decision
def never(host: str, port: int) -> bool:
    return False


def test_ignore_hosts_matches_the_sni_or_the_destination():
    pattern = re.compile(r"\.pinned\.test$")
    assert passthrough_before_plan("api.pinned.test", "10.0.0.1", 443, pattern, never) \
        == PassThrough("ignore-host")
    assert passthrough_before_plan(None, "cdn.pinned.test", 443, pattern, never) \
        == PassThrough("ignore-host")
    assert passthrough_before_plan("other.test", "10.0.0.1", 443, pattern, never) is None
    assert passthrough_before_plan("other.test", "10.0.0.1", 443, None, never) is None


def test_a_host_that_refused_our_certificate_is_passed_through_on_its_port_only():
    refused = {("app.test", 443)}
    def unterminable(host, port):
        return (host, port) in refused
    assert passthrough_before_plan("app.test", "10.0.0.1", 443, None, unterminable) \
        == PassThrough("unterminable")
    assert passthrough_before_plan("app.test", "10.0.0.1", 8443, None, unterminable) is None
    assert passthrough_before_plan(None, "app.test", 443, None, unterminable) \
        == PassThrough("unterminable")


def test_on_mismatch_decides_for_a_hello_the_emitter_cannot_send_exactly():
    plan = cached_relay_plan(read_client_hello(openssl_hello()))
    strict = decide_for_plan(plan.fidelity, "strict")
    assert isinstance(strict, StrictRefusal) and strict.stage == "strict"
    assert strict.message.startswith("refused (--on-mismatch strict): this ClientHello cannot "
                                     "be mirrored exactly: ")
    assert "ciphers: " in strict.message
    passthrough = decide_for_plan(plan.fidelity, "passthrough")
    assert isinstance(passthrough, PassThrough) and passthrough.reason == "on-mismatch"
    assert "ciphers: " in passthrough.differences
    warn = decide_for_plan(plan.fidelity, "warn")
    assert isinstance(warn, MirrorHello) and warn.differences == passthrough.differences
    for policy in ("strict", "passthrough", "warn"):     # replay sends the client's own hello
        assert decide_for_plan(plan.fidelity, policy, replayed=True) == MirrorHello()


@pytest.mark.parametrize("policy", ["strict", "warn", "passthrough"])
def test_a_hello_the_emitter_can_send_is_mirrored_whatever_the_policy(real_hellos, policy):
    plan = cached_relay_plan(read_client_hello(real_hellos["chrome"]))
    assert decide_for_plan(plan.fidelity, policy) == MirrorHello()


# ------------------------------------------------------------------------- bad input, answered
def refused_by(observer, data: bytes) -> WireError:
    """The error ``observer`` raises for the client's ``data``."""
    with pytest.raises(WireError) as caught:
        observer.feed(data)
    return caught.value


@pytest.mark.parametrize("stage, mode", [(Stage.FRONT, "http"), (Stage.PLAIN, "http"),
                                         (Stage.PLAIN, "transparent"), (Stage.PLAIN, "reverse")])
def test_bad_input_where_http1_is_spoken_gets_one_400_that_says_why(stage, mode):
    error = refused_by(Http1Observer(), b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    refusal, reply = bad_input_reply(error, stage, mode, None)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nX-Mirror-Error: parse\r\n" in reply and refusal.message.encode() in reply
    assert (refusal.stage, refusal.log_line) == ("parse", f"refused: {refusal.message}")


@pytest.mark.parametrize("stage, mode", [(Stage.FRONT, "socks5"), (Stage.FIRST, "http"),
                                         (Stage.FIRST, "transparent"), (Stage.RAW, "http")])
def test_bad_input_where_no_http_is_spoken_is_refused_without_an_answer(stage, mode):
    error = refused_by(Http1Observer(), b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    refusal, reply = bad_input_reply(error, stage, mode, None)
    assert reply == b"" and refusal.stage == "parse"


def test_bad_http1_inside_the_clients_tls_gets_a_400():
    observer = Http1Observer()
    error = refused_by(observer, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nBad\r\n\r\n")
    refusal, reply = bad_input_reply(error, Stage.TLS, "socks5", observer)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") and refusal.stage == "parse"


def test_bad_http2_inside_the_clients_tls_gets_a_goaway_naming_the_last_stream_and_the_error():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for stream in (1, 3):
        client.send_headers(stream, [(":method", "GET"), (":scheme", "https"),
                                     (":authority", "example.test"), (":path", "/")],
                            end_stream=True)
    observer = Http2Observer()
    observer.feed(client.data_to_send())
    # a HEADERS frame on stream 5 whose block is an HPACK index that does not exist
    error = refused_by(observer, b"\x00\x00\x01\x01\x05\x00\x00\x00\x05\xff")
    refusal, reply = bad_input_reply(error, Stage.TLS, "http", observer)
    frame, length = Frame.parse_frame_header(memoryview(reply[:9]))
    frame.parse_body(memoryview(reply[9:9 + length]))
    assert isinstance(frame, GoAwayFrame) and len(reply) == 9 + length
    assert frame.last_stream_id == 3
    assert frame.error_code == 0x9                               # COMPRESSION_ERROR
    assert frame.additional_data == refusal.message.encode()[:256]
    assert refusal.stage == "parse" and "hpack" in refusal.message.lower()

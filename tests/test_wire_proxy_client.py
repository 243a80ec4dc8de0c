"""The upstream-proxy tunnel handshake (client side): checked against mirror's own SOCKS5 and
CONNECT server-side parsers, against refusals, and against arbitrary proxy answers."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ_SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from mirror.wire import socks5
from mirror.wire.errors import WireError
from mirror.wire.http1 import parse_request_head
from mirror.wire.proxy_client import ProxyHandshake
from mirror.wire.proxy_request import parse_connect_target, proxy_authorization


@pytest.mark.parametrize("host", ["echo.test", "198.18.0.2", "fd00::2"])
def test_socks5_exchange_is_what_a_socks5_server_expects(host):
    client = ProxyHandshake("socks5h", host, 443, "alice", "pa:ss")
    greeting = socks5.parse_greeting(client.start())
    assert socks5.choose_method(greeting, require_auth=True) == socks5.METHOD_USERPASS
    auth = socks5.parse_userpass(client.feed(socks5.method_reply(socks5.METHOD_USERPASS)))
    assert (auth.username, auth.password) == (b"alice", b"pa:ss")
    request = socks5.parse_request(client.feed(socks5.userpass_reply(True)))
    assert (request.command, request.host, request.port) == (socks5.CMD_CONNECT, host, 443)
    assert client.feed(socks5.reply(socks5.REP_SUCCEEDED) + b"first tunnel bytes") == b""
    assert client.done and client.leftover == b"first tunnel bytes"


def test_connect_exchange_is_what_an_http_proxy_expects():
    client = ProxyHandshake("http", "echo.test", 8443, "alice", "secret")
    head = parse_request_head(client.start())
    assert head.method == "CONNECT"
    assert parse_connect_target(head.target) == ("echo.test", 8443)
    assert proxy_authorization(head) == ("alice", "secret")
    client.feed(b"HTTP/1.1 200 Connection established\r\n\r\nhello")
    assert client.done and client.leftover == b"hello"


@pytest.mark.parametrize(("scheme", "answers", "words"), [
    ("http", [b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"], "407"),
    ("socks5", [b"\x05\xff"], "none of the offered methods"),
    ("socks5", [b"\x05\x02", b"\x01\x01"], "refused the username/password"),
    ("socks5", [b"\x05\x02", b"\x01\x00", b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"],
     "connection refused"),
])
def test_refusals_name_the_reason_and_never_the_password(scheme, answers, words):
    client = ProxyHandshake(scheme, "echo.test", 443, "alice", "hunter2")
    client.start()
    with pytest.raises(WireError) as caught:
        for answer in answers:
            client.feed(answer)
    assert words in str(caught.value) and "hunter2" not in str(caught.value)
    assert caught.value.layer == "upstream-proxy"


@FUZZ_SETTINGS
@given(st.sampled_from(["http", "socks5", "socks5h"]), st.booleans(),
       st.lists(st.binary(max_size=64), max_size=6))
def test_any_proxy_answer_only_raises_wire_error(scheme, with_auth, answers):
    client = ProxyHandshake(scheme, "echo.test", 443, "u" if with_auth else None, "p")
    client.start()
    try:
        for answer in answers:
            client.feed(answer)
    except WireError:
        pass

"""Tests for mirror.wire.socks5: the server side of RFC 1928 / RFC 1929, from bytes."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading

import pytest
from fuzzing import FUZZ_SETTINGS, edits, mutate
from hypothesis import given
from hypothesis import strategies as st

from mirror.wire import socks5
from mirror.wire.errors import WireError
from mirror.wire.socks5 import (
    Greeting,
    Request,
    RequestError,
    UserPass,
    choose_method,
    method_reply,
    parse_greeting,
    parse_request,
    parse_userpass,
    reply,
    userpass_reply,
)

# A TLS record header and the start of a ClientHello, as pipelined after a request.
HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def request_bytes(command: int, address_type: int, address: bytes, port: int) -> bytes:
    """RFC 1928 §4 request, built field by field."""
    if address_type == 3:
        address = bytes([len(address)]) + address
    return bytes([5, command, 0, address_type]) + address + struct.pack("!H", port)


def assert_prefixes_incomplete(parse, message: bytes) -> None:
    for cut in range(len(message)):
        assert parse(message[:cut]) is None, cut


# ----------------------------------------------------------------------------- greeting


def test_greeting_no_auth_and_userpass_with_leftover():
    data = b"\x05\x02\x00\x02" + b"\x05\x01\x00"
    assert parse_greeting(data) == Greeting(methods=(0, 2), length=4)


def test_greeting_keeps_client_order_and_unknown_methods():
    greeting = parse_greeting(b"\x05\x04\x80\x02\x01\x00")
    assert greeting.methods == (0x80, 2, 1, 0)
    assert greeting.length == 6


def test_greeting_prefixes_need_more():
    assert_prefixes_incomplete(parse_greeting, b"\x05\x03\x00\x01\x02")


@pytest.mark.parametrize("data", [b"\x04", b"\x04\x01\x00", b"GET / HTTP/1.1\r\n", b"\x16\x03"])
def test_greeting_wrong_version_is_refused_from_the_first_byte(data):
    with pytest.raises(WireError) as info:
        parse_greeting(data)
    assert info.value.layer == "socks5"


def test_greeting_without_methods_is_refused():
    with pytest.raises(WireError, match="no authentication method"):
        parse_greeting(b"\x05\x00")


@pytest.mark.parametrize(
    ("methods", "require_auth", "expected"),
    [
        ((0,), False, 0x00),
        ((0, 2), False, 0x00),
        ((2, 0), False, 0x00),
        ((2,), False, 0x02),  # only user/pass offered: accept it even when not required
        ((1,), False, 0xFF),  # GSSAPI only
        ((0,), True, 0xFF),
        ((0, 2), True, 0x02),
        ((1, 0x80), True, 0xFF),
    ],
)
def test_choose_method(methods, require_auth, expected):
    assert choose_method(Greeting(methods, 2 + len(methods)), require_auth) == expected


def test_method_reply():
    assert method_reply(0) == b"\x05\x00"
    assert method_reply(2) == b"\x05\x02"
    assert method_reply(0xFF) == b"\x05\xff"
    with pytest.raises(ValueError):
        method_reply(256)


# ----------------------------------------------------------------------------- RFC 1929


def test_userpass_with_leftover():
    message = b"\x01\x04user\x06s3cr:t"
    assert parse_userpass(message + b"\x05\x01") == UserPass(b"user", b"s3cr:t", len(message))
    assert_prefixes_incomplete(parse_userpass, message)


def test_userpass_empty_password_and_binary_bytes_kept():
    assert parse_userpass(b"\x01\x01u\x00") == UserPass(b"u", b"", 4)
    assert parse_userpass(b"\x01\x02\xff\x00\x01\x80") == UserPass(b"\xff\x00", b"\x80", 6)


def test_userpass_wrong_version():
    with pytest.raises(WireError, match="not 1"):
        parse_userpass(b"\x05\x01\x00")


def test_userpass_reply():
    assert userpass_reply(True) == b"\x01\x00"
    assert userpass_reply(False)[0] == 1 and userpass_reply(False)[1] != 0


# ----------------------------------------------------------------------------- requests


def test_connect_ipv4_keeps_pipelined_client_hello():
    message = b"\x05\x01\x00\x01\xc6\x12\x00\x02\x01\xbb"  # 198.18.0.2:443
    data = message + HELLO_START
    result = parse_request(data)
    assert result == Request(command=1, host="198.18.0.2", port=443, address_type=1,
                             length=len(message))
    assert data[result.length :] == HELLO_START
    assert_prefixes_incomplete(parse_request, message)


def test_connect_ipv6_is_compressed():
    address = bytes.fromhex("20010db8000000000000000000000001")
    result = parse_request(request_bytes(1, 4, address, 8443))
    assert (result.host, result.port, result.address_type) == ("2001:db8::1", 8443, 4)
    assert result.length == 22


def test_connect_domain():
    message = request_bytes(1, 3, b"Example.COM", 443)
    result = parse_request(message + b"x")
    assert (result.host, result.port, result.address_type, result.length) == (
        "Example.COM", 443, 3, len(message))
    assert_prefixes_incomplete(parse_request, message)


def test_domain_idna_a_label_and_underscore_accepted():
    assert parse_request(request_bytes(1, 3, b"xn--bcher-kva.example", 80)).host == (
        "xn--bcher-kva.example")
    assert parse_request(request_bytes(1, 3, b"_dmarc.example.", 80)).host == "_dmarc.example."


@pytest.mark.parametrize("literal", [b"::1", b"[::1]", b"2001:DB8:0:0::1"])
def test_ipv6_literal_sent_as_domain_is_compressed(literal):
    host = parse_request(request_bytes(1, 3, literal, 443)).host
    assert host in ("::1", "2001:db8::1")


def test_longest_domain():
    name = b"a" * 255
    result = parse_request(request_bytes(1, 3, name, 443))
    assert result.host == "a" * 255 and result.length == 4 + 1 + 255 + 2


@pytest.mark.parametrize(
    "name",
    [b"exa\x00mple.com", b"exa mple.com", b"b\xc3\xbccher.example", b"a\r\nb", b"evil/../x",
     b"user@host", b"\x7f", b"a:b:zz", b"[::1"],
)
def test_unsafe_domain_names_are_refused(name):
    with pytest.raises(RequestError) as info:
        parse_request(request_bytes(1, 3, name, 443))
    assert info.value.reply_code == socks5.GENERAL_FAILURE
    assert info.value.layer == "socks5"


def test_bad_domain_byte_is_refused_before_the_request_is_complete():
    partial = b"\x05\x01\x00\x03\x20exa\x00"
    with pytest.raises(RequestError, match="0x00"):
        parse_request(partial)


def test_empty_domain_refused():
    with pytest.raises(RequestError, match="empty"):
        parse_request(b"\x05\x01\x00\x03\x00\x01\xbb")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x04\x01\x00\x01", socks5.GENERAL_FAILURE),
        (b"\x05\x04\x00\x01", socks5.COMMAND_NOT_SUPPORTED),
        (b"\x05\x00", socks5.COMMAND_NOT_SUPPORTED),
        (b"\x05\x01\x01\x01", socks5.GENERAL_FAILURE),
        (b"\x05\x01\x00\x02", socks5.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x00\x05\x7f\x00\x00\x01\x00\x50", socks5.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", socks5.GENERAL_FAILURE),  # CONNECT :0
    ],
)
def test_refused_requests_carry_a_reply_code(data, code):
    with pytest.raises(RequestError) as info:
        parse_request(data)
    assert info.value.reply_code == code
    assert isinstance(info.value, WireError)


def test_bind_and_udp_associate_are_parsed_for_the_caller_to_refuse():
    udp = parse_request(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
    assert (udp.command, udp.host, udp.port) == (socks5.CMD_UDP_ASSOCIATE, "0.0.0.0", 0)
    assert parse_request(request_bytes(2, 3, b"ftp.example", 20)).command == socks5.CMD_BIND


# ----------------------------------------------------------------------------- replies


def test_reply_ipv4_default():
    assert reply(socks5.REP_SUCCEEDED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"


def test_reply_ipv4_ipv6_and_domain():
    assert reply(socks5.CONNECTION_REFUSED, "198.18.0.1", 1080) == (
        b"\x05\x05\x00\x01\xc6\x12\x00\x01\x04\x38")
    assert reply(0, "::1", 443) == b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x01\xbb"
    assert reply(socks5.HOST_UNREACHABLE, "proxy.test", 80) == (
        b"\x05\x04\x00\x03\x0aproxy.test\x00\x50")


@pytest.mark.parametrize(
    ("code", "host", "port"),
    [(256, "0.0.0.0", 0), (-1, "0.0.0.0", 0), (0, "0.0.0.0", 65536), (0, "", 0),
     (0, "a" * 256, 0), (0, "bücher", 0)],
)
def test_reply_refuses_what_does_not_fit(code, host, port):
    with pytest.raises(ValueError):
        reply(code, host, port)


def test_reply_constants_follow_rfc_1928():
    codes = [socks5.REP_SUCCEEDED, socks5.GENERAL_FAILURE, socks5.NOT_ALLOWED,
             socks5.NETWORK_UNREACHABLE, socks5.HOST_UNREACHABLE, socks5.CONNECTION_REFUSED,
             socks5.TTL_EXPIRED, socks5.COMMAND_NOT_SUPPORTED, socks5.ADDRESS_TYPE_NOT_SUPPORTED]
    assert codes == list(range(9))
    assert (socks5.CMD_CONNECT, socks5.CMD_BIND, socks5.CMD_UDP_ASSOCIATE) == (1, 2, 3)


# ----------------------------------------------------------------------------- a real client


def _recv_until(conn: socket.socket, buffer: bytearray, parse):
    while True:
        result = parse(bytes(buffer))
        if result is not None:
            del buffer[: result.length]
            return result
        chunk = conn.recv(4096)
        if not chunk:
            raise AssertionError(f"client closed; got {bytes(buffer)!r}")
        buffer.extend(chunk)


def _run_socks_server(listener: socket.socket, require_auth: bool, seen: dict) -> None:
    conn, _ = listener.accept()
    conn.settimeout(5)
    with conn:
        buffer = bytearray()
        greeting = _recv_until(conn, buffer, parse_greeting)
        method = choose_method(greeting, require_auth)
        seen["greeting"] = greeting
        conn.sendall(method_reply(method))
        if method == socks5.METHOD_USERPASS:
            seen["userpass"] = _recv_until(conn, buffer, parse_userpass)
            conn.sendall(userpass_reply(True))
        seen["request"] = _recv_until(conn, buffer, parse_request)
        conn.sendall(reply(socks5.REP_SUCCEEDED, "127.0.0.1", 40000))
        while len(buffer) < 5:  # the tunnelled TLS record header
            buffer.extend(conn.recv(4096))
        seen["tunnel"] = bytes(buffer)


@pytest.mark.parametrize("require_auth", [False, True])
def test_curl_socks5_hostname_handshake(require_auth):
    """curl speaks SOCKS5 (remote DNS, user/pass when given) and then TLS through the tunnel."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict = {}
    thread = threading.Thread(target=_run_socks_server, args=(listener, require_auth, seen),
                              daemon=True)
    thread.start()
    credentials = "alice:pa%3Ass@" if require_auth else ""
    try:
        subprocess.run(
            ["curl", "-s", "-m", "3", "-x", f"socks5h://{credentials}127.0.0.1:{port}",
             "https://origin.example:8443/path"],
            capture_output=True, timeout=10, check=False,
        )
        thread.join(5)
    finally:
        listener.close()
    assert not thread.is_alive()
    request = seen["request"]
    assert (request.command, request.host, request.port, request.address_type) == (
        socks5.CMD_CONNECT, "origin.example", 8443, 3)
    assert seen["tunnel"][:2] == b"\x16\x03"  # a TLS handshake record, kept as leftover
    if require_auth:
        assert seen["userpass"].username == b"alice"
        assert seen["userpass"].password == b"pa:ss"
        assert socks5.METHOD_USERPASS in seen["greeting"].methods


# ----------------------------------------------------------------------------- properties

_PARSERS = [parse_greeting, parse_userpass, parse_request]


_edits = edits(1 << 10, max_size=6)
_SAMPLES = [
    b"\x05\x02\x00\x02",
    b"\x01\x05alice\x05s3cr3t",
    request_bytes(1, 1, bytes([198, 18, 0, 2]), 443) + HELLO_START,
    request_bytes(1, 3, b"www.example.com", 443),
    request_bytes(3, 4, bytes(range(16)), 53),
]


def _check_result(parse, data: bytes) -> None:
    try:
        result = parse(data)
    except WireError:
        return
    if result is not None:
        assert 0 < result.length <= len(data)
        # What was consumed is a complete message on its own; what follows is not needed.
        assert parse(data[: result.length]) == result
        assert parse(data[: result.length - 1]) is None


@FUZZ_SETTINGS
@given(st.sampled_from(_PARSERS), st.binary(max_size=300))
def test_random_bytes_only_raise_wire_error(parse, data):
    _check_result(parse, data)


@FUZZ_SETTINGS
@given(st.sampled_from(_PARSERS), st.sampled_from(_SAMPLES), _edits)
def test_mutated_messages_only_raise_wire_error(parse, sample, edits):
    _check_result(parse, mutate(sample, edits))


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                 min_size=1, max_size=20)
_domain = st.lists(_label, min_size=1, max_size=6).map(".".join).filter(lambda n: len(n) <= 255)
_address = st.one_of(
    st.ip_addresses(v=4).map(lambda a: (1, a.packed, str(a))),
    st.ip_addresses(v=6).map(lambda a: (4, a.packed, a.compressed)),
    _domain.map(lambda n: (3, n.encode(), n)),
)


@FUZZ_SETTINGS
@given(st.sampled_from([1, 2, 3]), _address, st.integers(1, 65535), st.binary(max_size=20))
def test_generated_requests_round_trip(command, address, port, tail):
    address_type, raw_address, host = address
    message = request_bytes(command, address_type, raw_address, port)
    result = parse_request(message + tail)
    assert result == Request(command=command, host=host, port=port, address_type=address_type,
                             length=len(message))
    assert_prefixes_incomplete(parse_request, message)


@FUZZ_SETTINGS
@given(st.integers(0, 255), _address, st.integers(0, 65535))
def test_replies_read_back_as_requests(code, address, port):
    """A reply has the request's layout (REP in CMD's place): parse it back with the CMD
    byte set to UDP ASSOCIATE, which allows port 0."""
    _type, _raw, host = address
    message = reply(code, host, port)
    assert message[:2] == bytes([5, code])
    parsed = parse_request(message[:1] + b"\x03" + message[2:])
    assert (parsed.host, parsed.port, parsed.length) == (host, port, len(message))


@FUZZ_SETTINGS
@given(st.lists(st.integers(0, 255), min_size=1, max_size=255), st.binary(max_size=10))
def test_generated_greetings_round_trip(methods, tail):
    message = bytes([5, len(methods), *methods])
    assert parse_greeting(message + tail) == Greeting(tuple(methods), len(message))


@FUZZ_SETTINGS
@given(st.binary(max_size=255), st.binary(max_size=255), st.binary(max_size=10))
def test_generated_userpass_round_trip(username, password, tail):
    message = bytes([1, len(username)]) + username + bytes([len(password)]) + password
    assert parse_userpass(message + tail) == UserPass(username, password, len(message))

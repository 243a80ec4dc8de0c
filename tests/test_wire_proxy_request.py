"""Tests for mirror.wire.proxy_request: CONNECT / absolute-form targets, forwarding, Basic auth."""

from __future__ import annotations

import base64
import socket
import subprocess
import threading

import pytest
from fuzzing import FUZZ_SETTINGS, edits, mutate
from hypothesis import assume, given
from hypothesis import strategies as st

from mirror.wire.errors import WireError
from mirror.wire.http1 import RequestHead, parse_request_head
from mirror.wire.proxy_request import (
    AbsoluteTarget,
    parse_connect_target,
    proxy_authorization,
    rewrite_request_for_origin,
    split_absolute_form,
)

# A browser-style proxied request: proxy headers in odd case and places, a duplicate
# header, obs-text in a value, OWS kept around values, and a body after the head.
PROXIED = (
    b"POST http://Shop.Example:8080/cart?id=7 HTTP/1.1\r\n"
    b"Host: Shop.Example:8080\r\n"
    b"proxy-connection: keep-alive\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"PROXY-AUTHORIZATION: Basic YWxpY2U6czNjcjN0\r\n"
    b"Accept-Language: fr-CH, fr;q=0.9\r\n"
    b"X-Name:\tcaf\xe9 \t\r\n"
    b"Cookie: a=1\r\n"
    b"Cookie: b=2\r\n"
    b"Proxy-Authenticate: Basic realm=x\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
)
FORWARDED = (
    b"POST /cart?id=7 HTTP/1.1\r\n"
    b"Host: Shop.Example:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Accept-Language: fr-CH, fr;q=0.9\r\n"
    b"X-Name:\tcaf\xe9 \t\r\n"
    b"Cookie: a=1\r\n"
    b"Cookie: b=2\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
)


def head_of(data: bytes) -> RequestHead:
    result = parse_request_head(data)
    assert result is not None
    return result


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


def auth_head(*values: str) -> RequestHead:
    lines = "".join(f"Proxy-Authorization: {v}\r\n" for v in values)
    return head_of(f"GET http://x.example/ HTTP/1.1\r\nHost: x.example\r\n{lines}\r\n"
                   .encode("latin-1"))


# ----------------------------------------------------------------------------- CONNECT


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("Example.COM:8443", ("Example.COM", 8443)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("xn--bcher-kva.example:65535", ("xn--bcher-kva.example", 65535)),
        ("[::1]:443", ("::1", 443)),
        ("[2001:DB8:0:0:0:0:0:1]:443", ("2001:db8::1", 443)),
        ("_srv.example.:0443", ("_srv.example.", 443)),
    ],
)
def test_connect_targets(target, expected):
    assert parse_connect_target(target) == expected


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("example.com", "no port"),
        ("example.com:", "empty port"),
        (":443", "empty host"),
        ("", "empty"),
        ("user@example.com:443", "userinfo"),
        ("user:pw@example.com:443", "userinfo"),
        ("example.com:443/path", "path"),
        ("http://example.com:443", "path"),
        ("example.com:0", "1-65535"),
        ("example.com:65536", "1-65535"),
        ("example.com:+443", "1-65535"),
        ("example.com:4 43", "1-65535"),
        ("example.com:١٢٣", "1-65535"),
        ("example.com:000000443", "1-65535"),
        ("[::1]", "no port"),
        ("[::1:443", "unclosed"),
        ("[::1]443", "junk"),
        ("[example.com]:443", "not an IPv6"),
        ("[fe80::1%25eth0]:443", "IPv6"),
        ("::1:443", "empty host"),
        ("exa mple.com:443", "not allowed"),
        ("bücher.example:443", "not allowed"),
        ("a\x00b:443", "not allowed"),
    ],
)
def test_bad_connect_targets(target, fragment):
    with pytest.raises(WireError, match=fragment) as info:
        parse_connect_target(target)
    assert info.value.layer == "http1"


# ----------------------------------------------------------------------------- absolute-form


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://example.com/path?q=1&r=%20",
         AbsoluteTarget("http", "example.com", 80, "/path?q=1&r=%20", "example.com")),
        ("https://example.com", AbsoluteTarget("https", "example.com", 443, "/", "example.com")),
        ("http://example.com?x=1", AbsoluteTarget("http", "example.com", 80, "/?x=1",
                                                  "example.com")),
        ("HTTP://Shop.Example:8080/a//b/",
         AbsoluteTarget("http", "Shop.Example", 8080, "/a//b/", "Shop.Example:8080")),
        ("https://[2001:db8::1]:8443/x",
         AbsoluteTarget("https", "2001:db8::1", 8443, "/x", "[2001:db8::1]:8443")),
        ("http://[::1]/", AbsoluteTarget("http", "::1", 80, "/", "[::1]")),
        ("http://198.18.0.2:80/", AbsoluteTarget("http", "198.18.0.2", 80, "/", "198.18.0.2:80")),
    ],
)
def test_absolute_form(target, expected):
    assert split_absolute_form(target) == expected


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("/index.html", "a proxy needs absolute-form"),
        ("/", "a proxy needs absolute-form"),
        ("*", "a proxy needs absolute-form"),
        ("example.com:443", "not absolute-form"),
        ("example.com/path", "not absolute-form"),
        ("ftp://example.com/", "unsupported scheme"),
        ("ws://example.com/", "unsupported scheme"),
        ("://example.com/", "not absolute-form"),
        ("http://user:pw@example.com/", "userinfo"),
        ("http://example.com@evil.example/", "userinfo"),
        ("http:///path", "empty host"),
        ("http://:80/", "empty host"),
        ("http://example.com:/", "empty port"),
        ("http://example.com:99999/", "1-65535"),
        ("http://example.com/#top", "fragment"),
        ("http://exa\tmple.com/", "visible ASCII"),
        ("http://bücher.example/", "visible ASCII"),
        ("http://[::1/", "unclosed"),
    ],
)
def test_not_absolute_http(target, fragment):
    with pytest.raises(WireError, match=fragment):
        split_absolute_form(target)


# ----------------------------------------------------------------------------- rewriting


def test_rewrite_drops_proxy_headers_and_keeps_everything_else():
    head = head_of(PROXIED + b"body")
    target = split_absolute_form(head.target)
    assert rewrite_request_for_origin(PROXIED + b"body", head, target.origin_form) == FORWARDED


def test_rewrite_without_headers_or_proxy_headers():
    raw = b"GET http://a.example HTTP/1.0\r\n\r\n"
    assert rewrite_request_for_origin(raw, head_of(raw), "/") == b"GET / HTTP/1.0\r\n\r\n"
    raw = b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\nX-Proxy-Connection: 1\r\n\r\n"
    assert rewrite_request_for_origin(raw, head_of(raw), "/x") == (
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-Proxy-Connection: 1\r\n\r\n")


def test_rewrite_host_header_replaced_in_place_when_asked():
    raw = (b"GET http://real.example:81/ HTTP/1.1\r\nAccept: */*\r\nhOST:  other.example \r\n"
           b"X: y\r\n\r\n")
    head = head_of(raw)
    target = split_absolute_form(head.target)
    assert rewrite_request_for_origin(raw, head, "/") == raw.replace(
        b"http://real.example:81/", b"/")
    assert rewrite_request_for_origin(raw, head, "/", host_header=target.host_header_value) == (
        b"GET / HTTP/1.1\r\nAccept: */*\r\nhOST:  real.example:81 \r\nX: y\r\n\r\n")


def test_rewrite_host_header_same_value_other_case_is_untouched():
    raw = b"GET http://A.example/ HTTP/1.1\r\nHost: a.EXAMPLE\r\n\r\n"
    assert rewrite_request_for_origin(raw, head_of(raw), "/", host_header="A.example") == (
        b"GET / HTTP/1.1\r\nHost: a.EXAMPLE\r\n\r\n")


def test_rewrite_adds_missing_host_first_when_asked():
    raw = b"GET http://a.example/ HTTP/1.0\r\nAccept: */*\r\n\r\n"
    assert rewrite_request_for_origin(raw, head_of(raw), "/", host_header="a.example") == (
        b"GET / HTTP/1.0\r\nHost: a.example\r\nAccept: */*\r\n\r\n")


def test_rewrite_options_asterisk():
    raw = b"OPTIONS http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n"
    assert rewrite_request_for_origin(raw, head_of(raw), "*").startswith(b"OPTIONS * HTTP/1.1\r\n")
    raw = raw.replace(b"OPTIONS", b"GET")
    with pytest.raises(WireError, match="only OPTIONS"):
        rewrite_request_for_origin(raw, head_of(raw), "*")


@pytest.mark.parametrize("origin_form", ["", "x", "/a b", "/a#b", "/caf\xe9", "http://a/"])
def test_rewrite_refuses_bad_origin_form(origin_form):
    with pytest.raises(WireError):
        rewrite_request_for_origin(PROXIED, head_of(PROXIED), origin_form)


def test_rewrite_refuses_raw_bytes_of_another_head():
    other = PROXIED.replace(b"Cookie: a=1", b"Cookie: a=2")
    with pytest.raises(WireError, match="do not match"):
        rewrite_request_for_origin(other, head_of(PROXIED), "/")
    with pytest.raises(WireError, match="do not match"):
        rewrite_request_for_origin(PROXIED[:-2], head_of(PROXIED), "/")


# ----------------------------------------------------------------------------- Basic auth


def test_proxy_authorization_basic():
    assert proxy_authorization(auth_head(basic(b"alice:s3cr3t"))) == ("alice", "s3cr3t")
    assert proxy_authorization(auth_head("basic   " + basic(b"a:b:c")[6:])) == ("a", "b:c")
    assert proxy_authorization(auth_head(basic(b"bob:"))) == ("bob", "")
    assert proxy_authorization(auth_head(basic(b":"))) == ("", "")
    assert proxy_authorization(auth_head(basic("jörg:pässword".encode()))) == ("jörg", "pässword")
    assert proxy_authorization(auth_head(basic("jörg:x".encode("latin-1")))) == ("jörg", "x")


def test_proxy_authorization_absent_or_other_scheme():
    assert proxy_authorization(auth_head()) is None
    assert proxy_authorization(auth_head('Digest username="a", realm="r"')) is None
    assert proxy_authorization(auth_head("Bearer abc.def")) is None


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (["Basic"], "not base64"),
        (["Basic !!!!"], "not base64"),
        (["Basic YWxpY2U6czNjcjN0="], "not valid base64"),  # wrong padding
        (["Basic YWxpY2U6czNjcjN"], "not valid base64"),
        (["Basic YR=="], "not valid base64"),  # non-zero trailing bits
        (["Basic YQ"], "not valid base64"),  # padding missing
        (["Basic YWxp Y2U6"], "not base64"),
        ([basic(b"alice")], "no ':'"),
        ([basic(b"al\x00ice:pw")], "control character"),
        ([basic(b"alice:pw\n")], "control character"),
        ([basic(b"a:b"), basic(b"c:d")], "more than one"),
    ],
)
def test_proxy_authorization_malformed(values, fragment):
    with pytest.raises(WireError, match=fragment):
        proxy_authorization(auth_head(*values))


# ----------------------------------------------------------------------------- a real client


def test_curl_through_an_http_proxy():
    """What curl sends to an HTTP proxy, taken apart and rewritten for the origin."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        with conn:
            while parse_request_head(bytes(received)) is None:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                received.extend(chunk)
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        subprocess.run(
            ["curl", "-s", "-m", "3", "-x", f"http://al%40ice:p%3Aw@127.0.0.1:{port}",
             "-H", "X-Mixed-Case: caf\u00e9", "http://Origin.Example:8080/a/b?q=1&r=%20"],
            capture_output=True, timeout=10, check=False,
        )
        thread.join(5)
    finally:
        listener.close()
    head = head_of(bytes(received))
    target = split_absolute_form(head.target)
    assert (target.scheme, target.host, target.port, target.origin_form) == (
        "http", "Origin.Example", 8080, "/a/b?q=1&r=%20")
    assert target.host_header_value == head.get("host") == "Origin.Example:8080"
    assert proxy_authorization(head) == ("al@ice", "p:w")
    forwarded = rewrite_request_for_origin(head.raw, head, target.origin_form,
                                           host_header=target.host_header_value)
    origin_head = head_of(forwarded)
    assert origin_head.target == "/a/b?q=1&r=%20"
    assert [n.lower() for n in head.header_names if not n.lower().startswith("proxy-")] == [
        n.lower() for n in origin_head.header_names]
    assert "proxy-connection" in [n.lower() for n in head.header_names]  # curl sent one
    assert b"X-Mixed-Case: caf\xc3\xa9\r\n" in forwarded
    assert b"roxy-" not in forwarded


# ----------------------------------------------------------------------------- properties



_interesting = st.sampled_from(list(b"\r\n :/@[]?#%.\x00\x7f\x80\xffAz09-"))
_edits = edits(1 << 12, st.one_of(st.integers(0, 255), _interesting))
CONNECT_HEAD = (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n"
                b"Proxy-Authorization: Basic YTpi\r\n\r\n")
_SAMPLE_HEADS = [PROXIED + b"body", CONNECT_HEAD]


def _exercise(head: RequestHead) -> None:
    """Every function on a parsed head; only WireError may escape."""
    for call in (
        lambda: parse_connect_target(head.target),
        lambda: split_absolute_form(head.target),
        lambda: proxy_authorization(head),
    ):
        try:
            call()
        except WireError:
            pass
    try:
        target = split_absolute_form(head.target)
    except WireError:
        return
    for host in (None, target.host_header_value):
        try:
            forwarded = rewrite_request_for_origin(head.raw, head, target.origin_form,
                                                   host_header=host)
        except WireError:
            continue
        again = head_of(forwarded)
        assert again.target == target.origin_form
        kept = [h for h in head.headers if h[0].lower() not in
                ("proxy-connection", "proxy-authorization", "proxy-authenticate")]
        if host is None:
            assert again.headers == kept


@FUZZ_SETTINGS
@given(st.text(max_size=80))
def test_random_targets_only_raise_wire_error(target):
    for parse in (parse_connect_target, split_absolute_form):
        try:
            parse(target)
        except WireError:
            pass


@FUZZ_SETTINGS
@given(st.sampled_from(_SAMPLE_HEADS), _edits)
def test_mutated_heads_only_raise_wire_error(sample, edits):
    try:
        head = parse_request_head(mutate(sample, edits))
    except WireError:
        return
    if head is not None:
        _exercise(head)


@FUZZ_SETTINGS
@given(st.sampled_from(["http://", "https://", "HTTP://", "CONNECT "]), st.binary(max_size=60),
       st.sampled_from([b"", b"Proxy-Authorization: ", b"Proxy-Authorization: Basic "]),
       st.binary(max_size=30))
def test_random_targets_and_credentials_in_heads(prefix, target, auth_prefix, auth):
    data = (b"GET " + prefix.encode() + target + b" HTTP/1.1\r\n" + auth_prefix + auth
            + (b"\r\n" if auth_prefix else b"") + b"\r\n")
    try:
        head = parse_request_head(data)
    except WireError:
        return
    if head is not None:
        _exercise(head)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                 min_size=1, max_size=15)
_reg_name = st.lists(_label, min_size=1, max_size=4).map(".".join)
_host = st.one_of(
    _reg_name.map(lambda n: (n, n)),
    st.ip_addresses(v=4).map(lambda a: (str(a), str(a))),
    st.ip_addresses(v=6).map(lambda a: (f"[{a.exploded}]", a.compressed)),
    st.ip_addresses(v=6).map(lambda a: (f"[{a.compressed.upper()}]", a.compressed)),
)
_pchar = st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:@%/", max_size=20)


@FUZZ_SETTINGS
@given(_host, st.integers(1, 65535))
def test_generated_connect_targets_round_trip(host, port):
    written, expected = host
    assert parse_connect_target(f"{written}:{port}") == (expected, port)


@FUZZ_SETTINGS
@given(st.sampled_from(["http", "https", "HTTPS"]), _host, st.one_of(st.none(),
       st.integers(1, 65535)), st.one_of(st.none(), _pchar), st.one_of(st.none(), _pchar))
def test_generated_absolute_targets_round_trip(scheme, host, port, path, query):
    written, expected_host = host
    authority = written if port is None else f"{written}:{port}"
    path_part = "" if path is None else "/" + path
    query_part = "" if query is None else "?" + query
    target = split_absolute_form(f"{scheme}://{authority}{path_part}{query_part}")
    assert target.scheme == scheme.lower()
    assert target.host == expected_host
    assert target.port == (port if port is not None else {"http": 80, "https": 443}[
        scheme.lower()])
    assert target.origin_form == (path_part or "/") + query_part
    assert target.host_header_value == authority


_token = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                 min_size=1, max_size=12)
_value = st.binary(max_size=20).map(
    lambda v: bytes(b for b in v if b == 0x09 or 0x20 <= b != 0x7F))
_proxy_name = st.sampled_from(["Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate"]
                              ).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper(),
                                                                   n.swapcase()]))


@FUZZ_SETTINGS
@given(
    st.lists(st.tuples(st.booleans(), _token, _proxy_name, _value, st.sampled_from(["", " ", "\t"])),
             max_size=15),
    st.sampled_from(["/", "/a?b", "/x/y/z?q=%20&r"]),
    st.binary(max_size=10),
)
def test_rewrite_keeps_non_proxy_lines_byte_identical_in_order(lines, origin_form, body):
    wire_lines, expected = [], []
    for is_proxy, name, proxy_name, value, ows in lines:
        if is_proxy:
            wire_lines.append(proxy_name.encode() + b":" + ows.encode() + value)
        else:
            assume(name.lower() not in ("host", "proxy-connection", "proxy-authorization",
                                        "proxy-authenticate"))
            line = name.encode() + b":" + ows.encode() + value
            wire_lines.append(line)
            expected.append(line)
    raw = b"\r\n".join([b"PUT http://h.example" + origin_form.encode() + b" HTTP/1.1",
                        *wire_lines]) + b"\r\n\r\n"
    head = head_of(raw + body)
    result = rewrite_request_for_origin(raw + body, head, origin_form)
    assert result == b"\r\n".join([b"PUT " + origin_form.encode() + b" HTTP/1.1",
                                   *expected]) + b"\r\n\r\n"


@FUZZ_SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF,
                                      blacklist_characters=":\x7f",
                                      blacklist_categories=("Cs",)), max_size=20),
       st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF,
                                      blacklist_characters="\x7f",
                                      blacklist_categories=("Cs",)), max_size=20))
def test_basic_credentials_round_trip(user, password):
    head = auth_head(basic(f"{user}:{password}".encode()))
    assert proxy_authorization(head) == (user, password)

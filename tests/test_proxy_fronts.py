"""The proxy's front doors on loopback, byte by byte: SOCKS5 negotiation (with and without
username/password), refused SOCKS5 requests, loops back into the proxy, and a transparent
listener reached without NAT. Each case checks the exact reply and that the proxy still serves."""

from __future__ import annotations

import json
import socket
import ssl
import struct

import pytest
from conftest import running_echo
from proxyrun import running_proxy

NAME = "echo.test"


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fronts")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(workdir / "proxy", modes=("http", "socks5", "transparent"),
                           extra=extra) as proxy:
            yield {"port": port, "proxy": proxy}


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def socks_request(host: str, port: int) -> bytes:
    name = host.encode()
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port)


def fetch_through_tunnel(sock: socket.socket, ca: str) -> dict:
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["http/1.1"])
    with context.wrap_socket(sock, server_hostname=NAME) as tls:
        tls.sendall(f"GET /fronts HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def test_socks5_username_password_is_negotiated_and_the_tunnel_works(bed):
    proxy = bed["proxy"]
    with socket.create_connection(("127.0.0.1", proxy.ports["socks5"]), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02")                      # only username/password offered
        assert recv_exactly(sock, 2) == b"\x05\x02"
        sock.sendall(b"\x01\x05alice\x06secret")
        assert recv_exactly(sock, 2) == b"\x01\x00"
        sock.sendall(socks_request(NAME, bed["port"]))
        assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
        report = fetch_through_tunnel(sock, str(proxy.ca_cert))
    assert report["tls"]["sni"] == NAME
    assert "secret" not in proxy.log_text()


@pytest.mark.parametrize(("request_bytes", "code"), [
    (b"\x05\x01\x00\x09\x7f\x00\x00\x01\x01\xbb", 8),      # unknown address type
    (b"\x05\x02\x00\x01\x7f\x00\x00\x01\x01\xbb", 7),      # BIND
])
def test_refused_socks5_requests_get_their_reply_code(bed, request_bytes, code):
    with socket.create_connection(("127.0.0.1", bed["proxy"].ports["socks5"]), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        sock.sendall(request_bytes)
        reply = recv_exactly(sock, 10)
        assert reply[:2] == bytes([5, code])
        assert sock.recv(1) == b""                          # then the connection closes


def test_a_socks5_request_for_the_proxy_itself_is_not_allowed(bed):
    port = bed["proxy"].ports["socks5"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", port))
        assert recv_exactly(sock, 10)[:2] == b"\x05\x02"


def test_a_connect_to_the_proxy_itself_is_refused_with_400(bed):
    port = bed["proxy"].ports["http"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"own listener" in response


def test_a_transparent_listener_reached_without_nat_closes_with_a_reason(bed):
    proxy = bed["proxy"]
    with socket.create_connection(("127.0.0.1", proxy.ports["transparent"]), timeout=10) as sock:
        assert sock.recv(1) == b""                          # closed before any byte is read
    assert "no original destination" in proxy.log_text() or "own listener" in proxy.log_text()
    # and the proxy goes on serving
    with socket.create_connection(("127.0.0.1", proxy.ports["socks5"]), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00" + socks_request(NAME, bed["port"]))
        assert recv_exactly(sock, 12)[:4] == b"\x05\x00\x05\x00"
        assert fetch_through_tunnel(sock, str(proxy.ca_cert))["tls"]["sni"] == NAME


def test_a_client_without_sni_gets_a_leaf_for_the_address(bed):
    from cryptography import x509

    proxy = bed["proxy"]
    with socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{bed['port']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_exactly(sock, 39).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        context.check_hostname = False                      # no SNI: checked by hand below
        with context.wrap_socket(sock) as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = tls.recv(65536)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # the echo server's own leaf has no IP in it, so the verified upstream refuses: a 502
    assert response.startswith(b"HTTP/1.1 502 ") and b"upstream-certificate" in response

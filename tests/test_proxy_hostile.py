"""Hostile clients against a running proxy on loopback: bad bytes on every layer, slow senders,
floods — each gets its exact outcome (status, GOAWAY code, closed connection, log line) while
well-behaved clients keep being served, and no file descriptor is left behind."""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import hpack
import pytest
from conftest import running_echo
from fidelity_helpers import NAME, last_id
from hyperframe.frame import ContinuationFrame, HeadersFrame, RstStreamFrame, SettingsFrame
from proxyrun import running_proxy

from mirror.wire.http2 import PREFACE

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1",
                 "--start-timeout", "2", "--idle-timeout", "10"]
        with running_proxy(workdir / "proxy", extra=extra) as proxy:
            yield {"proxy": proxy, "port": port, "echo_ca": echo_ca}


# ------------------------------------------------------------------ helpers
def connect_tunnel(bed) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", bed["proxy"].ports["http"]), timeout=10)
    sock.sendall(f"CONNECT {NAME}:{bed['port']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 200")
    return sock


def tls_tunnel(bed, alpn: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(bed["proxy"].ca_cert))
    context.set_alpn_protocols([alpn])
    tls = context.wrap_socket(connect_tunnel(bed), server_hostname=NAME)
    assert tls.selected_alpn_protocol() == alpn
    return tls


def read_all(sock, limit: float = 10.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        pass
    return data


def good_request(bed) -> int:
    from curl_cffi import requests

    with requests.Session(impersonate=random.choice(["chrome", "firefox", "safari"]),
                          verify=str(bed["proxy"].ca_cert), timeout=30,
                          proxy=bed["proxy"].url("http")) as session:
        return session.get(f"https://{NAME}:{bed['port']}/good").status_code


def client_hello_bytes() -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A real ClientHello (Python's ssl over memory BIOs) and the objects to finish with."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return obj, incoming, outgoing, outgoing.read()


# ------------------------------------------------------------------ TLS first bytes
def test_a_hello_in_one_byte_records_and_segments_is_served(bed):
    obj, incoming, outgoing, record = client_hello_bytes()
    handshake = record[5:]
    sock = connect_tunnel(bed)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in handshake:                                   # one record per byte ...
        for piece in b"\x16\x03\x01\x00\x01" + bytes([byte]):  # ... one segment per byte
            sock.send(bytes([piece]))
    sock.settimeout(10)
    while True:                                              # finish the handshake by hand
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out := outgoing.read():
                sock.sendall(out)
            incoming.write(sock.recv(65536))
    if out := outgoing.read():
        sock.sendall(out)
    obj.write(f"GET /one-byte HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
    sock.sendall(outgoing.read())
    response = b""
    while not response.startswith(b"HTTP/1.1 200") and len(response) < 100:
        incoming.write(sock.recv(65536))
        try:
            response += obj.read(65536)
        except ssl.SSLWantReadError:
            continue
    assert response.startswith(b"HTTP/1.1 200")
    sock.close()


@pytest.mark.parametrize(("first", "words"), [
    (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "not a ClientHello"),
    (b"\x16\x03\x01" + struct.pack("!H", 16384) + b"\x01" + struct.pack("!I", 70000)[1:]
     + bytes(16380) + (b"\x16\x03\x01" + struct.pack("!H", 16384) + bytes(16384)) * 4,
     "larger"),
    (b"\x16\x03\x01\x00\x09\x01\x00\x00\x20\x03\x03", "lengths"),   # then close: truncated
])
def test_bad_tls_first_bytes_close_the_connection_with_a_reason(bed, first, words):
    sock = connect_tunnel(bed)
    sock.sendall(first)
    if words == "lengths":
        sock.shutdown(socket.SHUT_WR)
    assert read_all(sock) == b""
    sock.close()


def test_duplicate_extensions_are_refused(bed):
    _, _, _, record = client_hello_bytes()
    hello = bytearray(record[5:])
    # append a second copy of the first extension (server_name): duplicates are refused
    pos = 4 + 2 + 32
    pos += 1 + hello[pos]
    pos += 2 + struct.unpack_from("!H", hello, pos)[0]
    pos += 1 + hello[pos]
    ext_len_at = pos
    first_ext = hello[pos + 2:pos + 2 + 4 + struct.unpack_from("!H", hello, pos + 4)[0]]
    hello += first_ext
    struct.pack_into("!H", hello, ext_len_at, struct.unpack_from("!H", hello, ext_len_at)[0]
                     + len(first_ext))
    hello[1:4] = (len(hello) - 4).to_bytes(3, "big")
    sock = connect_tunnel(bed)
    sock.sendall(b"\x16\x03\x01" + struct.pack("!H", len(hello)) + bytes(hello))
    assert read_all(sock) == b""
    sock.close()
    time.sleep(0.2)
    assert "(server_name) appears twice" in bed["proxy"].log_text()


# ------------------------------------------------------------------ HTTP/1
SMUGGLING = [
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
     b"more than one Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     b"chunk"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", b"obs-fold"),
    (b"GET / HTTP/1.1\nHost: x\n\n", b"bare"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", b"more than 100 header"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n", b"larger than"),
]


@pytest.mark.parametrize(("request_bytes", "words"), SMUGGLING,
                         ids=["cl+te", "two-cl", "bad-chunk", "obs-fold", "bare-lf",
                              "too-many-headers", "oversized-head"])
def test_ambiguous_or_oversized_http1_gets_400_and_is_not_forwarded(bed, request_bytes, words):
    tls = tls_tunnel(bed, "http/1.1")
    tls.sendall(request_bytes)
    response = read_all(tls)
    tls.close()
    assert response.startswith(b"HTTP/1.1 400 "), response[:200]
    assert b"X-Mirror-Error: parse" in response and words.lower() in response.lower()


# ------------------------------------------------------------------ HTTP/2
def h2_frames(tls) -> list[tuple[int, bytes]]:
    data = read_all(tls)
    frames, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        frames.append((data[pos + 3], data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return frames


def goaway_code(frames) -> int | None:
    codes = [struct.unpack("!II", payload[:8])[1] for kind, payload in frames if kind == 7]
    return codes[-1] if codes else None


def request_block(encoder: hpack.Encoder, stream: int) -> bytes:
    return encoder.encode([(":method", "GET"), (":authority", NAME), (":scheme", "https"),
                           (":path", f"/s{stream}")])


def test_continuation_flood_gets_goaway_enhance_your_calm(bed):
    tls = tls_tunnel(bed, "h2")
    block = request_block(hpack.Encoder(), 1)
    head = HeadersFrame(1, data=block[:1])
    out = PREFACE + SettingsFrame(0).serialize() + head.serialize()
    for _ in range(40):
        out += ContinuationFrame(1, data=b"\x00" * 10).serialize()
    tls.sendall(out)
    assert goaway_code(h2_frames(tls)) == 0xB
    tls.close()


def test_hpack_bomb_gets_goaway(bed):
    tls = tls_tunnel(bed, "h2")
    encoder = hpack.Encoder()
    headers = [(":method", "GET"), (":authority", NAME), (":scheme", "https"), (":path", "/")]
    headers += [("x-bomb", "a" * 4000)] * 40               # 160 KB decoded
    frame = HeadersFrame(1, data=encoder.encode(headers), flags=["END_HEADERS", "END_STREAM"])
    tls.sendall(PREFACE + SettingsFrame(0).serialize() + frame.serialize())
    assert goaway_code(h2_frames(tls)) in (0x9, 0xB)
    tls.close()


def test_rapid_reset_gets_goaway_enhance_your_calm(bed):
    tls = tls_tunnel(bed, "h2")
    encoder = hpack.Encoder()
    out = bytearray(PREFACE + SettingsFrame(0).serialize())
    for stream in range(1, 2 * 1100, 2):
        out += HeadersFrame(stream, data=request_block(encoder, stream),
                            flags=["END_HEADERS", "END_STREAM"]).serialize()
        out += RstStreamFrame(stream, error_code=8).serialize()
    tls.sendall(bytes(out))
    assert goaway_code(h2_frames(tls)) == 0xB
    tls.close()


def test_settings_flood_gets_goaway_enhance_your_calm(bed):
    tls = tls_tunnel(bed, "h2")
    tls.sendall(PREFACE + SettingsFrame(0, settings={4: 65535}).serialize() * 1200)
    assert goaway_code(h2_frames(tls)) == 0xB
    tls.close()


# ------------------------------------------------------------------ slow clients
def test_a_trickled_proxy_request_times_out(bed):
    sock = socket.create_connection(("127.0.0.1", bed["proxy"].ports["http"]), timeout=10)
    started = time.monotonic()
    request = b"CONNECT echo.test:443 HTTP/1.1\r\nHost: x\r\n\r\n"
    closed = False
    for byte in request:
        try:
            sock.send(bytes([byte]))
        except OSError:
            closed = True
            break
        time.sleep(0.25)
    if not closed:
        assert read_all(sock) == b""
    assert time.monotonic() - started < 9                  # the 2 s start timeout, not 11 s
    sock.close()


def test_a_stalled_tls_handshake_times_out(bed):
    _, _, _, record = client_hello_bytes()
    sock = connect_tunnel(bed)
    sock.sendall(record)                                   # hello, then never the Finished
    started = time.monotonic()
    read_all(sock, limit=10)
    assert time.monotonic() - started < 8
    sock.close()


# ------------------------------------------------------------------ storms
def _hostile(bed, kind: int) -> None:
    try:
        if kind == 0:
            with socket.create_connection(("127.0.0.1", bed["proxy"].ports["http"]), timeout=5) as s:
                s.sendall(os.urandom(200))
                read_all(s, 5)
        elif kind == 1:
            with socket.create_connection(("127.0.0.1", bed["proxy"].ports["socks5"]), timeout=5) as s:
                s.sendall(b"\x05\x01\x00\x05\x09" + os.urandom(30))
                read_all(s, 5)
        elif kind == 2:
            sock = connect_tunnel(bed)
            sock.sendall(b"\x16\x03\x01\xff\xff" + os.urandom(100))
            sock.close()
        else:
            tls = tls_tunnel(bed, "http/1.1")
            tls.sendall(SMUGGLING[0][0])
            read_all(tls, 5)
            tls.close()
    except OSError:
        pass


def test_a_storm_of_hostile_clients_does_not_fail_good_requests(bed):
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            _hostile(bed, random.randrange(4))

    attackers = [threading.Thread(target=storm, daemon=True) for _ in range(12)]
    for thread in attackers:
        thread.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: good_request(bed), range(60)))
    finally:
        stop.set()
        for thread in attackers:
            thread.join(15)
    assert statuses == [200] * 60


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_ten_thousand_failed_connections_leave_no_descriptor_behind(bed):
    pid = bed["proxy"].process.pid
    good_request(bed)
    time.sleep(0.5)
    baseline = open_fds(pid)
    port = bed["proxy"].ports["http"]
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    closed_port = refused.getsockname()[1]
    refused.close()

    def fail_front(_: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"NOT A PROXY REQUEST\r\n\r\n")
                read_all(s, 5)
        except OSError:
            pass

    def fail_upstream(_: int) -> None:                     # TLS, then a refused upstream: 502
        try:
            context = ssl.create_default_context(cafile=str(bed["proxy"].ca_cert))
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(f"CONNECT 127.0.0.1:{closed_port} HTTP/1.1\r\n\r\n".encode())
                raw.recv(100)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert read_all(tls, 5).startswith(b"HTTP/1.1 502")
        except (OSError, ssl.SSLError):
            pass

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(fail_front, range(9700)))
        list(pool.map(fail_upstream, range(300)))
    deadline = time.monotonic() + 15
    while open_fds(pid) > baseline + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_fds(pid) <= baseline + 2, (baseline, open_fds(pid))
    assert good_request(bed) == 200


def test_sigterm_under_load_drains_and_keeps_every_capture(tmp_path):
    with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
            bed = {"proxy": proxy, "port": port}
            before = last_id(proxy.store)
            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                futures = [pool.submit(good_request, bed) for _ in range(30)]
                time.sleep(0.3)
                proxy.process.send_signal(signal.SIGTERM)
                results = []
                for future in futures:
                    try:
                        results.append(future.result())
                    except Exception as error:    # noqa: BLE001 - refused after the listener closed
                        results.append(type(error).__name__)
            assert proxy.process.wait(20) == 0
            served = results.count(200)
            assert served >= 1
            # every request that was served has its capture (nothing lost on the way out)
            out = subprocess.run([sys.executable, "-m", "mirror", "captures", "list", "--json",
                                  "--limit", "0", "--store", str(proxy.store)],
                                 capture_output=True, text=True, check=True).stdout
            assert out.count('"id"') - before >= served


def test_a_bare_cr_in_a_head_gets_400(bed):
    tls = tls_tunnel(bed, "http/1.1")
    tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n")
    response = read_all(tls)
    tls.close()
    assert response.startswith(b"HTTP/1.1 400 ") and b"bare CR or LF" in response


def test_an_invalid_h2_frame_size_gets_goaway_frame_size_or_protocol_error(bed):
    tls = tls_tunnel(bed, "h2")
    tls.sendall(PREFACE + b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)  # SETTINGS of 5
    assert goaway_code(h2_frames(tls)) in (0x1, 0x6)
    tls.close()


def test_an_unknown_host_gets_502_upstream_dns(bed):
    context = ssl.create_default_context(cafile=str(bed["proxy"].ca_cert))
    with socket.create_connection(("127.0.0.1", bed["proxy"].ports["http"]), timeout=10) as raw:
        raw.sendall(b"CONNECT no-such-host.invalid:443 HTTP/1.1\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 200")
        with context.wrap_socket(raw, server_hostname="no-such-host.invalid") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: no-such-host.invalid\r\n\r\n")
            response = read_all(tls)
    assert response.startswith(b"HTTP/1.1 502 ") and b"X-Mirror-Error: upstream-dns" in response


def test_head_limits_are_configurable(tmp_path):
    with running_proxy(tmp_path / "proxy", modes=("http",),
                       extra=["--max-headers", "5", "--max-head-size", "2048"]) as proxy:
        for request, words in (
                (b"GET http://a.test/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 6 + b"\r\n", b"more than 5"),
                (b"GET http://a.test/ HTTP/1.1\r\nX-A: " + b"a" * 3000 + b"\r\n\r\n", b"2048")):
            with socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=10) as s:
                s.sendall(request)
                response = read_all(s)
            assert response.startswith(b"HTTP/1.1 400 ") and words in response, response[:300]

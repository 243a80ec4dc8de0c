"""The replay engine against real TLS servers on loopback, with the hellos of real clients.

Each run: the client's hello is replayed through a recording relay to the server, the handshake
completes, an HTTP request goes up and the server's answer comes back. What reached the server
is compared with the client's own hello: equal on every field but the fresh ones.
"""

from __future__ import annotations

import pytest
from replay_hello_checks import assert_same_but_fresh
from replay_pki import Pki
from replay_servers import (
    NAME,
    Recorder,
    build_go,
    client_hellos,
    gnutls_server,
    go_server,
    nginx_server,
    openssl_server,
    python_server,
    run_replay,
)

from mirror.replay.errors import ReplayError
from mirror.wire.tls import read_client_hello

TLS12_CODES = {"ECDHE-RSA-AES128-GCM-SHA256": 0xC02F, "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
               "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
               "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8, "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
               "ECDHE-RSA-AES256-GCM-SHA384": 0xC030}
CLIENTS = ["chrome", "firefox", "safari", "curl", "python", "gnutls", "go", "node", "java"]


@pytest.fixture(scope="module")
def certs(pki, tmp_path_factory):
    """PEM (cert, key) paths for leaves of several key types, all for example.test."""
    directory = tmp_path_factory.mktemp("replay-certs")
    return {kind: Pki.write(directory, *pki.leaf(kind=kind), stem=kind)
            for kind in ("p256", "p384", "rsa", "ed25519")}


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory):
    return build_go(tmp_path_factory.mktemp("replay-go"))


@pytest.fixture(scope="module")
def hellos(go_binary):
    return client_hellos(go_binary)


def replay_through(port: int, flight: bytes, pki: Pki, **config):
    """run_replay via a Recorder; asserts the server saw the client's hello (fresh fields aside)."""
    with Recorder(port) as recorder:
        complete, reply = run_replay(recorder.port, flight, trust=[pki.cert], **config)
    seen = read_client_hello(bytes(recorder.streams[0]))
    assert_same_but_fresh(read_client_hello(flight), seen)
    return complete, reply


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_against_openssl_tls13(client, hellos, certs, pki):
    with openssl_server(*certs["p256"]) as port:
        complete, reply = replay_through(port, hellos[client], pki)
    assert complete.version == 0x0304
    assert reply.startswith(b"HTTP/1.0 200 ok")
    assert [c.subject for c in complete.peer_chain][-1] == pki.cert.subject


@pytest.mark.parametrize("cert,options,suite,group", [
    ("rsa", ["-groups", "P-256"], "TLS_AES_256_GCM_SHA384", 0x0017),       # via HRR
    ("p384", ["-groups", "P-384"], "TLS_AES_256_GCM_SHA384", 0x0018),      # via HRR
    ("ed25519", ["-groups", "x448"], "TLS_AES_256_GCM_SHA384", 0x001E),    # via HRR
    ("rsa", ["-groups", "ffdhe2048"], "TLS_AES_256_GCM_SHA384", 0x0100),   # via HRR
    ("rsa", ["-groups", "ffdhe3072"], "TLS_AES_256_GCM_SHA384", 0x0101),   # via HRR
    ("rsa", ["-groups", "ffdhe4096"], "TLS_AES_256_GCM_SHA384", 0x0102),   # via HRR
    ("rsa", ["-groups", "ffdhe6144"], "TLS_AES_256_GCM_SHA384", 0x0103),   # via HRR
    ("rsa", ["-groups", "ffdhe8192"], "TLS_AES_256_GCM_SHA384", 0x0104),   # via HRR
    ("p256", ["-groups", "P-521"], "TLS_AES_256_GCM_SHA384", 0x0019),      # via HRR
    ("p256", ["-ciphersuites", "TLS_AES_128_GCM_SHA256"], "TLS_AES_128_GCM_SHA256", 0x001D),
    ("p256", ["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
     "TLS_CHACHA20_POLY1305_SHA256", 0x001D),
    ("rsa", ["-ciphersuites", "TLS_AES_128_CCM_SHA256"], "TLS_AES_128_CCM_SHA256", 0x001D),
    ("rsa", ["-ciphersuites", "TLS_AES_128_CCM_8_SHA256"], "TLS_AES_128_CCM_8_SHA256", 0x001D),
])
def test_openssl_groups_and_suites(cert, options, suite, group, hellos, certs, pki):
    flight = hellos["curl"]
    if "CCM" in suite:  # no stock client offers CCM: add both CCM suites to curl's list
        flight = with_ccm(flight)
    with openssl_server(*certs[cert], *options) as port:
        complete, reply = replay_through(port, flight, pki)
    assert (complete.cipher_name, complete.group) == (suite, group)
    assert reply.startswith(b"HTTP/1.0 200 ok")


def with_ccm(flight: bytes) -> bytes:
    """curl's hello with TLS_AES_128_CCM_SHA256 and TLS_AES_128_CCM_8_SHA256 appended."""
    hello = read_client_hello(flight)
    raw = hello.raw
    at = 4 + 2 + 32 + 1 + len(hello.session_id)
    count = int.from_bytes(raw[at:at + 2], "big")
    body = (raw[4:at] + (count + 4).to_bytes(2, "big") + raw[at + 2:at + 2 + count]
            + b"\x13\x04\x13\x05" + raw[at + 2 + count:])
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


@pytest.mark.parametrize("client,cert,cipher", [
    ("chrome", "rsa", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("firefox", "p256", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("curl", "rsa", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("go", "p256", "ECDHE-ECDSA-CHACHA20-POLY1305"),      # Go offers no extended_master_secret
    ("gnutls", "rsa", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("java", "p256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("node", "rsa", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("curl-tls1.2", "rsa", "ECDHE-RSA-AES128-GCM-SHA256"),
])
def test_openssl_tls12(client, cert, cipher, hellos, certs, pki):
    with openssl_server(*certs[cert], "-tls1_2", "-cipher", cipher) as port:
        complete, reply = replay_through(port, hellos[client], pki)
    assert complete.version == 0x0303
    assert complete.cipher == TLS12_CODES[cipher]
    assert reply.startswith(b"HTTP/1.0 200 ok")


@pytest.mark.parametrize("cipher", ["AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256",
                                    "DHE-RSA-AES128-GCM-SHA256"])
def test_tls12_cbc_or_rsa_kex_needs_boringssl(cipher, hellos, certs, pki):
    with openssl_server(*certs["rsa"], "-tls1_2", "-cipher", cipher) as port, \
            pytest.raises(ReplayError) as error:
        run_replay(port, hellos["curl"], trust=[pki.cert])
    assert error.value.reason == "needs-boringssl"


@pytest.mark.parametrize("client", ["chrome", "curl", "go"])
@pytest.mark.parametrize("tls12", [False, True])
def test_python_ssl_server(client, tls12, hellos, certs, pki):
    import ssl

    version = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
    with python_server(*certs["rsa"], max_version=version) as port:
        complete, reply = replay_through(port, hellos[client], pki,
                                         request=b"GET /x HTTP/1.0\r\nHost: example.test\r\n\r\n")
    assert complete.version == (0x0303 if tls12 else 0x0304)
    assert complete.alpn == ("http/1.1" if read_client_hello(hellos[client]).alpn else None)
    assert reply.endswith(b"python got 39 bytes")


@pytest.mark.parametrize("client", ["firefox", "gnutls", "python"])
@pytest.mark.parametrize("priority", ["NORMAL", "NORMAL:-VERS-TLS1.3"])
def test_gnutls_server(client, priority, hellos, certs, pki):
    with gnutls_server(*certs["p256"], "--priority", priority) as port:
        complete, reply = replay_through(port, hellos[client], pki)
    assert complete.version == (0x0304 if priority == "NORMAL" else 0x0303)
    assert b"200 OK" in reply and b"GnuTLS" in reply


@pytest.mark.parametrize("client", ["chrome", "safari", "go", "curl"])
def test_go_server(client, hellos, certs, pki, go_binary):
    with go_server(go_binary, *certs["ed25519" if client in ("go", "curl") else "rsa"]) as port:
        complete, reply = replay_through(port, hellos[client], pki,
                                         request=b"GET /replayed HTTP/1.1\r\nHost: example.test\r\n"
                                                 b"Connection: close\r\n\r\n")
    assert complete.version == 0x0304
    assert reply.endswith(b"go says hello to /replayed")


def test_records_keep_the_clients_plaintext_lengths(hellos, certs, pki):
    sizes = [3, 100, 1, 40]
    request = b"GET / HTTP/1.0\r\n" + b"X-Pad: " + b"a" * 121 + b"\r\n\r\n"
    assert len(request) == sum(sizes) + 4
    with openssl_server(*certs["p256"]) as port, Recorder(port) as recorder:
        run_replay(recorder.port, hellos["curl"], request=request, record_sizes=sizes,
                   trust=[pki.cert])
    stream = bytes(recorder.streams[0])
    lengths, pos = [], 0
    while pos < len(stream):
        lengths.append((stream[pos], int.from_bytes(stream[pos + 3:pos + 5], "big")))
        pos += 5 + lengths[-1][1]
    app = [length - 17 for kind, length in lengths if kind == 23]  # AES-GCM tag + type byte
    # after the client Finished: the request in the given sizes, the rest in one record
    assert app[1:] == [*sizes, 4]


def test_records_sealed_into_a_reused_buffer(hellos, certs, pki):
    """``send_into(buffer, ...)`` grows a too small buffer and seals there what goes on the
    wire, in the client's record sizes, and the server reads the request from it."""
    sizes = [5, 1000, 17]
    request = b"GET / HTTP/1.0\r\n" + b"X-Pad: " + b"b" * 1000 + b"\r\n\r\n"
    buffer = bytearray(8)
    with openssl_server(*certs["p256"]) as port, Recorder(port) as recorder:
        _, reply = run_replay(recorder.port, hellos["curl"], request=request,
                              record_sizes=sizes, trust=[pki.cert], seal_into=buffer)
    assert b"200 ok" in reply.lower()
    sealed = len(request) + 4 * (5 + 1 + 16)   # three records in the given sizes, one rest
    assert len(buffer) == sealed
    stream = bytes(recorder.streams[0])
    assert stream.endswith(bytes(buffer))
    lengths, pos = [], len(stream) - sealed
    while pos < len(stream):
        lengths.append(int.from_bytes(stream[pos + 3:pos + 5], "big") - 17)
        pos += 5 + lengths[-1] + 17
    assert lengths == [*sizes, len(request) - sum(sizes)]


def test_ip_address_names_are_checked(pki, tmp_path, hellos):
    cert, key = Pki.write(tmp_path, *pki.leaf(names=("127.0.0.1",)))
    with openssl_server(cert, key) as port:
        complete, _ = run_replay(port, hellos["go"], trust=[pki.cert], server_name="127.0.0.1")
        assert complete.version == 0x0304
        with pytest.raises(ReplayError) as error:
            run_replay(port, hellos["go"], trust=[pki.cert], server_name="127.0.0.2")
    assert error.value.reason == "certificate"
    assert NAME not in str(error.value)


def ocsp_response(pki: Pki, cert) -> bytes:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    now = dt.datetime.now(dt.UTC)
    builder = (ocsp.OCSPResponseBuilder()
               .add_response(cert=cert, issuer=pki.cert, algorithm=hashes.SHA256(),
                             cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now,
                             next_update=now + dt.timedelta(days=1), revocation_time=None,
                             revocation_reason=None)
               .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.cert))
    return builder.sign(pki.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_stapled_ocsp_response_parsed(version, pki, tmp_path, hellos):
    cert, key = pki.leaf()
    cert_path, key_path = Pki.write(tmp_path, cert, key)
    response = ocsp_response(pki, cert)
    (tmp_path / "ocsp.der").write_bytes(response)
    with openssl_server(cert_path, key_path, version, "-status_file",
                        str(tmp_path / "ocsp.der")) as port:
        complete, reply = run_replay(port, hellos["chrome"], trust=[pki.cert])
    assert complete.ocsp_response == response
    assert reply.startswith(b"HTTP/1.0 200 ok")


def without_session_id(flight: bytes) -> bytes:
    """The hello with an empty legacy_session_id (as a client without middlebox mode sends)."""
    hello = read_client_hello(flight)
    raw = hello.raw
    body = raw[4:38] + b"\x00" + raw[39 + len(hello.session_id):]
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def record_types(stream: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 5 <= len(stream):
        out.append(stream[pos])
        pos += 5 + int.from_bytes(stream[pos + 3:pos + 5], "big")
    return out


@pytest.mark.parametrize("groups", ["x25519", "P-384"])  # P-384: after a HelloRetryRequest
def test_middlebox_ccs_only_when_the_client_sends_a_session_id(groups, hellos, certs, pki):
    with openssl_server(*certs["p256"], "-groups", groups) as port:
        for flight, ccs in ((hellos["curl"], 1), (without_session_id(hellos["curl"]), 0)):
            with Recorder(port) as recorder:
                complete, _ = run_replay(recorder.port, flight, trust=[pki.cert])
            assert complete.version == 0x0304
            assert record_types(bytes(recorder.streams[0])).count(20) == ccs


@pytest.mark.parametrize("client", ["chrome", "firefox", "curl", "gnutls"])
@pytest.mark.parametrize("protocols", ["TLSv1.3", "TLSv1.2"])
def test_nginx(client, protocols, hellos, certs, pki, tmp_path):
    """h2 for the clients that offer it (a request then GOAWAY), HTTP/1.1 for the others."""
    import h2.connection
    import h2.events

    h2_offered = b"h2" in read_client_hello(hellos[client]).alpn_raw
    conn = h2.connection.H2Connection()
    if h2_offered:
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", "/nginx"),
                              (":authority", NAME)], end_stream=True)
        from hyperframe.frame import GoAwayFrame

        request = conn.data_to_send() + GoAwayFrame(0).serialize()
    else:
        request = b"GET /nginx HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
    expected = f"nginx says hello to /nginx over {protocols}".encode()
    with nginx_server(*certs["rsa"], tmp_path, protocols=protocols) as port:
        complete, reply = replay_through(port, hellos[client], pki, request=request,
                                         until=lambda reply: expected in reply)
    assert complete.alpn == ("h2" if h2_offered else None)
    if h2_offered:
        events = conn.receive_data(reply)
        reply = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert reply.endswith(expected)

"""Hostile and unusual servers: every check of the replay engine refuses what it must, with a
clear reason, and the features real servers here lack (ML-KEM, compressed certificates,
KeyUpdate, record_size_limit, certificate requests) work against a crafted server.
"""

from __future__ import annotations

import datetime as dt
import struct

import pytest
from conftest import capture_client_hello
from replay_hostile import BULK_BODY, BULK_HEAD, HALF_RTT, HostileServer, ext
from replay_pki import Pki
from replay_servers import NAME, openssl_server, run_replay

from mirror.replay.errors import ReplayError


@pytest.fixture(scope="module")
def flights():
    return {family: capture_client_hello(family, NAME) for family in ("chrome", "firefox")}


def against(pki, leaf, flights, faults=(), client="chrome", request=b"GET / HTTP/1.0\r\n\r\n",
            config=None, **options):
    """(HandshakeComplete, reply, server) of a replayed hello against a HostileServer."""
    server = HostileServer(*leaf, set(faults), **options)
    try:
        complete, reply = run_replay(server.port, flights[client], request, trust=[pki.cert],
                                     **(config or {}))
    finally:
        server.close()
    return complete, reply, server


def refused(pki, leaf, flights, faults=(), client="chrome", **options) -> ReplayError:
    with pytest.raises(ReplayError) as error:
        against(pki, leaf, flights, faults, client, **options)
    return error.value


@pytest.mark.parametrize("into", [0, 262144, 20000, 100])
@pytest.mark.parametrize("padded", [False, True])
def test_bulk_response_received_whole_and_in_order(into, padded, pki, leaf, flights):
    """Full records decrypted straight into a buffer (``receive_into``, as the relay reads) or
    as events, whichever way they fit, padded or not: the same bytes in the same order."""
    faults = {"bulk", "padded"} if padded else {"bulk"}
    _, reply, _ = against(pki, leaf, flights, faults, config={"into": into} if into else None)
    assert reply == BULK_HEAD + BULK_BODY


@pytest.mark.parametrize("into", [0, 262144, 20000])
def test_tampered_record_in_a_bulk_response_refused(into, pki, leaf, flights):
    error = refused(pki, leaf, flights, {"bulk", "tampered"},
                    config={"into": into} if into else None)
    assert error.reason == "bad-record-mac", str(error)


def test_crafted_server_baseline(pki, leaf, flights):
    complete, reply, server = against(pki, leaf, flights, group=0x001D)
    assert reply.endswith(b"hostile but fine")
    assert server.seen["client_finished_ok"] and server.seen["request"].startswith(b"GET / ")
    assert complete.group == 0x001D


@pytest.mark.parametrize("into", [0, 262144])
def test_half_rtt_data_comes_after_the_handshake(into, pki, leaf, flights):
    """0.5-RTT data (RFC 8446 2), sent with the server's flight under its application keys
    before it has the client's Finished: given after HandshakeComplete, ahead of the reply."""
    _, reply, server = against(pki, leaf, flights, {"half-rtt"},
                               config={"into": into} if into else None)
    assert reply.startswith(HALF_RTT) and reply.endswith(b"hostile but fine"), reply[:200]
    assert server.seen["client_finished_ok"]


def test_secp256r1mlkem768(pki, leaf):
    """A hello offering only SecP256r1MLKEM768 (ECDH part first, ML-KEM part second)."""
    from conftest import make_hello

    share = b"\x11\xeb" + (65 + 1184).to_bytes(2, "big") + bytes(65 + 1184)
    raw = make_hello(extensions=[
        (0, b"\x00\x0f\x00\x00\x0c" + NAME.encode()), (10, b"\x00\x02\x11\xeb"),
        (13, b"\x00\x02\x04\x03"), (43, b"\x02\x03\x04"),
        (51, len(share).to_bytes(2, "big") + share)])
    server = HostileServer(*leaf, set(), group=0x11EB)
    try:
        complete, reply = run_replay(server.port, b"\x16\x03\x01" + len(raw).to_bytes(2, "big")
                                     + raw, trust=[pki.cert])
    finally:
        server.close()
    assert complete.group == 0x11EB and reply.endswith(b"hostile but fine")


def test_x25519mlkem768(pki, leaf, flights):
    complete, reply, _ = against(pki, leaf, flights, group=0x11EC)
    assert complete.group == 0x11EC and reply.endswith(b"hostile but fine")


@pytest.mark.parametrize("algorithm", [1, 2, 3])
def test_compressed_certificate(algorithm, pki, leaf, flights):
    complete, _, _ = against(pki, leaf, flights, client="firefox", compress=algorithm)
    assert complete.peer_chain[0] == leaf[0]


def test_compressed_certificate_length_lie_refused(pki, leaf, flights):
    error = refused(pki, leaf, flights, client="firefox", compress=1, lie=-5)
    assert error.reason == "decode" and "length" in error.message


def test_decompressed_certificate_size_bounded(pki, leaf, flights):
    error = refused(pki, leaf, flights, client="firefox", compress=3,
                    config={"max_certificate": 200})
    assert error.reason == "decode" and "limit 200" in error.message


def test_compression_algorithm_not_offered_refused(pki, leaf, flights):
    error = refused(pki, leaf, flights, client="chrome", compress=1)  # chrome offers brotli only
    assert error.reason == "unsolicited-extension"


def test_certificate_request_answered_with_empty_certificate(pki, leaf, flights):
    _, reply, server = against(pki, leaf, flights, faults={"cert-request"})
    assert server.seen["client_messages"] == [11, 20]
    assert reply.endswith(b"hostile but fine")


def test_post_handshake_certificate_request_declined(pki, leaf, flights, hellos_with_pha):
    server = HostileServer(*leaf, {"post-handshake-auth"})
    try:
        _, reply = run_replay(server.port, hellos_with_pha, trust=[pki.cert])
    finally:
        server.close()
    assert server.seen["post_handshake_auth_ok"] and reply.endswith(b"hostile but fine")


@pytest.fixture(scope="module")
def hellos_with_pha():
    """System curl's hello: an OpenSSL client offering post_handshake_auth."""
    from replay_servers import system_curl_hello

    from mirror.wire.tls import read_client_hello

    flight = system_curl_hello()
    assert read_client_hello(flight).has(49)
    return flight


def test_key_update_answered_and_ticket_ignored(pki, leaf, flights):
    _, reply, server = against(pki, leaf, flights, faults={"keyupdate"})
    assert server.seen["client_key_update"]
    assert reply.endswith(b"hostile but fine")


def test_alps_answered_with_client_encrypted_extensions(pki, leaf, flights):
    _, reply, server = against(pki, leaf, flights, ee=ext(16, b"\x00\x03\x02h2")
                               + ext(17613, b"\x00\x00"))
    assert server.seen["client_messages"] == [8, 20]
    assert reply.endswith(b"hostile but fine")


def test_record_size_limit_honoured(pki, leaf, flights):
    request = b"GET / HTTP/1.0\r\nX-Long: " + b"x" * 200 + b"\r\n\r\n"
    _, _, server = against(pki, leaf, flights, client="firefox", request=request,
                           ee=ext(28, struct.pack("!H", 64)))
    assert server.seen["request_sizes"] == [63, 63, 63, len(request) - 189]
    assert server.seen["request"] == request


@pytest.mark.parametrize("faults,options,reason", [
    ({"bad-cv"}, {}, "bad-signature"),
    ({"bad-finished"}, {}, "bad-finished"),
    ({"downgrade"}, {}, "downgrade"),
    ({"hrr"}, {"hrr_group": 0x0019}, "group-not-offered"),      # chrome offers no P-521
    ({"hrr"}, {"hrr_group": 0x001D}, "group-not-offered"),      # already has a share
    ({"second-hrr"}, {"hrr_group": 0x0018}, "second-hrr"),
    (set(), {"cipher": 0x1304}, "cipher-not-offered"),
    (set(), {"ee": ext(14, b"\x00\x02\x00\x01\x00")}, "unsolicited-extension"),
    (set(), {"ee": ext(16, b"\x00\x07\x06spdy/1")}, "alpn"),
    (set(), {"ee": ext(43, b"\x03\x04")}, "unsolicited-extension"),
    ({"truncated"}, {}, "truncated"),
    ({"oversized"}, {}, "record-overflow"),
    ({"alert"}, {}, "alert"),
    ({"keyupdate-flood"}, {}, "keyupdate-flood"),
    ({"data-before-finished"}, {}, "unexpected-message"),
])
def test_hostile_server_refused(faults, options, reason, pki, leaf, flights):
    error = refused(pki, leaf, flights, faults, **options)
    assert error.reason == reason, str(error)
    assert "\n" not in str(error) and len(str(error)) < 300


def test_server_choosing_an_offered_group_the_engine_cannot_compute(pki, leaf, flights):
    """A client's Kyber draft share goes out as random bytes of its length; choosing it fails."""
    from mirror.wire.tls import read_client_hello

    hello = read_client_hello(flights["chrome"])
    raw = flights["chrome"]
    for kind in (10, 51):  # supported_groups, key_share: X25519MLKEM768 -> X25519Kyber768Draft00
        data = hello.ext(kind).data
        raw = raw.replace(data, data.replace(b"\x11\xec", b"\x63\x99", 1))
    assert read_client_hello(raw).key_shares[1] == (0x6399, 1216)
    server = HostileServer(*leaf, set(), group=0x6399)
    try:
        with pytest.raises(ReplayError) as error:
            run_replay(server.port, raw, trust=[pki.cert])
    finally:
        server.close()
    assert error.value.reason == "unsupported" and "0x6399" in error.value.message


def test_hrr_for_an_offered_group_completes(pki, leaf, flights):
    complete, _, server = against(pki, leaf, flights, faults={"hrr"}, hrr_group=0x0018)
    assert complete.group == 0x0018
    second = server.seen["second_hello"]
    assert second.key_shares == [(0x0018, 97)]


def test_cookie_only_hrr_keeps_the_key_shares(pki, leaf, flights):
    complete, _, server = against(pki, leaf, flights, faults={"hrr"}, hrr_group=None,
                                  cookie=b"c" * 40, group=0x001D)
    second = server.seen["second_hello"]
    assert second.ext(44).value == b"c" * 40
    assert [g for g, _ in second.key_shares] == [0x11EC, 0x001D] or \
        [g for g, _ in second.key_shares][1:] == [0x11EC, 0x001D]  # GREASE first
    assert complete.group == 0x001D


@pytest.mark.parametrize("into", [0, 65536])
@pytest.mark.parametrize("client", ["chrome", "firefox"])
def test_tls12_crafted_server(client, into, pki, leaf, flights):
    complete, reply, server = against(pki, leaf, flights, client=client, tls12=True,
                                      config={"into": into} if into else None)
    assert (complete.version, complete.cipher) == (0x0303, 0xC02B)
    assert reply.endswith(b"tls12 but fine") and server.seen["client_finished_ok"]


def test_tls12_legacy_master_secret(pki, leaf, flights):
    complete, _, _ = against(pki, leaf, flights, tls12=True, faults={"no-ems"})
    assert complete.version == 0x0303


@pytest.mark.parametrize("faults,options,reason", [
    ({"bad-ske"}, {}, "bad-signature"),
    ({"bad-finished"}, {}, "bad-finished"),
    ({"no-ri"}, {}, "renegotiation"),
    ({"bad-ri"}, {}, "renegotiation"),
    (set(), {"ske_group": 0x001E}, "group-not-offered"),       # chrome offers no x448
    (set(), {"sh_ext": ext(22, b"")}, "unsolicited-extension"),  # encrypt_then_mac
    (set(), {"cipher": 0xCCA8, "sh_ext": b""}, "bad-signature"),  # RSA suite, ECDSA cert
])
def test_tls12_hostile_server_refused(faults, options, reason, pki, leaf, flights):
    error = refused(pki, leaf, flights, faults, tls12=True, **options)
    assert error.reason == reason, str(error)


@pytest.fixture(scope="module")
def delegating_leaf(pki):
    return pki.leaf(kind="p256", delegation=True)


def test_delegated_credential_verified(pki, delegating_leaf, flights):
    complete, reply, _ = against(pki, delegating_leaf, flights, client="firefox", dc=True)
    assert reply.endswith(b"hostile but fine") and complete.version == 0x0304


@pytest.mark.parametrize("faults,reason", [({"dc-expired"}, "certificate"),
                                           ({"dc-bad-sig"}, "bad-signature")])
def test_bad_delegated_credential_refused(faults, reason, pki, delegating_leaf, flights):
    error = refused(pki, delegating_leaf, flights, faults, client="firefox", dc=True)
    assert error.reason == reason, str(error)


def test_delegated_credential_needs_delegation_usage_and_an_offer(pki, leaf, delegating_leaf,
                                                                 flights):
    assert refused(pki, leaf, flights, client="firefox", dc=True).reason == "certificate"
    assert refused(pki, delegating_leaf, flights, client="chrome",
                   dc=True).reason == "unsolicited-extension"


# ---- certificates against a real server --------------------------------------------------

def cert_error(tmp_path, pki, served, flights, **config) -> ReplayError:
    cert, key = Pki.write(tmp_path, *served)
    with openssl_server(cert, key) as port, pytest.raises(ReplayError) as error:
        run_replay(port, flights["chrome"], **{"trust": [pki.cert], **config})
    return error.value


def test_wrong_name_refused(tmp_path, pki, flights):
    error = cert_error(tmp_path, pki, pki.leaf(names=("other.test",)), flights)
    assert error.reason == "certificate" and NAME in error.message


def test_untrusted_chain_refused_unless_insecure(tmp_path, pki, flights):
    stranger = Pki("Stranger CA")
    error = cert_error(tmp_path, pki, stranger.leaf(), flights)
    assert error.reason == "certificate"
    cert, key = Pki.write(tmp_path, *stranger.leaf())
    with openssl_server(cert, key) as port:
        complete, _ = run_replay(port, flights["chrome"], trust=[pki.cert], insecure=True)
    assert complete.version == 0x0304


def test_system_store_refuses_a_private_ca_and_a_loaded_store_accepts_it(tmp_path, pki,
                                                                        flights):
    from mirror.replay.verify import load_trust

    system = load_trust("/etc/ssl/certs/ca-certificates.crt")
    error = cert_error(tmp_path, pki, pki.leaf(), flights, trust=system)
    assert error.reason == "certificate"
    ca_path, _ = Pki.write(tmp_path, pki.cert, pki.key, stem="ca")
    cert, key = Pki.write(tmp_path, *pki.leaf())
    with openssl_server(cert, key) as port:
        complete, _ = run_replay(port, flights["chrome"], trust=load_trust(str(ca_path)))
    assert complete.peer_chain[-1] == pki.cert


def test_no_trust_refused(tmp_path, pki, flights):
    error = cert_error(tmp_path, pki, pki.leaf(), flights, trust=[])
    assert error.reason == "certificate"


def test_expired_refused_and_now_is_the_callers(tmp_path, pki, flights):
    error = cert_error(tmp_path, pki, pki.leaf(days=(-30, -1)), flights)
    assert error.reason == "certificate"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    error = cert_error(tmp_path, pki, pki.leaf(), flights, now=later)
    assert error.reason == "certificate"


def test_policies_see_the_chain_and_the_choice(tmp_path, pki, flights):
    calls = []

    def chain_policy(chain, groups):
        calls.append(("chain", chain[-1].subject == pki.cert.subject, groups))

    def choice_policy(hello, version, cipher):
        calls.append(("choice", hello.sni, version, cipher))

    cert, key = Pki.write(tmp_path, *pki.leaf())
    with openssl_server(cert, key) as port:
        run_replay(port, flights["chrome"], trust=[pki.cert], chain_policy=chain_policy,
                   choice_policy=choice_policy)
        assert calls[0][:3] == ("choice", NAME, 0x0304)
        assert calls[1][:2] == ("chain", True) and 0x001D in calls[1][2]
        with pytest.raises(ReplayError) as error:
            run_replay(port, flights["chrome"], trust=[pki.cert],
                       chain_policy=lambda chain, groups: "RSA key too small for the client")
        assert error.value.reason == "policy" and "too small" in error.value.message
        with pytest.raises(ReplayError) as error:
            run_replay(port, flights["chrome"], trust=[pki.cert],
                       choice_policy=lambda *a: (_ for _ in ()).throw(ValueError("weaker")))
        assert (error.value.reason, error.value.message) == ("policy", "weaker")


@pytest.mark.parametrize("missing", ["subjectAltName", "authorityKeyIdentifier", "CA keyUsage"])
def test_stricter_than_openssl(missing, tmp_path, flights):
    """Chains OpenSSL (Python's ssl) accepts and the WebPKI verifier refuses, as README says."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject, issuer, key, signer, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=9)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Loose CA")])
    ca_ext = [(x509.BasicConstraints(ca=True, path_length=None), True)]
    if missing != "CA keyUsage":
        ca_ext.append((x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), True))
    ca = build(ca_name, ca_name, ca_key, ca_key, ca_ext)
    leaf_ext = []
    if missing != "subjectAltName":
        leaf_ext.append((x509.SubjectAlternativeName([x509.DNSName(NAME)]), False))
    if missing != "authorityKeyIdentifier":
        leaf_ext.append((x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                         False))
    leaf = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]), ca_name, leaf_key,
                 ca_key, leaf_ext)
    cert, key = Pki.write(tmp_path, leaf, leaf_key)
    ca_path, _ = Pki.write(tmp_path, ca, ca_key, stem="ca")
    with openssl_server(cert, key) as port:
        context = ssl.create_default_context(cafile=str(ca_path))
        context.hostname_checks_common_name = True  # OpenSSL's own default, Python turns it off
        import socket
        with socket.create_connection(("127.0.0.1", port), 5) as raw, \
                context.wrap_socket(raw, server_hostname=NAME) as tls:
            assert tls.version() == "TLSv1.3"
        with pytest.raises(ReplayError) as error:
            run_replay(port, flights["chrome"], trust=[ca])
    assert error.value.reason == "certificate"

"""The mirror CA: safe files on disk, refusal of unsafe keys, and leaves that real TLS accepts."""

from __future__ import annotations

import datetime as dt
import gc
import ipaddress
import os
import random
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    DNSName,
    IPAddress,
    PolicyBuilder,
    Store,
    VerificationError,
)

from mirror.ca import CAError, CertificateAuthority, LeafCache, trust_instructions


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca") / "mirror")


@pytest.fixture(scope="module")
def leaves(ca):
    with LeafCache(ca) as cache:
        yield cache


def verify(ca: CertificateAuthority, cert: x509.Certificate, subject) -> list[x509.Certificate]:
    """Chain-verify `cert` with cryptography's web-PKI verifier, the CA as only anchor."""
    verifier = PolicyBuilder().store(Store([ca.cert])).build_server_verifier(subject)
    return verifier.verify(cert, [])


def ip_subject(text: str) -> IPAddress:
    return IPAddress(ipaddress.ip_address(text))


# ---------------------------------------------------------------- the CA on disk

def test_init_creates_private_key_and_ca_cert(tmp_path):
    directory = tmp_path / "fresh"
    ca = CertificateAuthority.init(directory)
    assert ca.created
    key_mode = stat.S_IMODE(os.stat(directory / "ca-key.pem").st_mode)
    assert key_mode == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    assert cert == ca.cert
    assert (directory / "ca-key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name.startswith("mirror CA ")
    assert cert.issuer == cert.subject

    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(days=2) < cert.not_valid_before_utc < now - dt.timedelta(hours=1)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=9 * 365) < lifetime < dt.timedelta(days=11 * 365)


def test_init_is_idempotent_and_never_overwrites(tmp_path):
    first = CertificateAuthority.init(tmp_path)
    cert_bytes = (tmp_path / "ca.pem").read_bytes()
    key_bytes = (tmp_path / "ca-key.pem").read_bytes()
    second = CertificateAuthority.init(tmp_path)
    assert first.created and not second.created
    assert second.cert == first.cert
    assert (tmp_path / "ca.pem").read_bytes() == cert_bytes
    assert (tmp_path / "ca-key.pem").read_bytes() == key_bytes
    loaded = CertificateAuthority.load(tmp_path)
    assert loaded.cert == first.cert and not loaded.created


def test_two_installs_differ(tmp_path):
    one = CertificateAuthority.init(tmp_path / "one").cert
    two = CertificateAuthority.init(tmp_path / "two").cert
    assert one.subject != two.subject
    assert one.serial_number != two.serial_number


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_load_refuses_key_open_to_group_or_others(tmp_path, mode):
    CertificateAuthority.init(tmp_path)
    key_path = tmp_path / "ca-key.pem"
    os.chmod(key_path, mode)
    with pytest.raises(CAError) as caught:
        CertificateAuthority.load(tmp_path)
    message = str(caught.value)
    assert str(key_path) in message
    assert f"chmod 600 {key_path}" in message
    # init must refuse the same way rather than silently reuse (or replace) the exposed key
    with pytest.raises(CAError, match="chmod 600"):
        CertificateAuthority.init(tmp_path)
    os.chmod(key_path, 0o600)
    assert CertificateAuthority.load(tmp_path).cert.subject is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_load_refuses_key_owned_by_someone_else(tmp_path):
    CertificateAuthority.init(tmp_path)
    key_path = tmp_path / "ca-key.pem"
    os.chown(key_path, 4242, -1)
    with pytest.raises(CAError, match="owned by uid 4242") as caught:
        CertificateAuthority.load(tmp_path)
    assert str(key_path) in str(caught.value)


def test_load_reports_missing_files(tmp_path):
    with pytest.raises(CAError, match="no CA in"):
        CertificateAuthority.load(tmp_path)
    CertificateAuthority.init(tmp_path)
    (tmp_path / "ca.pem").unlink()
    with pytest.raises(CAError, match=r"ca\.pem is missing"):
        CertificateAuthority.load(tmp_path)
    with pytest.raises(CAError, match=r"ca\.pem is missing"):  # init does not regenerate over a key
        CertificateAuthority.init(tmp_path)
    assert not (tmp_path / "ca.pem").exists()


def test_load_reports_missing_key(tmp_path):
    CertificateAuthority.init(tmp_path)
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(CAError, match=r"ca-key\.pem is missing"):
        CertificateAuthority.load(tmp_path)


def test_load_reports_corrupt_files(tmp_path):
    CertificateAuthority.init(tmp_path)
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    good_cert = cert_path.read_bytes()
    cert_path.write_bytes(good_cert[:60] + b"garbage\n" + good_cert[60:])
    with pytest.raises(CAError, match="not a valid PEM certificate") as caught:
        CertificateAuthority.load(tmp_path)
    assert str(cert_path) in str(caught.value)
    cert_path.write_bytes(good_cert)
    key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CAError, match="not a valid PEM private key") as caught:
        CertificateAuthority.load(tmp_path)
    assert str(key_path) in str(caught.value)


def test_load_reports_mismatched_pair(tmp_path):
    CertificateAuthority.init(tmp_path / "a")
    CertificateAuthority.init(tmp_path / "b")
    (tmp_path / "a" / "ca.pem").write_bytes((tmp_path / "b" / "ca.pem").read_bytes())
    with pytest.raises(CAError, match="does not match"):
        CertificateAuthority.load(tmp_path / "a")


def test_export_pem_and_der(ca):
    der = ca.export("der")
    assert x509.load_der_x509_certificate(der) == ca.cert
    pem = ca.export("pem")
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificate(pem) == ca.cert
    assert b"PRIVATE" not in pem
    with pytest.raises(ValueError):
        ca.export("p12")  # type: ignore[arg-type]


def test_trust_instructions_cover_each_store(ca):
    text = trust_instructions(ca.cert_path)
    assert str(ca.cert_path) in text
    for needle in ("update-ca-certificates", "/usr/local/share/ca-certificates/",
                   'certutil -d sql:"$HOME/.pki/nssdb" -A -t "C,," -n mirror -i',
                   "policies.json", '"Certificates"', '"Install"', "SSL_CERT_FILE",
                   "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert needle in text, needle
    assert ca.trust_instructions() == text


# ---------------------------------------------------------------- leaves

@pytest.mark.parametrize(("server_name", "ip", "subject"), [
    ("example.test", None, DNSName("example.test")),
    (None, "198.18.0.10", ip_subject("198.18.0.10")),
    ("::1", None, ip_subject("::1")),
    (None, "::1", ip_subject("::1")),
    ("Example.TEST.", "198.18.0.10", DNSName("example.test")),
])
def test_leaf_chain_verifies(ca, leaves, server_name, ip, subject):
    leaf = leaves.get(server_name, ip)
    chain = verify(ca, leaf.cert, subject)
    assert chain[0] == leaf.cert and chain[-1] == ca.cert
    assert x509.load_pem_x509_certificate(leaf.cert_pem) == leaf.cert
    assert x509.load_pem_x509_certificate(Path(leaf.chain_path).read_bytes()) == leaf.cert


def test_leaf_does_not_verify_for_other_names(ca, leaves, tmp_path):
    with pytest.raises(VerificationError):
        verify(ca, leaves.get("example.test").cert, DNSName("other.test"))
    with pytest.raises(VerificationError):
        verify(ca, leaves.get(None, "198.18.0.10").cert, ip_subject("198.18.0.11"))
    with LeafCache(CertificateAuthority.init(tmp_path)) as other:  # a leaf from another CA
        stranger_leaf = other.get("example.test").cert
        with pytest.raises(VerificationError):
            verify(ca, stranger_leaf, DNSName("example.test"))


def test_leaf_fields(ca, leaves):
    now = dt.datetime.now(dt.UTC)
    leaf = leaves.get("example.test")
    cert = leaf.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "example.test"
    assert cert.issuer == ca.cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.test"]
    assert san.get_values_for_type(x509.IPAddress) == []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert abs(cert.not_valid_before_utc - (now - dt.timedelta(days=1))) < dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=397)
    assert cert.not_valid_after_utc > now + dt.timedelta(days=390)

    ip_leaf = leaves.get(None, "198.18.0.10")
    ip_san = ip_leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ip_san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.10")]
    assert ip_san.get_values_for_type(x509.DNSName) == []
    # one shared leaf key: every leaf carries the same public key, the key file is private
    assert ip_leaf.cert.public_key() == cert.public_key() and ip_leaf.key_pem == leaf.key_pem
    key = serialization.load_pem_private_key(Path(leaf.key_path).read_bytes(), None)
    assert key.public_key() == cert.public_key()
    assert stat.S_IMODE(os.stat(leaf.key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(leaves.directory).st_mode) == 0o700


def test_names_are_normalised(ca, leaves):
    assert leaves.get("EXAMPLE.test.") is leaves.get("example.test")
    assert leaves.get("[::1]") is leaves.get("::1") is leaves.get(None, "0:0::1")
    idn = leaves.get("bücher.example")
    assert idn.identity == "xn--bcher-kva.example"
    verify(ca, idn.cert, DNSName("xn--bcher-kva.example"))
    wildcard = leaves.get("*.example.test")  # kept exactly as asked
    san = wildcard.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*.example.test"]
    long_name = ".".join(["a" * 30] * 4) + ".test"  # longer than a CN may be
    verify(ca, leaves.get(long_name).cert, DNSName(long_name))
    for bad in ("bad name", "a..b", "x" * 64 + ".test", "exa*mple.test"):
        with pytest.raises(ValueError):
            leaves.get(bad)
    with pytest.raises(ValueError):
        leaves.get(None, None)
    with pytest.raises(ValueError):
        leaves.get(None, "not-an-ip")


def test_lru_evicts_least_recently_used_and_files_follow_the_leaf(ca, tmp_path):
    with LeafCache(ca, max_entries=3, temp_parent=tmp_path) as cache:
        assert cache.directory.parent == tmp_path
        a, b, c = (cache.get(name) for name in ("a.test", "b.test", "c.test"))
        assert cache.get("a.test") is a  # a is now the most recently used
        cache.get("d.test")
        assert len(cache) == 3
        assert cache.get("a.test") is a and cache.get("c.test") is c
        b_path = b.chain_path
        assert b_path.exists()  # evicted, but still held here: its file stays usable
        new_b = cache.get("b.test")
        assert new_b is not b and new_b.cert.serial_number != b.cert.serial_number
        assert cache.minted == 5
        del b
        gc.collect()
        assert not b_path.exists()
        directory = cache.directory
    assert not directory.exists()
    with pytest.raises(RuntimeError):
        cache.get("a.test")


def test_leaf_near_expiry_is_reminted(ca):
    now = [dt.datetime.now(dt.UTC)]
    with LeafCache(ca, clock=lambda: now[0]) as cache:
        first = cache.get("example.test")
        now[0] += dt.timedelta(days=200)
        assert cache.get("example.test") is first
        now[0] = first.not_after - dt.timedelta(hours=1)
        second = cache.get("example.test")
        assert second is not first and second.not_after > first.not_after


def test_concurrent_minting(ca):
    names = [f"host{i}.example.test" for i in range(50)]
    results: list[dict[str, object]] = []
    errors: list[Exception] = []
    start = threading.Barrier(8)

    with LeafCache(ca) as cache:
        def worker(seed: int) -> None:
            order = names[:]
            random.Random(seed).shuffle(order)
            mine = {}
            try:
                start.wait()
                for name in order:
                    mine[name] = cache.get(name)
            except Exception as error:  # noqa: BLE001 - re-raised via the assert below
                errors.append(error)
            results.append(mine)

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert len(results) == 8
        assert cache.minted == 50  # each name minted exactly once
        for name in names:
            leaf = results[0][name]
            assert all(result[name] is leaf for result in results)  # identical cached object
            assert cache.get(name) is leaf
            verify(ca, leaf.cert, DNSName(name))
        assert len({results[0][name].cert.serial_number for name in names}) == 50


# ---------------------------------------------------------------- real TLS handshakes

def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext,
              server_hostname: str, family: int = socket.AF_INET,
              host: str = "127.0.0.1") -> tuple[str | None, str | None, BaseException | None]:
    """One TLS handshake over loopback; returns (client ALPN, server ALPN, server error)."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(1)
    listener.settimeout(10)
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_context.wrap_socket(conn, server_side=True) as tls:
                outcome["alpn"] = tls.selected_alpn_protocol()
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as error:
            outcome["error"] = error

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=10) as raw, \
                client_context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            assert tls.recv(2) == b"ok"
            client_alpn = tls.selected_alpn_protocol()
    finally:
        thread.join(10)
        listener.close()
    return client_alpn, outcome.get("alpn"), outcome.get("error")  # type: ignore[return-value]


def client_trusting(ca: CertificateAuthority, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no default CAs: ours is the only anchor
    context.load_verify_locations(cafile=str(ca.cert_path))
    context.set_alpn_protocols(alpn)
    return context


def test_tls_handshake_with_minted_leaf(ca, leaves):
    client = client_trusting(ca, ["h2", "http/1.1"])
    server = leaves.ssl_context("example.test", None, ["h2", "http/1.1"])
    assert handshake(server, client, "example.test") == ("h2", "h2", None)
    assert leaves.ssl_context("example.test", None, ["h2", "http/1.1"]) is server  # cached

    only_h1 = leaves.get("example.test").ssl_context(["http/1.1"])
    assert handshake(only_h1, client, "example.test") == ("http/1.1", "http/1.1", None)


def test_tls_handshake_via_cert_chain_files(ca, leaves):
    leaf = leaves.get("example.test")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(leaf.chain_path, leaf.key_path)
    server.set_alpn_protocols(["h2"])
    assert handshake(server, client_trusting(ca, ["h2"]), "example.test") == ("h2", "h2", None)


def test_tls_handshake_rejects_wrong_name(ca, leaves):
    server = leaves.ssl_context("example.test", None, ["h2", "http/1.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match="other.test"):
        handshake(server, client_trusting(ca, ["h2", "http/1.1"]), "other.test")


def test_tls_handshake_rejects_unknown_ca(ca, leaves, tmp_path):
    server = leaves.ssl_context("example.test")
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.load_verify_locations(cadata=CertificateAuthority.init(tmp_path).export("pem").decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, stranger, "example.test")


def test_tls_handshake_for_ip_literals(ca, leaves):
    client = client_trusting(ca, ["http/1.1"])
    server = leaves.ssl_context(None, "127.0.0.1", ["http/1.1"])
    assert handshake(server, client, "127.0.0.1")[0] == "http/1.1"
    if not socket.has_ipv6:
        return
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        return  # no IPv6 loopback here; the IPv6 leaf is still chain-verified above
    server6 = leaves.ssl_context(None, "::1", ["http/1.1"])
    assert handshake(server6, client, "::1", socket.AF_INET6, "::1")[0] == "http/1.1"
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server6, client, "::2", socket.AF_INET6, "::1")

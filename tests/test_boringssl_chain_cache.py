"""The boringssl engine's cache of verified chains: a chain verified once against a CA file is
not built and checked again, and nothing else about the handshake is taken on trust. Real
handshakes of the engine (``open_mirrored_tls``) against ``openssl s_server`` and a crafted
TLS 1.3 server; each test has its own cache in place of the process's."""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict

import pytest
from badcerts import DAY, ca_pem, make_ca, make_leaf, write_pems
from conftest import capture_client_hello
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from replay_hostile import HostileServer
from replay_servers import openssl_server

from mirror.emit.relay_plan import relay_plan
from mirror.tls_policy import TlsPolicyError
from mirror.upstream.connection import UpstreamError, UpstreamTarget
from mirror.upstream.curl.handshake import open_mirrored_tls
from mirror.upstream.curl.native import native
from mirror.verified_chains import VerifiedChains
from mirror.wire.tls import read_client_hello

NAME = "cache.test"
_KEPT: list = []


@pytest.fixture(scope="module")
def plan():
    return relay_plan(read_client_hello(capture_client_hello("chrome", NAME)))


@pytest.fixture
def cache(monkeypatch):
    nat = native()
    assert nat.verified_chains is not None, "this curl_cffi build has no cert verify callback"
    fresh = VerifiedChains()
    monkeypatch.setattr(nat, "verified_chains", fresh)
    return fresh


@pytest.fixture(scope="module")
def ca():
    return make_ca("Chain Cache CA")


def connect(port: int, plan, ca_file, name: str = NAME):
    tls = open_mirrored_tls(UpstreamTarget("127.0.0.1", port, name), plan, ca_file=str(ca_file),
                            timeout=5)
    tls.close()


def refused(port: int, plan, ca_file, name: str = NAME) -> str:
    with pytest.raises(UpstreamError) as error:
        connect(port, plan, ca_file, name)
    return str(error.value)


def test_second_connection_takes_the_chain_from_the_cache(tmp_path, plan, cache, ca):
    cert, key = write_pems(make_leaf(ca, NAME), tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    with openssl_server(cert, key) as port:
        connect(port, plan, ca_file)
        assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
        connect(port, plan, ca_file)
        assert (cache.hits, cache.misses) == (1, 1)


def test_a_cached_chain_is_refused_for_a_name_it_does_not_cover(tmp_path, plan, cache, ca):
    cert, key = write_pems(make_leaf(ca, NAME), tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    with openssl_server(cert, key) as port:
        connect(port, plan, ca_file)
        message = refused(port, plan, ca_file, name="other.test")
    assert "other.test" in message
    assert cache.hits == 1          # the chain came from the cache; the name was still checked


def test_a_cached_chain_does_not_excuse_a_wrong_key(tmp_path, plan, cache, ca):
    leaf = make_leaf(ca, NAME)
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    good = HostileServer(leaf.cert, leaf.key, set(), group=0x001D)
    try:
        with pytest.raises(UpstreamError):   # it sends no application data: the read fails
            tls = open_mirrored_tls(UpstreamTarget("127.0.0.1", good.port, NAME), plan,
                                    ca_file=str(ca_file), timeout=5)
            tls.close()
            raise UpstreamError("handshake done", "relay")
    finally:
        good.close()
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    impostor = HostileServer(leaf.cert, ec.generate_private_key(ec.SECP256R1()), set(),
                             group=0x001D)
    try:
        message = refused(impostor.port, plan, ca_file)
    finally:
        impostor.close()
    assert cache.hits == 1, message       # the chain came from the cache ...
    assert "BAD_SIGNATURE" in message or "signature" in message.lower()  # ... its key did not


def test_the_policy_still_judges_a_cached_chain(tmp_path, plan, cache, ca, monkeypatch):
    from mirror.upstream.curl import native as native_module

    cert, key = write_pems(make_leaf(ca, NAME), tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    seen = []

    def refuse(chain, groups):
        seen.append(len(chain))
        raise TlsPolicyError("this chain is not for these clients")

    with openssl_server(cert, key) as port:
        connect(port, plan, ca_file)
        monkeypatch.setattr(native_module, "check_chain", refuse)
        monkeypatch.setattr(native(), "_chains", OrderedDict())   # no verdict remembered
        message = refused(port, plan, ca_file)
    assert "not for these clients" in message and cache.hits == 1
    assert seen == [2]                 # the verified path, root included (the server sent one)


def test_a_chain_past_its_not_after_is_verified_again_and_refused(tmp_path, plan, cache, ca):
    not_after = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=4)
    cert, key = write_pems(make_leaf(ca, NAME, not_after=not_after), tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    with openssl_server(cert, key) as port:
        connect(port, plan, ca_file)
        assert (cache.hits, cache.misses) == (0, 1)
        time.sleep(max(0.0, not_after.timestamp() - time.time()) + 1.5)
        message = refused(port, plan, ca_file)
    assert "expired" in message.lower(), message
    assert (cache.hits, cache.misses) == (0, 2)


def test_an_entry_older_than_its_max_age_is_verified_again(tmp_path, plan, monkeypatch, ca):
    now = [time.time()]
    cache = VerifiedChains(max_age=600, clock=lambda: now[0])
    monkeypatch.setattr(native(), "verified_chains", cache)
    cert, key = write_pems(make_leaf(ca, NAME), tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    with openssl_server(cert, key) as port:
        connect(port, plan, ca_file)
        now[0] += 599
        connect(port, plan, ca_file)
        assert (cache.hits, cache.misses) == (1, 1)
        now[0] += 2                                   # 601 s after the verification
        connect(port, plan, ca_file)
        assert (cache.hits, cache.misses) == (1, 2)


def test_another_ca_file_does_not_share_the_entry(tmp_path, plan, cache, ca):
    cert, key = write_pems(make_leaf(ca, NAME), tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    stranger = ca_pem(make_ca("Stranger CA"), tmp_path / "stranger.pem")
    with openssl_server(cert, key) as port:
        connect(port, plan, ca_file)
        message = refused(port, plan, stranger)
    assert "certificate" in message.lower(), message
    assert (cache.hits, cache.misses) == (0, 2)


def test_a_chain_with_one_byte_changed_is_not_a_hit(tmp_path, plan, cache, ca):
    leaf = make_leaf(ca, NAME)
    cert, key = write_pems(leaf, tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    der = bytearray(leaf.cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01                                   # the signature's last byte
    tampered = tmp_path / "tampered.pem"
    tampered.write_bytes(x509.load_der_x509_certificate(bytes(der)).public_bytes(
        serialization.Encoding.PEM))
    with openssl_server(cert, key) as port:
        connect(port, plan, ca_file)
    with openssl_server(tampered, key) as port:
        message = refused(port, plan, ca_file)
    assert "signature" in message.lower(), message   # the certificate's, checked in full
    assert (cache.hits, cache.misses) == (0, 2)


def test_a_chain_with_one_more_intermediate_is_not_a_hit(tmp_path, plan, cache, ca):
    intermediate = make_ca("Chain Cache Intermediate", issuer=ca)
    leaf = make_leaf(intermediate, NAME)
    cert, key = write_pems(leaf, tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    pem = serialization.Encoding.PEM
    chain, longer = tmp_path / "chain.pem", tmp_path / "longer.pem"
    chain.write_bytes(intermediate.cert.public_bytes(pem))
    longer.write_bytes(intermediate.cert.public_bytes(pem)
                       + make_ca("Unrelated CA", issuer=ca).cert.public_bytes(pem))
    with openssl_server(cert, key, "-cert_chain", str(chain)) as port:
        connect(port, plan, ca_file)
        connect(port, plan, ca_file)
    assert (cache.hits, cache.misses) == (1, 1)
    with openssl_server(cert, key, "-cert_chain", str(longer)) as port:
        connect(port, plan, ca_file)                  # verifies (in full) all the same
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)


def test_a_refused_chain_is_not_remembered(tmp_path, plan, cache, ca):
    cert, key = write_pems(make_leaf(ca, NAME, not_after=dt.datetime.now(dt.UTC) - DAY,
                                     not_before=dt.datetime.now(dt.UTC) - 2 * DAY),
                           tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    with openssl_server(cert, key) as port:
        for _ in range(2):
            assert "expired" in refused(port, plan, ca_file).lower()
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 0)


def test_a_build_without_the_callback_verifies_every_chain(tmp_path, plan, monkeypatch, ca):
    from mirror.upstream.curl import native as native_module

    found = native_module.function_offsets

    def without_callback(image, names):
        offsets = found(image, names)
        offsets.pop("SSL_CTX_set_cert_verify_callback", None)
        return offsets

    monkeypatch.setattr(native_module, "function_offsets", without_callback)
    bare = native_module.Native()
    assert bare.verified_chains is None
    _KEPT.append(bare)     # its callbacks outlive the test: handles are closed in the background
    monkeypatch.setattr(native_module, "_native", bare)
    cert, key = write_pems(make_leaf(ca, NAME), tmp_path, "leaf")
    ca_file = ca_pem(ca, tmp_path / "ca.pem")
    with openssl_server(cert, key) as port:
        for _ in range(2):
            connect(port, plan, ca_file)
        assert "other.test" in refused(port, plan, ca_file, name="other.test")
    stranger = ca_pem(make_ca("Stranger CA"), tmp_path / "stranger.pem")
    with openssl_server(cert, key) as port:
        assert "certificate" in refused(port, plan, stranger).lower()

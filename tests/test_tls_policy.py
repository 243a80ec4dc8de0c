"""mirror.tls_policy: version bounds from the client's hello, the server's choices held to the
client's offer, and chains held to the public-web baseline (certificates minted here)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from badcerts import make_ca, make_leaf, rsa_key
from conftest import make_hello
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519

from mirror.tls_policy import (
    TlsPolicyError,
    check_chain,
    check_server_choice,
    legacy_signature_scheme,
    policy_view,
    version_bounds,
)
from mirror.wire.tls import parse_client_hello


def versions_ext(*versions: int) -> tuple[int, bytes]:
    body = b"".join(struct.pack("!H", v) for v in versions)
    return 43, bytes([len(body)]) + body


def sigalgs_ext(*schemes: int) -> tuple[int, bytes]:
    body = b"".join(struct.pack("!H", v) for v in schemes)
    return 13, struct.pack("!H", len(body)) + body


def hello(ciphers=(0x1301, 0xC02F), extensions=(), legacy_version=0x0303):
    return parse_client_hello(make_hello(ciphers, extensions, legacy_version=legacy_version))


def test_bounds_come_from_supported_versions_without_grease():
    assert version_bounds(hello(extensions=[versions_ext(0x3A3A, 0x0304, 0x0303)])) == (
        0x0303, 0x0304)
    assert version_bounds(hello(extensions=[versions_ext(0x0304, 0x0303, 0x0302, 0x0301)])) == (
        0x0301, 0x0304)


def test_bounds_without_supported_versions_are_the_legacy_version():
    assert version_bounds(hello()) == (0x0303, 0x0303)
    assert version_bounds(hello(legacy_version=0x0301)) == (0x0301, 0x0301)
    # only GREASE in the list: as if there were no list
    assert version_bounds(hello(extensions=[versions_ext(0x1A1A)])) == (0x0303, 0x0303)


def test_the_servers_version_must_be_one_the_client_offered():
    modern = hello(extensions=[versions_ext(0x0304, 0x0303)])
    check_server_choice(modern, 0x0304, 0x1301)
    check_server_choice(modern, 0x0303, 0xC02F)
    with pytest.raises(TlsPolicyError, match="chose TLS 1.0; the client offered only TLS 1.2 "
                                             "to TLS 1.3"):
        check_server_choice(modern, 0x0301, 0xC02F)
    with pytest.raises(TlsPolicyError, match="chose TLS 1.3; the client offered only TLS 1.2$"):
        check_server_choice(hello(), 0x0304, 0x1301)


def test_the_servers_cipher_suite_must_be_one_the_client_offered():
    offer = hello(ciphers=(0x0A0A, 0x1302, 0xC02F, 0x00FF),
                  extensions=[versions_ext(0x0304, 0x0303)])
    with pytest.raises(TlsPolicyError, match="cipher suite 0x1301, which the client did not"):
        check_server_choice(offer, 0x0304, 0x1301)
    for signalling in (0x0A0A, 0x00FF):
        with pytest.raises(TlsPolicyError, match="did not offer"):
            check_server_choice(offer, 0x0303, signalling)
    with pytest.raises(TlsPolicyError, match="not a TLS 1.2 suite"):
        check_server_choice(offer, 0x0303, 0x1302)
    with pytest.raises(TlsPolicyError, match="not a TLS 1.3 suite"):
        check_server_choice(offer, 0x0304, 0xC02F)


def test_sha1_and_md5_handshake_signatures_are_refused():
    offer = hello(extensions=[versions_ext(0x0303, 0x0302, 0x0301),
                              sigalgs_ext(0x0403, 0x0804, 0x0201)])
    check_server_choice(offer, 0x0303, 0xC02F, signature=0x0804)
    with pytest.raises(TlsPolicyError, match="signed the handshake with RSA with SHA-1"):
        check_server_choice(offer, 0x0303, 0xC02F, signature=0x0201)
    with pytest.raises(TlsPolicyError, match="scheme 0x0805, which the client did not offer"):
        check_server_choice(offer, 0x0303, 0xC02F, signature=0x0805)
    legacy = legacy_signature_scheme(0x0301, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
    assert legacy == 0xFF01
    with pytest.raises(TlsPolicyError, match=r"RSA with MD5\+SHA-1 \(TLS 1.0\)"):
        check_server_choice(offer, 0x0301, 0xC02F, signature=legacy)
    assert legacy_signature_scheme(0x0302, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA") == 0x0203
    assert legacy_signature_scheme(0x0301, "TLS_RSA_WITH_AES_128_CBC_SHA") is None
    assert legacy_signature_scheme(0x0303, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256") is None


@pytest.fixture(scope="module")
def ca():
    return make_ca(key=rsa_key(2048))     # RSA: it can sign the SHA-1 certificates too


def test_a_good_chain_passes(ca):
    leaf = make_leaf(ca, "good.test")
    check_chain([leaf.cert, ca.cert], [29, 23])
    check_chain([make_leaf(ca, "rsa.test", key=rsa_key(2048)).cert, ca.cert], [])
    check_chain([make_leaf(ca, "ed.test", key=ed25519.Ed25519PrivateKey.generate()).cert,
                 ca.cert], [])


def test_weak_keys_are_refused(ca):
    weak = make_leaf(ca, "weak.test", key=rsa_key(1024))
    with pytest.raises(TlsPolicyError, match=r"leaf \(CN=weak.test\) has an RSA key of 1024 "
                                             r"bits \(at least 2048 required\)"):
        check_chain([weak.cert, ca.cert], [])
    weak_ca = make_ca("Weak CA", key=rsa_key(1024))
    with pytest.raises(TlsPolicyError, match="chain certificate 1 .* 1024 bits"):
        check_chain([make_leaf(weak_ca, "a.test").cert, weak_ca.cert], [])
    with pytest.raises(TlsPolicyError, match="DSA key"):
        check_chain([make_leaf(ca, "dsa.test",
                               key=dsa.generate_private_key(2048)).cert, ca.cert], [])


def test_ec_curves_are_the_baseline_or_offered(ca):
    for curve in (ec.SECP384R1(), ec.SECP521R1()):
        check_chain([make_leaf(ca, "ec.test", key=ec.generate_private_key(curve)).cert], [])
    brainpool = make_leaf(ca, "bp.test", key=ec.generate_private_key(ec.BrainpoolP256R1()))
    with pytest.raises(TlsPolicyError, match="EC key on brainpoolP256r1"):
        check_chain([brainpool.cert, ca.cert], [29, 23])
    check_chain([brainpool.cert, ca.cert], [29, 23, 26])      # the client offered it
    k1 = make_leaf(ca, "k1.test", key=ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises(TlsPolicyError, match="secp256k1"):
        check_chain([k1.cert, ca.cert], list(range(65536)))


def test_sha1_and_md5_signatures_below_the_anchor_are_refused(ca):
    with pytest.raises(TlsPolicyError, match=r"leaf \(CN=sha1.test\) is signed with SHA1"):
        check_chain([make_leaf(ca, "sha1.test", digest=hashes.SHA1()).cert, ca.cert], [])
    sha1_intermediate = make_ca("SHA-1 Intermediate", issuer=ca, digest=hashes.SHA1())
    leaf = make_leaf(sha1_intermediate, "i.test")
    with pytest.raises(TlsPolicyError, match="chain certificate 1 .* SHA1"):
        check_chain([leaf.cert, sha1_intermediate.cert, ca.cert], [])
    # the anchor's own signature is not relied on: a SHA-1 self-signed root is fine
    old_root = make_ca("Old Root", digest=hashes.SHA1(), key=rsa_key(2048))
    check_chain([make_leaf(old_root, "r.test").cert, old_root.cert], [])
    # ... but only as the last certificate: a SHA-1 leaf under it is not
    with pytest.raises(TlsPolicyError, match="SHA1"):
        check_chain([make_leaf(old_root, "r.test", digest=hashes.SHA1()).cert, old_root.cert],
                    [])


def test_an_empty_chain_is_refused():
    with pytest.raises(TlsPolicyError, match="no certificate"):
        check_chain([], [])


def test_the_module_does_no_io():
    import mirror.tls_policy as module

    source = Path(module.__file__).read_text()
    for name in ("asyncio", "socket", "curl_cffi", "ssl"):
        assert f"import {name}" not in source and f"from {name}" not in source


def test_the_policy_view_decides_like_the_hello():
    offer = hello(ciphers=(0x0A0A, 0x1301, 0xC02F),
                  extensions=[versions_ext(0x2A2A, 0x0304, 0x0303), sigalgs_ext(0x0804),
                              (10, b"\x00\x04\x1a\x1a\x00\x17")])
    view = policy_view(offer)
    assert version_bounds(view) == version_bounds(offer) == (0x0303, 0x0304)
    assert view.cipher_suites == [0x1301, 0xC02F] and view.supported_groups == [23]
    for version, cipher, signature in ((0x0304, 0x1301, 0x0804), (0x0303, 0x0A0A, None),
                                       (0x0302, 0xC02F, None), (0x0303, 0xC02F, 0x0201)):
        outcomes = []
        for subject in (offer, view):
            try:
                check_server_choice(subject, version, cipher, signature=signature)
                outcomes.append(None)
            except TlsPolicyError as error:
                outcomes.append(str(error))
        assert outcomes[0] == outcomes[1]


def test_cached_relay_plans_carry_their_hellos_bounds():
    from mirror.emit.relay_plan import cached_relay_plan

    wide = hello(extensions=[versions_ext(0x0304, 0x0303, 0x0302, 0x0301)])
    narrow = hello(extensions=[versions_ext(0x0304, 0x0303)])
    only12 = hello()
    plans = [cached_relay_plan(h) for h in (wide, narrow, only12, wide)]
    assert [p.version_bounds for p in plans] == [(0x0301, 0x0304), (0x0303, 0x0304),
                                                 (0x0303, 0x0303), (0x0301, 0x0304)]
    assert plans[3] is plans[0]                   # the same shape: the same plan, the same bounds

"""The upstream is never weaker than the client: the TLS policy every upstream engine applies.

Pure decisions over parsed values, no I/O. An engine asks three questions:

- ``version_bounds(hello)``: the lowest and highest TLS version the client offered
  (``supported_versions``, else ``legacy_version``). The upstream handshake may negotiate
  nothing outside them.
- ``check_server_choice(hello, version, cipher)``: the version and cipher suite the server
  picked must be ones the client offered.
- ``check_chain(chain, offered_groups)``: the verified chain (leaf first, the trust anchor last
  when known) meets today's public-web baseline: RSA keys of at least 2048 bits, EC keys on
  P-256 / P-384 / P-521 or a curve the client offered, no DSA keys, and no certificate below
  the trust anchor signed with SHA-1 or MD5 (or an older digest).

Each refusal raises ``TlsPolicyError``, whose text is one line naming what was refused. These
checks come on top of ordinary certificate verification (trust, name, dates, key usage), which
the engines keep doing; ``--insecure-upstream`` turns both off.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from mirror.wire.tls import ClientHello, Extension, is_grease

TLS1_0, TLS1_1, TLS1_2, TLS1_3 = 0x0301, 0x0302, 0x0303, 0x0304
VERSION_NAMES = {0x0300: "SSL 3.0", TLS1_0: "TLS 1.0", TLS1_1: "TLS 1.1", TLS1_2: "TLS 1.2",
                 TLS1_3: "TLS 1.3"}
MIN_RSA_BITS = 2048
BASELINE_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
# TLS supported_groups codepoints -> the curve a certificate key may then be on
GROUP_CURVES = {23: "secp256r1", 24: "secp384r1", 25: "secp521r1", 26: "brainpoolP256r1",
                27: "brainpoolP384r1", 28: "brainpoolP512r1", 31: "brainpoolP256r1",
                32: "brainpoolP384r1", 33: "brainpoolP512r1"}
WEAK_DIGESTS = (hashes.SHA1, hashes.MD5)
_WEAK_OIDS = {"1.2.840.113549.1.1.2": "MD2", "1.2.840.113549.1.1.3": "MD4"}
# SignatureScheme values with SHA-1 or MD5 (0xff01: the MD5+SHA-1 of TLS 1.0 / 1.1 RSA)
WEAK_SIGNATURE_SCHEMES = {0x0101: "RSA with MD5", 0x0201: "RSA with SHA-1",
                          0x0202: "DSA with SHA-1", 0x0203: "ECDSA with SHA-1",
                          0xFF01: "RSA with MD5+SHA-1"}
_SIGNALLING_SUITES = frozenset({0x00FF, 0x5600})   # renegotiation SCSV, fallback SCSV


class TlsPolicyError(Exception):
    """The upstream handshake was refused by policy; ``str()`` is one line saying what."""


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"version 0x{version:04x}")


def _offered_versions(hello: ClientHello) -> list[int]:
    offered = [v for v in hello.supported_versions if not is_grease(v) and 0x0300 <= v <= 0x03FF]
    return offered or [hello.legacy_version]


def version_bounds(hello: ClientHello) -> tuple[int, int]:
    """(lowest, highest) TLS version the client offered, as wire values (0x0303 = TLS 1.2)."""
    offered = _offered_versions(hello)
    return min(offered), max(offered)


def legacy_signature_scheme(version: int, suite_name: str) -> int | None:
    """The signature a TLS 1.0 / 1.1 server necessarily made with cipher suite ``suite_name``
    (its standard name, e.g. TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA): those versions sign an
    (EC)DHE key exchange with MD5+SHA-1 (RSA) or SHA-1 (ECDSA, DSA). None: no signature (RSA
    or PSK key exchange), or TLS 1.2 and later, where the scheme is negotiated."""
    if version >= TLS1_2 or not suite_name.startswith(("TLS_ECDHE_", "TLS_DHE_")):
        return None
    for auth, scheme in (("_RSA_", 0xFF01), ("_ECDSA_", 0x0203), ("_DSS_", 0x0202)):
        if auth in suite_name:
            return scheme
    return None


_POLICY_EXTENSIONS = (10, 13, 43)    # supported_groups, signature_algorithms, versions


def policy_view(hello: ClientHello) -> ClientHello:
    """The parts of ``hello`` this policy reads, GREASE left out: equal for every hello of the
    same shape, so an engine may keep it with a plan it caches per shape."""
    kept = [Extension(ext.type, b"", [v for v in ext.value if not is_grease(v)])
            for ext in hello.extensions
            if ext.type in _POLICY_EXTENSIONS and isinstance(ext.value, list)]
    return ClientHello(hello.legacy_version, b"", b"",
                       [c for c in hello.cipher_suites if not is_grease(c)], [], kept, b"")


def check_server_choice(hello: ClientHello, version: int, cipher: int, *,
                        signature: int | None = None) -> None:
    """Raise ``TlsPolicyError`` unless ``version`` and ``cipher`` (the server's choices, wire
    values) are among those the client offered. ``signature``, when the engine knows it, is
    the SignatureScheme the server signed the handshake with (ServerKeyExchange or
    CertificateVerify; TLS 1.0 / 1.1 RSA signatures are 0xff01, MD5+SHA-1): a SHA-1 or MD5
    one is refused like such a certificate signature (and a TLS 1.2 one must be offered)."""
    offered = _offered_versions(hello)
    if version not in offered:
        low, high = min(offered), max(offered)
        span = version_name(low) if low == high else f"{version_name(low)} to {version_name(high)}"
        raise TlsPolicyError(f"the server chose {version_name(version)}; the client offered "
                             f"only {span}")
    if is_grease(cipher) or cipher in _SIGNALLING_SUITES or cipher not in hello.cipher_suites:
        raise TlsPolicyError(f"the server chose cipher suite 0x{cipher:04x}, which the client "
                             f"did not offer")
    if (version == TLS1_3) != (cipher >> 8 == 0x13):
        raise TlsPolicyError(f"the server chose cipher suite 0x{cipher:04x}, which is not a "
                             f"{version_name(version)} suite")
    if signature is None:
        return
    if signature in WEAK_SIGNATURE_SCHEMES:
        raise TlsPolicyError(f"the server signed the handshake with "
                             f"{WEAK_SIGNATURE_SCHEMES[signature]} ({version_name(version)})")
    offered_schemes = hello.signature_algorithms
    if version >= TLS1_2 and offered_schemes and signature not in offered_schemes:
        raise TlsPolicyError(f"the server signed the handshake with signature scheme "
                             f"0x{signature:04x}, which the client did not offer")


def _who(cert: x509.Certificate, depth: int) -> str:
    try:
        names = cert.subject.rfc4514_string() or "an empty subject"
    except ValueError:
        names = "an unreadable subject"
    role = "leaf" if depth == 0 else f"chain certificate {depth}"
    return f"{role} ({names})"


def _check_key(cert: x509.Certificate, depth: int, curves: frozenset[str]) -> None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise TlsPolicyError(f"{_who(cert, depth)} has a key that cannot be read: "
                             f"{error}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise TlsPolicyError(f"{_who(cert, depth)} has an RSA key of {key.key_size} bits "
                                 f"(at least {MIN_RSA_BITS} required)")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in curves:
            raise TlsPolicyError(f"{_who(cert, depth)} has an EC key on {key.curve.name}, "
                                 f"neither P-256/384/521 nor a curve the client offered")
    elif isinstance(key, dsa.DSAPublicKey):
        raise TlsPolicyError(f"{_who(cert, depth)} has a DSA key")


def _check_signature(cert: x509.Certificate, depth: int) -> None:
    oid = cert.signature_algorithm_oid.dotted_string
    if oid in _WEAK_OIDS:
        raise TlsPolicyError(f"{_who(cert, depth)} is signed with {_WEAK_OIDS[oid]}")
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise TlsPolicyError(f"{_who(cert, depth)} is signed with an unknown algorithm "
                             f"({oid})") from None
    if isinstance(digest, WEAK_DIGESTS):
        raise TlsPolicyError(f"{_who(cert, depth)} is signed with {digest.name.upper()}")


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def check_chain(chain: list[x509.Certificate], offered_groups: Sequence[int]) -> None:
    """Raise ``TlsPolicyError`` if the chain (leaf first) falls below the baseline. Every
    certificate's key is checked; every signature except the trust anchor's own (the last
    certificate, when it is self-issued: nothing relies on that signature)."""
    if not chain:
        raise TlsPolicyError("the server sent no certificate")
    curves = BASELINE_CURVES | {GROUP_CURVES[g] for g in offered_groups if g in GROUP_CURVES}
    last = len(chain) - 1
    for depth, cert in enumerate(chain):
        _check_key(cert, depth, curves)
        if depth == last and _self_issued(cert):
            continue
        _check_signature(cert, depth)

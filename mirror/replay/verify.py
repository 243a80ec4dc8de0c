"""Server authentication: the certificate chain to the caller's trust, and handshake signatures.

``verify_chain`` builds and checks the chain (trust: CA certificates, or a ``Store`` made once
with ``load_trust``) with ``cryptography.x509.verification`` (WebPKI
profile) for a DNS name or an IP address at time ``now``; ``insecure=True`` (the caller's
explicit choice) skips only that step. ``server_chain`` is what a handshake calls: it parses the
DER chain and verifies it, or takes the verdict from a ``mirror.verified_chains`` cache (a
chain that verified for the same bytes, name and trust, within its validity and a maximum
age); only successes are cached, and the handshake's own signature and Finished are checked
every time.
``verify_signature`` checks a CertificateVerify (TLS 1.3, over the transcript hash) or
ServerKeyExchange (TLS 1.2) signature with the leaf's key for one of the schemes the client
offered. Failures raise :class:`ReplayError` (``certificate``,
``bad-signature``). ``verify_delegated_credential`` checks an RFC 9345 delegated credential
and gives the key the CertificateVerify must then be made with.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    DNSName,
    IPAddress,
    PolicyBuilder,
    Store,
    Subject,
    VerificationError,
)

from mirror.replay.errors import ReplayError
from mirror.verified_chains import VerifiedChains

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512()}
# scheme -> (kind, hash, curve bound in TLS 1.3)
SCHEMES: dict[int, tuple[str, str | None, type | None]] = {
    0x0201: ("rsa-pkcs1", "sha1", None), 0x0401: ("rsa-pkcs1", "sha256", None),
    0x0501: ("rsa-pkcs1", "sha384", None), 0x0601: ("rsa-pkcs1", "sha512", None),
    0x0203: ("ecdsa", "sha1", None), 0x0403: ("ecdsa", "sha256", ec.SECP256R1),
    0x0503: ("ecdsa", "sha384", ec.SECP384R1), 0x0603: ("ecdsa", "sha512", ec.SECP521R1),
    0x0804: ("rsa-pss", "sha256", None), 0x0805: ("rsa-pss", "sha384", None),
    0x0806: ("rsa-pss", "sha512", None), 0x0809: ("rsa-pss", "sha256", None),
    0x080A: ("rsa-pss", "sha384", None), 0x080B: ("rsa-pss", "sha512", None),
    0x0807: ("ed25519", None, None), 0x0808: ("ed448", None, None),
}
_DER = Encoding.DER
TLS13_CONTEXT = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00"


def load_chain(ders: list[bytes]) -> list[x509.Certificate]:
    if not ders:
        raise ReplayError("certificate", "the server sent no certificate", alert=42)
    try:
        chain = [x509.load_der_x509_certificate(der) for der in ders]
        chain[0].public_key()  # the key the handshake signatures are checked with
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as error:
        raise ReplayError("decode", f"a server certificate does not parse: {error}",
                          alert=42) from None
    return chain


def load_trust(path: str) -> Store:
    """The CA certificates of a PEM file (a system bundle, ``--upstream-ca``) as a Store, built
    once: building one costs about as much as a handshake (~1 ms for 150 CAs)."""
    import warnings

    with open(path, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old roots with non-positive serial numbers
        return Store(x509.load_pem_x509_certificates(handle.read()))


def verify_chain(chain: list[x509.Certificate], *, trust: list[x509.Certificate] | Store,
                 server_name: str | None, now: datetime | None = None,
                 insecure: bool = False) -> list[x509.Certificate]:
    """The verified chain (leaf first, root last), or ``chain`` itself when ``insecure``."""
    if insecure:
        return chain
    if not server_name:
        raise ReplayError("certificate", "no server name or address to verify the chain for",
                          alert=80)
    if not isinstance(trust, Store) and not trust:
        raise ReplayError("certificate", "no trusted certificate authorities", alert=48)
    subject: Subject
    try:
        subject = IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        try:
            subject = DNSName(server_name)
        except ValueError:
            raise ReplayError("certificate", f"{server_name!r} is not a DNS name or an IP "
                              "address", alert=80) from None
    when = now or datetime.now(UTC)
    store = trust if isinstance(trust, Store) else Store(trust)
    verifier = (PolicyBuilder().store(store).time(when)
                .build_server_verifier(subject))
    try:
        return verifier.verify(chain[0], chain[1:])
    except (VerificationError, ValueError, UnsupportedAlgorithm) as error:
        raise ReplayError("certificate", f"chain for {server_name} does not verify: {error}",
                          alert=42) from None


SHARED_CHAINS = VerifiedChains()  # the default cache of every ReplayConfig


def _trust_key(trust: list[x509.Certificate] | Store):
    """A ``Store`` by identity (an entry keeps it alive), CA certificates by their contents."""
    return trust if isinstance(trust, Store) else tuple(trust)


def server_chain(ders: list[bytes], *, trust: list[x509.Certificate] | Store,
                 server_name: str | None, now: datetime | None = None, insecure: bool = False,
                 cache: VerifiedChains | None = None) -> list[x509.Certificate]:
    """The server's chain (leaf first), verified as ``verify_chain`` does, or from ``cache``
    when these exact bytes verified for this name and trust before (an entry answers while
    ``now``, by default the cache's clock, lies in the verified path's validity and at most
    the cache's ``max_age`` after the verification)."""
    if insecure or cache is None or not server_name or not ders:
        return verify_chain(load_chain(ders), trust=trust, server_name=server_name, now=now,
                            insecure=insecure)
    key = (tuple(ders), server_name, _trust_key(trust))
    at = None if now is None else now.timestamp()
    chain = cache.get(key, now=at)
    if chain is None:
        chain = verify_chain(load_chain(ders), trust=trust, server_name=server_name, now=now)
        cache.put_path(key, chain, chain, now=at)
    return list(chain)


def verify_signature(key, scheme: int, signature: bytes, data: bytes,
                     *, offered: Sequence[int], tls13: bool) -> None:
    """Check ``signature`` over ``data`` (the signed content, not yet hashed) with public ``key``
    (the leaf's, or a delegated credential's)."""
    if scheme not in offered:
        raise ReplayError("bad-signature", f"signature scheme {scheme:#06x} was not offered",
                          alert=47)
    kind, hash_name, curve = SCHEMES.get(scheme, ("?", None, None))
    if kind == "?" or (tls13 and (kind == "rsa-pkcs1" or hash_name == "sha1")):
        raise ReplayError("bad-signature", f"signature scheme {scheme:#06x} is not allowed here",
                          alert=47)
    algorithm = _HASHES[hash_name] if hash_name else None
    try:
        if kind == "rsa-pss" and algorithm is not None and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PSS(padding.MGF1(algorithm),
                                                    algorithm.digest_size), algorithm)
        elif kind == "rsa-pkcs1" and algorithm is not None and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif (kind == "ecdsa" and algorithm is not None
              and isinstance(key, ec.EllipticCurvePublicKey)):
            if tls13 and curve is not None and not isinstance(key.curve, curve):
                raise ReplayError("bad-signature", f"scheme {scheme:#06x} does not match the "
                                  f"certificate's curve {key.curve.name}", alert=47)
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif (kind == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey)
              or kind == "ed448" and isinstance(key, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            raise ReplayError("bad-signature", f"scheme {scheme:#06x} does not fit the "
                              "certificate's key", alert=47)
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise ReplayError("bad-signature", f"the server's signature ({scheme:#06x}) is wrong",
                          alert=51) from None


DELEGATION_USAGE = x509.ObjectIdentifier("1.3.6.1.4.1.44363.44")
DC_CONTEXT = b" " * 64 + b"TLS, server delegated credentials\x00"
DC_MAX_VALIDITY = timedelta(days=7)


def verify_delegated_credential(data: bytes, leaf: x509.Certificate, *, dc_schemes: Sequence[int],
                                signature_schemes: Sequence[int], now: datetime | None = None):
    """(public key, scheme) the server's CertificateVerify must use, from a delegated credential
    (RFC 9345 4.1.3) the leaf signed; a ``bad-signature`` or ``certificate`` ReplayError else."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    from mirror.replay.messages import Reader

    r = Reader(data, "delegated_credential")
    valid_time, dc_scheme = r.uint(4), r.uint(2)
    spki = r.vec(3, 1)
    credential_end = r.pos
    algorithm = r.uint(2)
    signature = r.vec(2, 1)
    r.done()
    try:
        leaf.extensions.get_extension_for_oid(DELEGATION_USAGE)
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        raise ReplayError("certificate", "a delegated credential from a certificate without "
                          "DelegationUsage and KeyUsage", alert=42) from None
    if not usage.digital_signature:
        raise ReplayError("certificate", "delegated credential: the certificate may not sign",
                          alert=42)
    when = now or datetime.now(UTC)
    expiry = leaf.not_valid_before_utc + timedelta(seconds=valid_time)
    if when >= expiry or expiry - when > DC_MAX_VALIDITY:
        raise ReplayError("certificate", f"delegated credential valid until {expiry:%Y-%m-%d %H:%M}: "
                          "expired or longer than 7 days", alert=42)
    if dc_scheme not in dc_schemes:
        raise ReplayError("bad-signature", f"delegated credential scheme {dc_scheme:#06x} was not "
                          "offered", alert=47)
    verify_signature(leaf.public_key(), algorithm, signature,
                     DC_CONTEXT + leaf.public_bytes(_DER) + data[:credential_end]
                     + algorithm.to_bytes(2, "big"), offered=signature_schemes, tls13=True)
    try:
        return load_der_public_key(spki), dc_scheme
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ReplayError("decode", "delegated credential key does not parse",
                          alert=42) from None

"""Certificates for hostile-server tests, minted with ``cryptography``: a good CA and leaf, and
one leaf per way a server's certificate can be wrong (name, trust, dates, usage, issuer, key,
signature). ``write_pems`` puts a leaf's chain and key where a TLS server can load them."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass
class Issued:
    cert: x509.Certificate
    key: object
    chain: list[x509.Certificate]          # what the server sends after the leaf


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def rsa_key(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_ca(cn: str = "Policy Test CA", key=None, issuer: Issued | None = None,
            digest: hashes.HashAlgorithm | None = None, ca: bool = True) -> Issued:
    key = key or ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer else key
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn))
               .issuer_name(issuer.cert.subject if issuer else _name(cn))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, ca, ca, False,
                                            False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    cert = _sign(builder, signer, digest)
    return Issued(cert, key, ([issuer.cert, *issuer.chain] if issuer else []))


_SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")
_SHA1_RSA = bytes.fromhex("300d06092a864886f70d0101050500")


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


def _sign(builder: x509.CertificateBuilder, signer, digest) -> x509.Certificate:
    """``builder`` signed; SHA-1 (which ``cryptography`` no longer signs certificates with) by
    signing with SHA-256 and rewriting the algorithm and signature by hand (RSA signers)."""
    digest = digest or hashes.SHA256()
    if not isinstance(digest, hashes.SHA1):
        return builder.sign(signer, digest)
    assert isinstance(signer, rsa.RSAPrivateKey), "SHA-1 certificates need an RSA signer"
    tbs = builder.sign(signer, hashes.SHA256()).tbs_certificate_bytes
    assert tbs.count(_SHA256_RSA) == 1
    tbs = tbs.replace(_SHA256_RSA, _SHA1_RSA)
    signature = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    der = _der(0x30, tbs + _SHA1_RSA + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_leaf(issuer: Issued | None, name: str, *, key=None, digest: hashes.HashAlgorithm | None = None,
              not_before=None, not_after=None, usage=ExtendedKeyUsageOID.SERVER_AUTH) -> Issued:
    """A server certificate for ``name``; ``issuer`` None: self-signed."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer else key
    builder = (x509.CertificateBuilder()
               .subject_name(_name(name))
               .issuer_name(issuer.cert.subject if issuer else _name(name))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - DAY)
               .not_valid_after(not_after or NOW + 10 * DAY)
               .add_extension(x509.SubjectAlternativeName([_san(name)]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    cert = _sign(builder, signer, digest)
    return Issued(cert, key, ([issuer.cert, *issuer.chain] if issuer else []))


def write_pems(issued: Issued, directory: Path, stem: str) -> tuple[Path, Path]:
    """(certificate chain file, key file) for a server."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                   for c in [issued.cert, *issued.chain]))
    key_path.write_bytes(issued.key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return cert_path, key_path


def ca_pem(issued: Issued, path: Path) -> Path:
    path.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    return path

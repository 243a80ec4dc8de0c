"""The mirror certificate authority: create it once, keep its key private, load it safely.

Layout of a CA directory::

    ca.pem       the CA certificate (public: hand it to the clients that should trust mirror)
    ca-key.pem   its private key, PKCS#8 PEM, mode 0600, owned by the user running mirror

The CA key is EC P-256 (not RSA-2048): every TLS connection the proxy terminates needs a leaf
signed by this key, and a P-256 ECDSA signature costs tens of microseconds where an RSA-2048
one costs about a millisecond; generating the key is instant (RSA key generation takes
100 ms or more); certificates are smaller; and every TLS stack a browser or HTTP library ships
(OpenSSL, BoringSSL, NSS, SChannel, Secure Transport) accepts P-256 roots.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CERT_FILE = "ca.pem"
KEY_FILE = "ca-key.pem"
CA_LIFETIME = dt.timedelta(days=3650)
BACKDATE = dt.timedelta(days=1)  # notBefore in the past: clients with a slow clock still accept

CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CAError(Exception):
    """A CA file is missing, unsafe (key readable by others / owned by someone else), corrupt,
    or does not match its partner. The message names the file and says how to fix it."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A loaded CA: its certificate, its private key, and where they live.

    Build one with `CertificateAuthority.init(directory)` (create or reuse) or
    `CertificateAuthority.load(directory)` (reuse only). `created` tells whether this call
    generated a new CA (True only from `init` on an empty directory).
    """

    directory: Path
    cert: x509.Certificate
    key: CAKey
    created: bool = False

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @classmethod
    def init(cls, directory: Path | str) -> CertificateAuthority:
        """Reuse the CA in `directory`, or create one there if the directory has none.

        Never overwrites: if either file exists the CA is loaded (with all of `load`'s checks).
        The directory is created with mode 0700 if missing; the key file is created with
        O_CREAT|O_EXCL and mode 0600, so it is never visible with wider permissions.
        """
        directory = Path(directory)
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        if os.path.lexists(cert_path) or os.path.lexists(key_path):
            return cls.load(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _new_ca_certificate(key)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        try:
            create_file(key_path, key_pem, 0o600)
        except FileExistsError:  # another process initialised it between our check and now
            return cls.load(directory)
        create_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(directory, cert, key, created=True)

    @classmethod
    def load(cls, directory: Path | str) -> CertificateAuthority:
        """Load the CA in `directory`; raise CAError unless both files are present, the key
        is private to the current user, both parse, they match, and the cert is a valid CA."""
        directory = Path(directory)
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        _require_files(directory, cert_path, key_path)
        key = _parse_key(_read_private_file(key_path), key_path)
        cert = _parse_cert(_read_file(cert_path), cert_path)
        _check_pair(cert, key, cert_path, key_path)
        _check_usable_ca(cert, cert_path, directory)
        return cls(directory, cert, key, created=False)

    def export(self, fmt: Literal["pem", "der"] = "pem") -> bytes:
        """The CA certificate (never the key) as PEM or DER bytes."""
        if fmt == "pem":
            return self.cert.public_bytes(serialization.Encoding.PEM)
        if fmt == "der":
            return self.cert.public_bytes(serialization.Encoding.DER)
        raise ValueError(f"unknown certificate format {fmt!r} (use 'pem' or 'der')")

    def trust_instructions(self) -> str:
        """How to make browsers, the system store and HTTP libraries trust this CA."""
        from mirror.ca.trust_help import trust_instructions

        return trust_instructions(self.cert_path)


def create_file(path: Path, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Write a new file that must not exist yet, created with `mode` from its first byte on
    (fsync'ed unless `durable` is False, as for throw-away leaf files)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
    except BaseException:
        os.unlink(path)
        raise


def _new_ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    # A random suffix: two installs never share a subject, so users (and NSS, which keys its
    # database by subject) can tell them apart.
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mirror"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"mirror CA {secrets.token_hex(4)}"),
    ])
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _require_files(directory: Path, cert_path: Path, key_path: Path) -> None:
    has_cert, has_key = os.path.lexists(cert_path), os.path.lexists(key_path)
    if not has_cert and not has_key:
        raise CAError(f"no CA in {directory}: {cert_path} and {key_path} are missing; "
                      f"create one with CertificateAuthority.init({str(directory)!r})")
    if not has_cert:
        raise CAError(f"{cert_path} is missing but {key_path} exists (an interrupted init?); "
                      f"restore {cert_path}, or remove {key_path} and init again "
                      f"(clients must then trust the new CA)")
    if not has_key:
        raise CAError(f"{key_path} is missing but {cert_path} exists; restore {key_path}, "
                      f"or move {cert_path} away and init again (clients must then trust the new CA)")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CAError(f"cannot read {path}: {error.strerror or error}") from error


def _read_private_file(path: Path) -> bytes:
    """Read the key file, checking the opened file itself (no check-then-open race)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise CAError(f"cannot read {path}: {error.strerror or error}") from error
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CAError(f"{path} is not a regular file")
        me = os.geteuid()
        if info.st_uid != me:
            raise CAError(f"{path} is owned by uid {info.st_uid}, not by the current user "
                          f"(uid {me}); the CA key must be private. Fix: chown {me} {path} "
                          f"&& chmod 600 {path}")
        if info.st_mode & 0o077:
            raise CAError(f"{path} is accessible by group/others (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); the CA key must be private. "
                          f"Fix: chmod 600 {path}")
        return handle.read()


def _parse_key(data: bytes, path: Path) -> CAKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as error:  # encrypted key, no password given
        raise CAError(f"{path} is an encrypted private key; mirror needs it unencrypted "
                      f"(openssl pkey -in {path} -out {path}.plain, then replace it)") from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CAError(f"{path} is not a valid PEM private key ({error}); restore it from a "
                      f"backup, or move the CA directory away and init again") from error
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CAError(f"{path} holds a {type(key).__name__}; the CA key must be EC or RSA")
    return key


def _parse_cert(data: bytes, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise CAError(f"{path} is not a valid PEM certificate ({error}); restore it from a "
                      f"backup, or move the CA directory away and init again") from error


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_pair(cert: x509.Certificate, key: CAKey, cert_path: Path, key_path: Path) -> None:
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise CAError(f"{key_path} does not match {cert_path} (different key pairs); restore "
                      f"the matching pair, or move both away and init again")


def _check_usable_ca(cert: x509.Certificate, path: Path, directory: Path) -> None:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CAError(f"{path} is not a CA certificate (basicConstraints CA:TRUE missing)")
    expiry = cert.not_valid_after_utc
    if expiry <= dt.datetime.now(dt.UTC):
        raise CAError(f"{path} expired on {expiry:%Y-%m-%d}; move {directory} away and init "
                      f"again (clients must then trust the new CA)")

"""Leaf certificates for the names clients connect to: minted by the CA on demand, cached, ready for ssl.

Speed is the point: the proxy asks for a leaf (or a server `ssl.SSLContext`) on every
connection it terminates. So:
- one EC P-256 leaf key per cache, generated once: minting a leaf is one ECDSA signature;
- the issuer name and authorityKeyIdentifier are computed once per cache;
- leaves live in a bounded LRU (thread-safe; a name being minted by one thread is waited
  for by the others, never minted twice) and re-minted only when close to expiry;
- each Leaf caches its server SSLContext per ALPN list, so a hit costs a dict lookup. Building
  one the first time costs more than minting (OpenSSL 3 decodes the PEM key in
  load_cert_chain: ~0.5 ms), which is why contexts are kept rather than rebuilt.

Files: `ssl.SSLContext.load_cert_chain` only reads files, so the cache owns a private 0700
temporary directory holding the shared key (0600) and one PEM file per leaf. It is made in
RAM-backed storage when there is some ($XDG_RUNTIME_DIR, then /dev/shm): creating a file there
costs microseconds, on a disk file system it can cost a millisecond (more than the signature),
and the leaf key never reaches a disk. A leaf's file is deleted when the Leaf object is
garbage collected (after LRU eviction, once no caller holds it), and the directory when the
cache is closed or collected.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
import re
import shutil
import ssl
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mirror.ca.authority import CertificateAuthority, create_file

DEFAULT_MAX_ENTRIES = 1024
LEAF_BACKDATE = dt.timedelta(days=1)      # notBefore = now - 1 day (clock skew)
LEAF_LIFETIME = dt.timedelta(days=397)    # notAfter - notBefore; browsers refuse > 398 days
RENEW_BEFORE = dt.timedelta(days=1)       # a cached leaf this close to notAfter is re-minted
MAX_CN_LENGTH = 64                        # X.520 ub-common-name; longer names go in the SAN only

_DNS_LABEL = re.compile(r"[a-z0-9_-]{1,63}")  # lenient: real SNIs have "_" and odd hyphens
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False)
_SERVER_AUTH = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
_LONG_NAME_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mirror")])


def default_server_context() -> ssl.SSLContext:
    """A fresh server-side context with Python's defaults (the `context_factory` default)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True, weakref_slot=True, eq=False)
class Leaf:
    """One minted server certificate and everything needed to serve it (compared by identity)."""

    identity: str                 # the DNS name (lower-case, A-label) or canonical IP literal
    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes                # the cache's shared leaf key, PKCS#8 PEM
    chain_path: Path              # PEM of the leaf (the root is the client's anchor, not sent)
    key_path: Path                # PEM of the key, mode 0600
    not_after: dt.datetime
    _context_factory: Callable[[], ssl.SSLContext] = field(repr=False, compare=False)
    _contexts: dict[tuple[str, ...], ssl.SSLContext] = field(
        default_factory=dict, repr=False, compare=False)

    def built_context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext | None:
        """``ssl_context(alpn)`` if it was built before, else None (never builds)."""
        return self._contexts.get(tuple(alpn))

    def ssl_context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A server SSLContext serving this leaf and offering `alpn` (server preference order);
        built once per ALPN list, then shared (SSLContext is safe to share across threads)."""
        key = tuple(alpn)
        context = self._contexts.get(key)
        if context is None:
            context = self._context_factory()
            context.load_cert_chain(self.chain_path, self.key_path)
            if key:
                context.set_alpn_protocols(list(key))
            context = self._contexts.setdefault(key, context)  # atomic: first one wins
        return context


class LeafCache:
    """Mints and caches leaves signed by `ca`. Thread-safe. Use as a context manager or call
    `close()` to remove its temporary files (they are also removed when it is collected).

    `context_factory` returns a fresh server SSLContext for `Leaf.ssl_context` (set protocol
    versions, ciphers, keylog file there); `clock` returns the current aware UTC datetime;
    `temp_parent` is where the private file directory is made (default: see the module doc).
    """

    def __init__(self, ca: CertificateAuthority, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 context_factory: Callable[[], ssl.SSLContext] = default_server_context,
                 clock: Callable[[], dt.datetime] = _utcnow,
                 temp_parent: Path | str | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ca = ca
        self._max_entries = max_entries
        self._context_factory = context_factory
        self._clock = clock
        self._issuer = ca.cert.subject
        self._aki = _authority_key_identifier(ca.cert)
        self._ca_not_after = ca.cert.not_valid_after_utc
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._public_key = self._key.public_key()
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self._public_key)
        self._key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        self.directory = _private_directory(temp_parent)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.directory), True)
        self._key_path = self.directory / "leaf-key.pem"
        create_file(self._key_path, self._key_pem, 0o600, durable=False)
        self._lock = threading.Lock()
        self._leaves: OrderedDict[str, Leaf] = OrderedDict()
        self._minting: dict[str, Future[Leaf]] = {}
        self.minted = 0  # leaves signed so far (a statistic: hits do not change it)

    def get(self, server_name: str | None, ip: str | None = None) -> Leaf:
        """The leaf for `server_name` (the SNI: a DNS name, or an IP literal) or, when there is
        no server name, for `ip`. `ip` is ignored when a server name is given (clients verify
        against the name they sent; keying on the name alone keeps the cache hit rate high).
        Raises ValueError for an unusable name/address or when both are missing."""
        identity, san = leaf_identity(server_name, ip)
        now = self._clock()
        with self._lock:
            if not self._cleanup.alive:
                raise RuntimeError("LeafCache is closed")
            leaf = self._leaves.get(identity)
            if leaf is not None and leaf.not_after - now > RENEW_BEFORE:
                self._leaves.move_to_end(identity)
                return leaf
            pending = self._minting.get(identity)
            if pending is None:
                pending = self._minting[identity] = Future()
                mine = True
            else:
                mine = False
        if not mine:
            return pending.result()
        try:
            leaf = self._mint(identity, san, now)
        except BaseException as error:
            with self._lock:
                del self._minting[identity]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._minting[identity]
            self._leaves[identity] = leaf
            self._leaves.move_to_end(identity)
            while len(self._leaves) > self._max_entries:
                self._leaves.popitem(last=False)
            self.minted += 1
        pending.set_result(leaf)
        return leaf

    def ssl_context(self, server_name: str | None, ip: str | None = None,
                    alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """Shortcut for `get(server_name, ip).ssl_context(alpn)`."""
        return self.get(server_name, ip).ssl_context(alpn)

    def cached_context(self, server_name: str | None, ip: str | None = None,
                       alpn: Sequence[str] = ()) -> ssl.SSLContext | None:
        """`ssl_context(server_name, ip, alpn)` if it is ready (a fresh leaf whose context for
        `alpn` was built before), else None: nothing is minted or built, so it never blocks."""
        try:
            identity, _ = leaf_identity(server_name, ip)
        except ValueError:
            return None
        now = self._clock()
        with self._lock:
            leaf = self._leaves.get(identity)
            if leaf is None or leaf.not_after - now <= RENEW_BEFORE:
                return None
            self._leaves.move_to_end(identity)
        return leaf.built_context(alpn)

    def __len__(self) -> int:
        return len(self._leaves)

    def close(self) -> None:
        """Forget all leaves and delete the temporary directory. Further `get`s raise."""
        with self._lock:
            self._leaves.clear()
            self._cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _mint(self, identity: str, san: x509.GeneralName, now: dt.datetime) -> Leaf:
        not_before = now - LEAF_BACKDATE
        not_after = min(not_before + LEAF_LIFETIME, self._ca_not_after)
        subject = (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
                   if len(identity) <= MAX_CN_LENGTH else _LONG_NAME_SUBJECT)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._issuer)
            .public_key(self._public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_SERVER_AUTH, critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(self._ski, critical=False)
            .sign(self._ca.key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        chain_path = self.directory / f"{cert.serial_number:040x}.pem"
        create_file(chain_path, cert_pem, 0o600, durable=False)
        leaf = Leaf(identity, cert, cert_pem, self._key_pem, chain_path, self._key_path,
                    cert.not_valid_after_utc, self._context_factory)
        weakref.finalize(leaf, _remove_quietly, str(chain_path))
        return leaf


@functools.lru_cache(maxsize=4096)
def leaf_identity(server_name: str | None, ip: str | None) -> tuple[str, x509.GeneralName]:
    """The cache key and SAN for a request: (canonical name, DNSName/IPAddress). Cached: it
    is asked on every connection, for the same few names."""
    if server_name is not None and server_name.strip():
        address = _parse_ip(server_name)
        if address is not None:
            return str(address), x509.IPAddress(address)
        name = normalize_dns_name(server_name)
        return name, x509.DNSName(name)
    if ip is not None and ip.strip():
        address = _parse_ip(ip)
        if address is None:
            raise ValueError(f"not an IP address: {ip!r}")
        return str(address), x509.IPAddress(address)
    raise ValueError("a leaf needs a server name or an IP address")


def normalize_dns_name(name: str) -> str:
    """Lower-case A-label form without the trailing dot; ValueError if not a usable DNS name.
    A leftmost "*" label is kept as is (the exact name asked for is what gets certified)."""
    text = name.strip().rstrip(".")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as error:
            raise ValueError(f"not a valid internationalised DNS name: {name!r}") from error
    text = text.lower()
    labels = text.split(".")
    if not text or len(text) > 253 or not all(
            _DNS_LABEL.fullmatch(label) or (label == "*" and index == 0)
            for index, label in enumerate(labels)):
        raise ValueError(f"not a valid DNS name: {name!r}")
    return text


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    candidate = candidate.split("%", 1)[0]  # an IPv6 zone id is not part of the address
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # a user-supplied CA without SKI
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _private_directory(parent: Path | str | None) -> Path:
    """A new 0700 directory (mkdtemp), preferably in RAM-backed storage."""
    if parent is not None:
        return Path(tempfile.mkdtemp(prefix="mirror-leaves-", dir=parent))
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            try:
                return Path(tempfile.mkdtemp(prefix="mirror-leaves-", dir=candidate))
            except OSError:
                continue
    return Path(tempfile.mkdtemp(prefix="mirror-leaves-"))


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

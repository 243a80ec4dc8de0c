"""Key derivation: the TLS 1.3 key schedule (RFC 8446 7.1) and the TLS 1.2 PRF (RFC 5246 5).

:class:`Suite` describes a cipher suite (AEAD, key and IV lengths, hash). ``KeySchedule`` walks
early -> handshake -> master secrets and gives traffic keys and Finished keys; ``prf12`` is the
TLS 1.2 P_hash PRF.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305


@dataclass(frozen=True, slots=True)
class Suite:
    code: int
    name: str
    aead: str  # "aes-gcm", "chacha20", "aes-ccm", "aes-ccm8"
    key_len: int
    hash_name: str  # "sha256" | "sha384"
    iv_len: int = 12  # TLS 1.2 GCM: 4 implicit bytes (explicit 8 in each record)
    tls12_kex: str | None = None  # "ecdhe-rsa" | "ecdhe-ecdsa" for TLS 1.2 suites

    @property
    def hash_len(self) -> int:
        return 32 if self.hash_name == "sha256" else 48

    @property
    def tag_len(self) -> int:
        return 8 if self.aead == "aes-ccm8" else 16

    def cipher(self, key: bytes):
        if self.aead == "aes-gcm":
            return AESGCM(key)
        if self.aead == "chacha20":
            return ChaCha20Poly1305(key)
        return AESCCM(key, tag_length=self.tag_len)


TLS13_SUITES = {s.code: s for s in (
    Suite(0x1301, "TLS_AES_128_GCM_SHA256", "aes-gcm", 16, "sha256"),
    Suite(0x1302, "TLS_AES_256_GCM_SHA384", "aes-gcm", 32, "sha384"),
    Suite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", "chacha20", 32, "sha256"),
    Suite(0x1304, "TLS_AES_128_CCM_SHA256", "aes-ccm", 16, "sha256"),
    Suite(0x1305, "TLS_AES_128_CCM_8_SHA256", "aes-ccm8", 16, "sha256"),
)}

TLS12_SUITES = {s.code: s for s in (
    Suite(0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "aes-gcm", 16, "sha256", 4,
          "ecdhe-ecdsa"),
    Suite(0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "aes-gcm", 32, "sha384", 4,
          "ecdhe-ecdsa"),
    Suite(0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "aes-gcm", 16, "sha256", 4,
          "ecdhe-rsa"),
    Suite(0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "aes-gcm", 32, "sha384", 4,
          "ecdhe-rsa"),
    Suite(0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "chacha20", 32, "sha256", 12,
          "ecdhe-rsa"),
    Suite(0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "chacha20", 32, "sha256", 12,
          "ecdhe-ecdsa"),
)}


# name -> (constructor, block size, digest size). HMAC (RFC 2104) is computed on these directly:
# the one-shot hmac.digest of OpenSSL 3 fetches the algorithm on every call, which costs twice
# the two hashes; the pads are made with integer XOR (no table lookup indexed by key bytes).
_HASHES = {"sha256": (hashlib.sha256, 64, 32), "sha384": (hashlib.sha384, 128, 48)}
_IPAD = {name: int.from_bytes(b"\x36" * block, "big") for name, (_, block, _) in _HASHES.items()}
_OPAD = {name: int.from_bytes(b"\x5c" * block, "big") for name, (_, block, _) in _HASHES.items()}


def hmac_hash(hash_name: str, key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256/384 of ``data`` under ``key``."""
    new, block, _ = _HASHES[hash_name]
    if len(key) > block:
        key = new(key).digest()
    k = int.from_bytes(key.ljust(block, b"\0"), "big")
    inner = new((k ^ _IPAD[hash_name]).to_bytes(block, "big") + data).digest()
    return new((k ^ _OPAD[hash_name]).to_bytes(block, "big") + inner).digest()


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    return hmac_hash(hash_name, salt, ikm)


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac_hash(hash_name, prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    info = struct.pack("!HB", length, 6 + len(label)) + b"tls13 " + label + bytes([len(context)])
    if length <= _HASHES[hash_name][2]:  # one block, always the case in TLS 1.3
        return hmac_hash(hash_name, secret, info + context + b"\x01")[:length]
    return hkdf_expand(hash_name, secret, info + context, length)


def derive_secret(hash_name: str, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return expand_label(hash_name, secret, label, transcript_hash, _HASHES[hash_name][2])


def _empty_hash(hash_name: str) -> bytes:
    return _HASHES[hash_name][0]().digest()


# Without a PSK the early secret and the "derived" secret after it are constants of the hash.
_EARLY_DERIVED = {
    name: derive_secret(name, hkdf_extract(name, bytes(size), bytes(size)), b"derived",
                        _empty_hash(name))
    for name, (_, _, size) in _HASHES.items()}


class KeySchedule:
    """The TLS 1.3 key schedule without PSK (the replayed hello never offers one)."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self._derived = _EARLY_DERIVED[suite.hash_name]
        self.handshake_secret = b""
        self.master_secret = b""

    def handshake(self, shared: bytes, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """(client, server) handshake traffic secrets after ServerHello."""
        h = self.suite.hash_name
        self.handshake_secret = hkdf_extract(h, self._derived, shared)
        client = derive_secret(h, self.handshake_secret, b"c hs traffic", transcript_hash)
        server = derive_secret(h, self.handshake_secret, b"s hs traffic", transcript_hash)
        derived = derive_secret(h, self.handshake_secret, b"derived", _empty_hash(h))
        self.master_secret = hkdf_extract(h, derived, bytes(self.suite.hash_len))
        return client, server

    def application(self, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """(client, server) application traffic secrets after the server Finished."""
        h = self.suite.hash_name
        return (derive_secret(h, self.master_secret, b"c ap traffic", transcript_hash),
                derive_secret(h, self.master_secret, b"s ap traffic", transcript_hash))

    def traffic_keys(self, secret: bytes) -> tuple[bytes, bytes]:
        h = self.suite.hash_name
        return (expand_label(h, secret, b"key", b"", self.suite.key_len),
                expand_label(h, secret, b"iv", b"", 12))

    def finished(self, base_secret: bytes, transcript_hash: bytes) -> bytes:
        h = self.suite.hash_name
        key = expand_label(h, base_secret, b"finished", b"", self.suite.hash_len)
        return hmac_hash(h, key, transcript_hash)

    def next_secret(self, secret: bytes) -> bytes:
        h = self.suite.hash_name
        return expand_label(h, secret, b"traffic upd", b"", self.suite.hash_len)


def prf12(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.2 PRF: P_hash(secret, label + seed)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac_hash(hash_name, secret, a)
        out += hmac_hash(hash_name, secret, a + seed)
    return out[:length]

"""Key derivation: the TLS 1.3 key schedule (RFC 8446 7.1) and the TLS 1.2 PRF (RFC 5246 5).

:class:`Suite` describes a cipher suite (AEAD, key and IV lengths, hash). ``KeySchedule`` walks
early -> handshake -> master secrets and gives traffic keys and Finished keys; ``prf12`` is the
TLS 1.2 P_hash PRF.
"""

from __future__ import annotations

import hashlib
import hmac
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


def hmac_hash(hash_name: str, key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hash_name)


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, hash_name)


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hash_name)
        out += block
        counter += 1
    return out[:length]


def expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + bytes([len(context)]) + context
    return hkdf_expand(hash_name, secret, info, length)


def derive_secret(hash_name: str, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return expand_label(hash_name, secret, label, transcript_hash,
                        hashlib.new(hash_name).digest_size)


class KeySchedule:
    """The TLS 1.3 key schedule without PSK (the replayed hello never offers one)."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        h = suite.hash_name
        zeros = bytes(suite.hash_len)
        early = hkdf_extract(h, zeros, zeros)
        self._derived = derive_secret(h, early, b"derived", hashlib.new(h).digest())
        self.handshake_secret = b""
        self.master_secret = b""

    def handshake(self, shared: bytes, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """(client, server) handshake traffic secrets after ServerHello."""
        h = self.suite.hash_name
        self.handshake_secret = hkdf_extract(h, self._derived, shared)
        client = derive_secret(h, self.handshake_secret, b"c hs traffic", transcript_hash)
        server = derive_secret(h, self.handshake_secret, b"s hs traffic", transcript_hash)
        derived = derive_secret(h, self.handshake_secret, b"derived", hashlib.new(h).digest())
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
        return hmac.digest(key, transcript_hash, h)

    def next_secret(self, secret: bytes) -> bytes:
        h = self.suite.hash_name
        return expand_label(h, secret, b"traffic upd", b"", self.suite.hash_len)


def prf12(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.2 PRF: P_hash(secret, label + seed)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return out[:length]

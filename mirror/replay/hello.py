"""The replayed ClientHello: the client's own bytes with only its per-connection fields made fresh.

``rewrite_hello(raw)`` takes the client's ClientHello handshake message (``01 len body``, as
:func:`mirror.wire.tls.read_client_hello` keeps it in ``raw``) and returns a :class:`ReplayHello`:

- fresh: ``random``; ``legacy_session_id`` (same length, empty stays empty); every ``key_share``
  entry's key material (same groups, order and lengths; GREASE entries as sent); a GREASE ECH
  outer extension's ``config_id``, ``enc`` (a real X25519 public key when 32 bytes) and payload
  (same lengths).
- dropped: ``pre_shared_key`` and ``early_data`` (the proxy issues no tickets, so a PSK the
  client offers belongs to another server); a non-empty TLS 1.2 ``session_ticket`` is sent empty
  for the same reason. ``psk_key_exchange_modes`` stays: clients send it without a ticket too.
- everything else byte for byte: legacy version, cipher list, compression methods, every other
  extension in order with its bytes (GREASE, padding length, unknown and private ones).

``retry_hello(first, group, cookie)`` is the second hello after a HelloRetryRequest (RFC 8446
4.1.2): same random and session id, one fresh key share for the asked group, the server's cookie
right after key_share, no re-padding.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field, replace

from mirror.replay.errors import ReplayError
from mirror.replay.groups import KeyShare, new_share
from mirror.wire.errors import WireError
from mirror.wire.tls import (
    EXT_COOKIE,
    EXT_EARLY_DATA,
    EXT_ENCRYPTED_CLIENT_HELLO,
    EXT_KEY_SHARE,
    EXT_PRE_SHARED_KEY,
    EXT_SESSION_TICKET,
    ClientHello,
    EchOuter,
    Extension,
    KeyShareEntry,
    is_grease,
    parse_client_hello,
)

MAX_PLAINTEXT = 1 << 14


@dataclass(slots=True)
class ReplayHello:
    """A hello ready to send: the handshake ``message``, the parsed ``hello`` of it, the key
    shares by group (GREASE and groups we cannot compute have ``private = None``), the record
    plaintext lengths to send it in and the record-layer version, and what was changed."""

    message: bytes
    hello: ClientHello
    shares: list[KeyShare]
    record_version: int
    record_lengths: list[int]
    original: ClientHello
    dropped: list[int] = field(default_factory=list)

    def share_for(self, group: int) -> KeyShare | None:
        for share in self.shares:
            if share.group == group and share.private is not None:
                return share
        return None

    def records(self) -> bytes:
        """The hello in handshake records, split where the client split its own."""
        out, pos, msg = [], 0, self.message
        for length in self.record_lengths:
            if pos >= len(msg):
                break
            out.append(msg[pos:pos + length])
            pos += length
        while pos < len(msg):
            out.append(msg[pos:pos + MAX_PLAINTEXT])
            pos += MAX_PLAINTEXT
        head = struct.pack("!BH", 22, self.record_version)
        return b"".join(head + struct.pack("!H", len(f)) + f for f in out)


def _ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def _key_share_data(shares: list[KeyShare]) -> bytes:
    entries = b"".join(struct.pack("!HH", s.group, len(s.public)) + s.public for s in shares)
    return struct.pack("!H", len(entries)) + entries


def _fresh_ech(extension: Extension) -> Extension:
    """A GREASE ECH outer extension with fresh config_id, enc and payload of the same lengths."""
    old = extension.value
    if not isinstance(old, EchOuter) or old.ech_type != 0:
        return extension  # an inner marker (type 1) carries nothing fresh
    enc_len = len(old.enc)
    if enc_len == 32:
        from cryptography.hazmat.primitives.asymmetric import x25519

        enc = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    else:
        enc = os.urandom(enc_len)
    fresh = os.urandom(1 + old.payload_length)  # config_id, then the payload
    config_id = fresh[:1]
    data = (b"\x00" + extension.data[1:5] + config_id + struct.pack("!H", enc_len) + enc
            + struct.pack("!H", old.payload_length) + fresh[1:])
    return Extension(extension.type, data, EchOuter(0, old.kdf_id, old.aead_id, config_id[0],
                                                    enc, old.payload_length))


def _key_share_ext(shares: list[KeyShare]) -> Extension:
    return Extension(EXT_KEY_SHARE, _key_share_data(shares),
                     [KeyShareEntry(s.group, s.public) for s in shares])


def _assemble(hello: ClientHello, random: bytes, session_id: bytes,
              extensions: list[Extension]) -> ClientHello:
    """The hello with these fields, its ``raw`` message built field by field (no re-parse)."""
    block = b"".join(_ext(e.type, e.data) for e in extensions)
    body = struct.pack("!H", hello.legacy_version) + random
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", 2 * len(hello.cipher_suites))
    body += struct.pack(f"!{len(hello.cipher_suites)}H", *hello.cipher_suites)
    body += bytes([len(hello.compression_methods)]) + bytes(hello.compression_methods)
    if hello.extensions or extensions:
        body += struct.pack("!H", len(block)) + block
    if len(body) >= 1 << 24 or len(block) >= 1 << 16:
        raise ReplayError("hello", "the replayed hello would be too long")
    return replace(hello, random=random, session_id=session_id, extensions=extensions,
                   raw=b"\x01" + len(body).to_bytes(3, "big") + body, record_version=None,
                   consumed=0, record_lengths=[])


def _parse(message: bytes) -> ClientHello:
    try:
        return parse_client_hello(message)
    except WireError as error:
        raise ReplayError("hello", error.reason) from None


def rewrite_hello(original: ClientHello | bytes) -> ReplayHello:
    """The replayed first ClientHello (see the module docstring)."""
    if isinstance(original, (bytes, bytearray)):
        original = _parse(bytes(original))
    if original.legacy_version >> 8 != 3:
        raise ReplayError("hello", "a DTLS ClientHello cannot be replayed over TCP")
    shares: list[KeyShare] = []
    dropped: list[int] = []
    exts: list[Extension] = []
    for extension in original.extensions:
        kind = extension.type
        if kind in (EXT_PRE_SHARED_KEY, EXT_EARLY_DATA):
            dropped.append(kind)
            continue
        if kind == EXT_KEY_SHARE:
            for entry in original.key_share_entries:
                if is_grease(entry.group):
                    shares.append(KeyShare(entry.group, entry.key_exchange, None))
                else:
                    shares.append(new_share(entry.group, entry.key_length))
            extension = _key_share_ext(shares)
        elif kind == EXT_ENCRYPTED_CLIENT_HELLO:
            extension = _fresh_ech(extension)
        elif kind == EXT_SESSION_TICKET and extension.data:
            extension = Extension(kind, b"", b"")
        exts.append(extension)
    fresh = os.urandom(32 + len(original.session_id))  # random, then the session id
    hello = _assemble(original, fresh[:32], fresh[32:], exts)
    return ReplayHello(hello.raw, hello, shares, original.record_version or 0x0301,
                       list(original.record_lengths), original, dropped)


def retry_hello(first: ReplayHello, group: int | None, cookie: bytes | None) -> ReplayHello:
    """The second ClientHello after a HelloRetryRequest asking for ``group`` (and a cookie).

    Without a ``group`` (a cookie-only HRR) the key shares stay those of the first hello."""
    shares = first.shares if group is None else [new_share(group)]
    cookie_ext = None if cookie is None else Extension(
        EXT_COOKIE, struct.pack("!H", len(cookie)) + cookie, cookie)
    exts: list[Extension] = []
    for extension in first.hello.extensions:
        if extension.type == EXT_KEY_SHARE:
            exts.append(_key_share_ext(shares))
            if cookie_ext is not None:
                exts.append(cookie_ext)
        elif extension.type != EXT_COOKIE:
            exts.append(extension)
    if cookie_ext is not None and first.hello.ext(EXT_KEY_SHARE) is None:
        exts.append(cookie_ext)
    hello = _assemble(first.hello, first.hello.random, first.hello.session_id, exts)
    return ReplayHello(hello.raw, hello, shares, 0x0303, [], first.original, first.dropped)

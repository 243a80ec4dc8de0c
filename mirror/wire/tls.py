"""TLS ClientHello parser: the client's first flight, every field in wire order, raw bytes kept.

``read_client_hello(data)`` takes the client's byte stream from its first byte: handshake
records, the hello possibly split over several records (and so over several TCP segments; the
caller just appends what arrives). It returns ``None`` while the bytes are a valid prefix and a
:class:`ClientHello` once the whole handshake message is there. Anything that cannot be a
ClientHello raises :class:`~mirror.wire.errors.WireError` with ``layer="tls"``.

Every extension keeps its type, its raw ``data`` and, for the types this module knows, a typed
``value``. Unknown types keep ``value = None``. GREASE values (RFC 8701) are kept wherever they
appear; :func:`is_grease` recognises them, and the fingerprint functions decide what to skip.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from mirror.wire.errors import WireError
from mirror.wire.seen import SeenTable

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
RECORD_HEADER = 5
MAX_RECORD = 1 << 14  # RFC 8446 5.1: TLSPlaintext.length MUST NOT exceed 2^14
DEFAULT_MAX_HELLO = 1 << 16

# Extension type numbers this module gives a typed value to.
EXT_SERVER_NAME = 0
EXT_MAX_FRAGMENT_LENGTH = 1
EXT_STATUS_REQUEST = 5
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_USE_SRTP = 14
EXT_HEARTBEAT = 15
EXT_ALPN = 16
EXT_STATUS_REQUEST_V2 = 17
EXT_SIGNED_CERTIFICATE_TIMESTAMP = 18
EXT_PADDING = 21
EXT_ENCRYPT_THEN_MAC = 22
EXT_EXTENDED_MASTER_SECRET = 23
EXT_COMPRESS_CERTIFICATE = 27
EXT_RECORD_SIZE_LIMIT = 28
EXT_DELEGATED_CREDENTIALS = 34
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43
EXT_COOKIE = 44
EXT_PSK_KEY_EXCHANGE_MODES = 45
EXT_CERTIFICATE_AUTHORITIES = 47
EXT_POST_HANDSHAKE_AUTH = 49
EXT_SIGNATURE_ALGORITHMS_CERT = 50
EXT_KEY_SHARE = 51
EXT_QUIC_TRANSPORT_PARAMETERS = 57
EXT_ALPS_OLD = 17513
EXT_ALPS = 17613
EXT_ENCRYPTED_CLIENT_HELLO = 65037
EXT_RENEGOTIATION_INFO = 65281

EXTENSION_NAMES: dict[int, str] = {
    EXT_SERVER_NAME: "server_name",
    EXT_MAX_FRAGMENT_LENGTH: "max_fragment_length",
    EXT_STATUS_REQUEST: "status_request",
    EXT_SUPPORTED_GROUPS: "supported_groups",
    EXT_EC_POINT_FORMATS: "ec_point_formats",
    EXT_SIGNATURE_ALGORITHMS: "signature_algorithms",
    EXT_USE_SRTP: "use_srtp",
    EXT_HEARTBEAT: "heartbeat",
    EXT_ALPN: "application_layer_protocol_negotiation",
    EXT_STATUS_REQUEST_V2: "status_request_v2",
    EXT_SIGNED_CERTIFICATE_TIMESTAMP: "signed_certificate_timestamp",
    EXT_PADDING: "padding",
    EXT_ENCRYPT_THEN_MAC: "encrypt_then_mac",
    EXT_EXTENDED_MASTER_SECRET: "extended_master_secret",
    EXT_COMPRESS_CERTIFICATE: "compress_certificate",
    EXT_RECORD_SIZE_LIMIT: "record_size_limit",
    EXT_DELEGATED_CREDENTIALS: "delegated_credentials",
    EXT_SESSION_TICKET: "session_ticket",
    EXT_PRE_SHARED_KEY: "pre_shared_key",
    EXT_EARLY_DATA: "early_data",
    EXT_SUPPORTED_VERSIONS: "supported_versions",
    EXT_COOKIE: "cookie",
    EXT_PSK_KEY_EXCHANGE_MODES: "psk_key_exchange_modes",
    EXT_CERTIFICATE_AUTHORITIES: "certificate_authorities",
    EXT_POST_HANDSHAKE_AUTH: "post_handshake_auth",
    EXT_SIGNATURE_ALGORITHMS_CERT: "signature_algorithms_cert",
    EXT_KEY_SHARE: "key_share",
    EXT_QUIC_TRANSPORT_PARAMETERS: "quic_transport_parameters",
    EXT_ALPS_OLD: "application_settings_old",
    EXT_ALPS: "application_settings",
    EXT_ENCRYPTED_CLIENT_HELLO: "encrypted_client_hello",
    EXT_RENEGOTIATION_INFO: "renegotiation_info",
}


def is_grease(value: int) -> bool:
    """True for the RFC 8701 GREASE values 0x0a0a, 0x1a1a, ... 0xfafa (16-bit)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def is_grease_u8(value: int) -> bool:
    """True for the one-byte GREASE values (psk_key_exchange_modes, ...): 0x0b, 0x2a, ..."""
    return value % 0x1F == 0x0B and value <= 0xFF


def _fail(message: str) -> WireError:
    return WireError(message, layer="tls")


class _Cursor:
    """Bounds-checked big-endian reader over one bytes object."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: bytes, what: str, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.what = what

    def _need(self, n: int) -> int:
        start = self.pos
        if start + n > self.end:
            raise _fail(f"{self.what}: needs {n} more bytes, {self.end - start} left")
        self.pos = start + n
        return start

    def u8(self) -> int:
        return self.buf[self._need(1)]

    def u16(self) -> int:
        p = self._need(2)
        return (self.buf[p] << 8) | self.buf[p + 1]

    def u32(self) -> int:
        p = self._need(4)
        return int.from_bytes(self.buf[p : p + 4], "big")

    def take(self, n: int) -> bytes:
        p = self._need(n)
        return self.buf[p : p + n]

    def _length(self, len_bytes: int) -> tuple[int, int]:
        """Read a ``len_bytes`` length prefix; return (start, end) of the vector it announces."""
        p = self.pos
        start = p + len_bytes
        if start > self.end:
            raise _fail(f"{self.what}: needs {len_bytes} more bytes, {self.end - p} left")
        n = int.from_bytes(self.buf[p:start], "big")
        stop = start + n
        if stop > self.end:
            raise _fail(f"{self.what}: vector of {n} bytes, {self.end - start} left")
        self.pos = stop
        return start, stop

    def vec(self, len_bytes: int) -> _Cursor:
        """A sub-cursor over a length-prefixed vector; this cursor skips past it."""
        start, stop = self._length(len_bytes)
        return _Cursor(self.buf, self.what, start, stop)

    def vec_bytes(self, len_bytes: int) -> bytes:
        start, stop = self._length(len_bytes)
        return self.buf[start:stop]

    def left(self) -> int:
        return self.end - self.pos

    def done(self) -> None:
        if self.pos != self.end:
            raise _fail(f"{self.what}: {self.end - self.pos} trailing bytes")


def _u16_list(c: _Cursor, len_bytes: int = 2) -> list[int]:
    start, stop = c._length(len_bytes)
    if (stop - start) % 2:
        raise _fail(f"{c.what}: odd length for a list of 16-bit values")
    c.done()
    return list(struct.unpack_from(f">{(stop - start) // 2}H", c.buf, start))


def _u8_list(c: _Cursor) -> list[int]:
    out = list(c.vec_bytes(1))
    c.done()
    return out


def _name_list(c: _Cursor) -> list[bytes]:
    """A u16-prefixed list of u8-prefixed byte strings (ALPN, ALPS)."""
    sub = c.vec(2)
    out = []
    while sub.left():
        name = sub.vec_bytes(1)
        if not name:
            raise _fail(f"{c.what}: empty protocol name")
        out.append(name)
    c.done()
    return out


@dataclass(slots=True, frozen=True)
class ServerName:
    name_type: int
    name: bytes


@dataclass(slots=True, frozen=True)
class KeyShareEntry:
    group: int
    key_exchange: bytes

    @property
    def key_length(self) -> int:
        return len(self.key_exchange)


@dataclass(slots=True, frozen=True)
class StatusRequest:
    status_type: int
    responder_id_list: bytes
    request_extensions: bytes


@dataclass(slots=True, frozen=True)
class PskIdentity:
    identity: bytes
    obfuscated_ticket_age: int


@dataclass(slots=True, frozen=True)
class PreSharedKey:
    identities: list[PskIdentity]
    binders: list[bytes]


@dataclass(slots=True, frozen=True)
class EchOuter:
    """ECH (draft-ietf-tls-esni) extension of a ClientHelloOuter, or ``is_inner`` for inner."""

    ech_type: int
    kdf_id: int | None = None
    aead_id: int | None = None
    config_id: int | None = None
    enc: bytes = b""
    payload_length: int = 0

    @property
    def is_inner(self) -> bool:
        return self.ech_type == 1


def _p_server_name(c: _Cursor) -> list[ServerName]:
    if not c.left():  # an empty extension is legal in ServerHello and seen in the wild
        return []
    sub = c.vec(2)
    out = []
    while sub.left():
        kind = sub.u8()
        out.append(ServerName(kind, sub.vec_bytes(2)))
    c.done()
    return out


def _p_status_request(c: _Cursor) -> StatusRequest:
    kind = c.u8()
    if kind != 1:  # only ocsp (1) is defined; keep others raw
        return StatusRequest(kind, c.take(c.left()), b"")
    responders = c.vec_bytes(2)
    exts = c.vec_bytes(2)
    c.done()
    return StatusRequest(kind, responders, exts)


def _p_empty(c: _Cursor) -> bool:
    c.done()
    return True


def _p_u16(c: _Cursor) -> int:
    value = c.u16()
    c.done()
    return value


def _p_u8(c: _Cursor) -> int:
    value = c.u8()
    c.done()
    return value


def _p_padding(c: _Cursor) -> int:
    return c.left()


def _p_opaque(c: _Cursor) -> bytes:
    return c.take(c.left())


def _p_opaque8(c: _Cursor) -> bytes:
    value = c.vec_bytes(1)
    c.done()
    return value


def _p_opaque16(c: _Cursor) -> bytes:
    value = c.vec_bytes(2)
    c.done()
    return value


def _p_key_share(c: _Cursor) -> list[KeyShareEntry]:
    sub = c.vec(2)
    out = []
    while sub.left():
        group = sub.u16()
        out.append(KeyShareEntry(group, sub.vec_bytes(2)))
    c.done()
    return out


def _p_pre_shared_key(c: _Cursor) -> PreSharedKey:
    ids = c.vec(2)
    identities = []
    while ids.left():
        ident = ids.vec_bytes(2)
        identities.append(PskIdentity(ident, ids.u32()))
    bsub = c.vec(2)
    binders = []
    while bsub.left():
        binders.append(bsub.vec_bytes(1))
    c.done()
    if not identities:
        raise _fail("pre_shared_key: no identities")
    return PreSharedKey(identities, binders)


def _p_ech(c: _Cursor) -> EchOuter:
    kind = c.u8()
    if kind == 1:
        c.done()
        return EchOuter(1)
    if kind != 0:
        raise _fail(f"encrypted_client_hello: unknown type {kind}")
    kdf, aead, config_id = c.u16(), c.u16(), c.u8()
    enc = c.vec_bytes(2)
    payload = c.vec_bytes(2)
    c.done()
    return EchOuter(0, kdf, aead, config_id, enc, len(payload))


def _u16_list_short(c: _Cursor) -> list[int]:
    """A u8-prefixed list of 16-bit values (supported_versions, compress_certificate)."""
    return _u16_list(c, 1)


_TYPED: dict[int, Callable[[_Cursor], object]] = {
    EXT_SERVER_NAME: _p_server_name,
    EXT_MAX_FRAGMENT_LENGTH: _p_u8,
    EXT_STATUS_REQUEST: _p_status_request,
    EXT_SUPPORTED_GROUPS: _u16_list,
    EXT_EC_POINT_FORMATS: _u8_list,
    EXT_SIGNATURE_ALGORITHMS: _u16_list,
    EXT_ALPN: _name_list,
    EXT_SIGNED_CERTIFICATE_TIMESTAMP: _p_empty,
    EXT_PADDING: _p_padding,
    EXT_ENCRYPT_THEN_MAC: _p_empty,
    EXT_EXTENDED_MASTER_SECRET: _p_empty,
    EXT_COMPRESS_CERTIFICATE: _u16_list_short,
    EXT_RECORD_SIZE_LIMIT: _p_u16,
    EXT_DELEGATED_CREDENTIALS: _u16_list,
    EXT_SESSION_TICKET: _p_opaque,
    EXT_PRE_SHARED_KEY: _p_pre_shared_key,
    EXT_EARLY_DATA: _p_empty,
    EXT_SUPPORTED_VERSIONS: _u16_list_short,
    EXT_COOKIE: _p_opaque16,
    EXT_PSK_KEY_EXCHANGE_MODES: _u8_list,
    EXT_POST_HANDSHAKE_AUTH: _p_empty,
    EXT_SIGNATURE_ALGORITHMS_CERT: _u16_list,
    EXT_KEY_SHARE: _p_key_share,
    EXT_ALPS_OLD: _name_list,
    EXT_ALPS: _name_list,
    EXT_ENCRYPTED_CLIENT_HELLO: _p_ech,
    EXT_RENEGOTIATION_INFO: _p_opaque8,
}


_V = TypeVar("_V")


@dataclass(slots=True, frozen=True)
class Extension:
    """One extension as sent: its type, its raw body, and a typed value where known."""

    type: int
    data: bytes
    value: object = None

    @property
    def name(self) -> str:
        if is_grease(self.type):
            return "grease"
        return EXTENSION_NAMES.get(self.type, f"unknown_{self.type}")

    @property
    def is_grease(self) -> bool:
        return is_grease(self.type)


@dataclass(slots=True, frozen=True)
class ClientHello:
    """A parsed ClientHello. ``raw`` is the handshake message (type, length, body)."""

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: list[int]
    compression_methods: list[int]
    extensions: list[Extension]
    raw: bytes
    record_version: int | None = None
    consumed: int = 0
    record_lengths: list[int] = field(default_factory=list)

    def ext(self, ext_type: int) -> Extension | None:
        for extension in self.extensions:
            if extension.type == ext_type:
                return extension
        return None

    def _value(self, ext_type: int, default: _V) -> _V:
        """The parsed value of an extension; its type is fixed by ext_type (see _TYPED)."""
        extension = self.ext(ext_type)
        return default if extension is None else cast(_V, extension.value)

    @property
    def extension_types(self) -> list[int]:
        return [e.type for e in self.extensions]

    @property
    def server_names(self) -> Sequence[ServerName]:
        return self._value(EXT_SERVER_NAME, [])

    @property
    def sni(self) -> str | None:
        for entry in self.server_names:
            if entry.name_type == 0:
                return entry.name.decode("latin-1")
        return None

    @property
    def alpn_raw(self) -> Sequence[bytes]:
        return self._value(EXT_ALPN, [])

    @property
    def alpn(self) -> list[str]:
        return [p.decode("latin-1") for p in self.alpn_raw]

    @property
    def supported_groups(self) -> Sequence[int]:
        return self._value(EXT_SUPPORTED_GROUPS, [])

    @property
    def ec_point_formats(self) -> Sequence[int]:
        return self._value(EXT_EC_POINT_FORMATS, [])

    @property
    def signature_algorithms(self) -> Sequence[int]:
        return self._value(EXT_SIGNATURE_ALGORITHMS, [])

    @property
    def signature_algorithms_cert(self) -> Sequence[int]:
        return self._value(EXT_SIGNATURE_ALGORITHMS_CERT, [])

    @property
    def supported_versions(self) -> Sequence[int]:
        return self._value(EXT_SUPPORTED_VERSIONS, [])

    @property
    def key_share_entries(self) -> Sequence[KeyShareEntry]:
        return self._value(EXT_KEY_SHARE, [])

    @property
    def key_shares(self) -> list[tuple[int, int]]:
        return [(k.group, k.key_length) for k in self.key_share_entries]

    @property
    def psk_key_exchange_modes(self) -> Sequence[int]:
        return self._value(EXT_PSK_KEY_EXCHANGE_MODES, [])

    @property
    def compress_certificate(self) -> Sequence[int]:
        return self._value(EXT_COMPRESS_CERTIFICATE, [])

    @property
    def record_size_limit(self) -> int | None:
        return self._value(EXT_RECORD_SIZE_LIMIT, None)

    @property
    def delegated_credentials(self) -> Sequence[int]:
        return self._value(EXT_DELEGATED_CREDENTIALS, [])

    @property
    def alps(self) -> list[str]:
        """ALPS protocols, from the new (17613) or the old (17513) codepoint."""
        new: list[bytes] | None = self._value(EXT_ALPS, None)
        old: list[bytes] = self._value(EXT_ALPS_OLD, [])
        return [p.decode("latin-1") for p in new or old]

    @property
    def ech(self) -> EchOuter | None:
        return self._value(EXT_ENCRYPTED_CLIENT_HELLO, None)

    @property
    def padding_length(self) -> int | None:
        return self._value(EXT_PADDING, None)

    @property
    def session_ticket(self) -> bytes | None:
        return self._value(EXT_SESSION_TICKET, None)

    @property
    def pre_shared_key(self) -> PreSharedKey | None:
        return self._value(EXT_PRE_SHARED_KEY, None)

    @property
    def status_request(self) -> StatusRequest | None:
        return self._value(EXT_STATUS_REQUEST, None)

    def has(self, ext_type: int) -> bool:
        return self.ext(ext_type) is not None


# A client sends the same bytes in most of its extensions on every connection (its groups,
# signature algorithms, ALPN, versions...): each one parsed is kept (bounded), and an identical
# one is not parsed again. An ``Extension`` is immutable, so one object serves every hello
# that carries those bytes (its value is read, never changed). Not kept: the types whose bytes
# change per connection (key shares, PSK identities, ECH payloads, cookies, tickets) unless
# they are empty, nor large bodies. The parsed lists are shared this way: the ClientHello's
# properties hand them out as read-only ``Sequence`` types, so mypy refuses code that would
# change one in place.
_PER_CONNECTION = frozenset({EXT_KEY_SHARE, EXT_PRE_SHARED_KEY, EXT_ENCRYPTED_CLIENT_HELLO,
                             EXT_COOKIE, EXT_SESSION_TICKET})
_SEEN_MAX_SIZE = 512      # bytes of body at most
_seen_extensions: SeenTable[tuple[int, bytes], Extension] = SeenTable(4096)


def parse_client_hello(handshake: bytes, *, record_version: int | None = None,
                       consumed: int = 0, record_lengths: list[int] | None = None) -> ClientHello:
    """Parse one handshake message (0x01, u24 length, body) into a :class:`ClientHello`."""
    handshake = bytes(handshake)
    c = _Cursor(handshake, "client_hello")
    msg_type = c.u8()
    if msg_type != HANDSHAKE_CLIENT_HELLO:
        raise _fail(f"handshake type {msg_type} is not a ClientHello (1)")
    body = c.vec(3)
    c.done()
    legacy_version = body.u16()
    if legacy_version >> 8 != 3 and legacy_version >> 8 != 0xFE:
        raise _fail(f"legacy_version {legacy_version:#06x} is not TLS or DTLS")
    random = body.take(32)
    session_id = body.vec_bytes(1)
    if len(session_id) > 32:
        raise _fail(f"session_id of {len(session_id)} bytes (max 32)")
    if legacy_version >> 8 == 0xFE:  # DTLS carries a cookie here
        body.vec_bytes(1)
    start, stop = body._length(2)
    if (stop - start) % 2 or stop == start:
        raise _fail("cipher_suites: empty or odd length")
    cipher_suites = list(struct.unpack_from(f">{(stop - start) // 2}H", handshake, start))
    compression = list(body.vec_bytes(1))
    if not compression:
        raise _fail("compression_methods: empty")
    extensions: list[Extension] = []
    if body.left():
        ext_block = body.vec(2)
        body.done()
        seen: set[int] = set()
        # the extension headers read inline (one per extension, on every connection); the
        # same bounds checks and messages as ``_Cursor.u16`` and ``_Cursor.vec_bytes(2)``
        pos, end, what = ext_block.pos, ext_block.end, ext_block.what
        while pos < end:
            left = end - pos
            if left < 4:
                raise _fail(f"{what}: needs 2 more bytes, {left if left < 2 else left - 2} left")
            ext_type = (handshake[pos] << 8) | handshake[pos + 1]
            size = (handshake[pos + 2] << 8) | handshake[pos + 3]
            pos += 4
            if pos + size > end:
                raise _fail(f"{what}: vector of {size} bytes, {end - pos} left")
            data = handshake[pos:pos + size]
            pos += size
            if ext_type in seen:
                raise _fail(f"extension {ext_type} ({EXTENSION_NAMES.get(ext_type, 'unknown')}) "
                            "appears twice")
            seen.add(ext_type)
            key = (ext_type, data)
            extension = _seen_extensions.get(key)
            if extension is None:
                parser = _TYPED.get(ext_type)
                value = None
                if parser is not None:
                    value = parser(_Cursor(data, EXTENSION_NAMES[ext_type]))
                extension = Extension(ext_type, data, value)
                if size <= _SEEN_MAX_SIZE and (ext_type not in _PER_CONNECTION or not size):
                    _seen_extensions.keep(key, extension)
            extensions.append(extension)
    return ClientHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=cipher_suites,
        compression_methods=compression,
        extensions=extensions,
        raw=handshake,
        record_version=record_version,
        consumed=consumed,
        record_lengths=record_lengths or [],
    )


def looks_like_tls(data: bytes | bytearray) -> bool | None:
    """Whether the stream starts like a TLS handshake record; None with fewer than 3 bytes."""
    if len(data) < 3:
        return None
    return data[0] == CONTENT_HANDSHAKE and data[1] == 3 and data[2] <= 4


def read_client_hello(data: bytes, *, max_size: int = DEFAULT_MAX_HELLO) -> ClientHello | None:
    """Reassemble the ClientHello from the start of a TLS stream.

    Returns ``None`` while ``data`` is a valid but incomplete prefix. Raises ``WireError`` when
    the records are not TLS handshake records, the first message is not a ClientHello, or the
    hello would be larger than ``max_size`` bytes.
    """
    pos = 0
    length = len(data)
    fragments: list[bytes] = []
    have = 0
    need: int | None = None
    record_version = None
    record_lengths: list[int] = []
    while True:
        if need is not None and have >= need:
            break
        if pos + RECORD_HEADER > length:
            if pos < length:
                _check_record_prefix(data[pos:length])
            return None
        content_type = data[pos]
        version = (data[pos + 1] << 8) | data[pos + 2]
        rec_len = (data[pos + 3] << 8) | data[pos + 4]
        if content_type != CONTENT_HANDSHAKE:
            raise _fail(f"record type {content_type} where a handshake record (22) was expected")
        if version >> 8 != 3 or (version & 0xFF) > 4:
            raise _fail(f"record version {version:#06x} is not TLS")
        if rec_len == 0 or rec_len > MAX_RECORD:
            raise _fail(f"handshake record length {rec_len} (must be 1..{MAX_RECORD})")
        if record_version is None:
            record_version = version
        if pos + RECORD_HEADER + rec_len > length:
            # Fail early on a header that already lies about the hello's size.
            if need is None and have + (length - pos - RECORD_HEADER) >= 4:
                partial = b"".join(fragments) + data[pos + RECORD_HEADER : length]
                _check_handshake_header(partial[:4], max_size)
            return None
        fragments.append(data[pos + RECORD_HEADER : pos + RECORD_HEADER + rec_len])
        record_lengths.append(rec_len)
        have += rec_len
        pos += RECORD_HEADER + rec_len
        if need is None and have >= 4:
            head = b"".join(fragments)[:4]
            need = 4 + _check_handshake_header(head, max_size)
    message = b"".join(fragments)
    if len(message) != need:
        raise _fail(f"{len(message) - need} bytes of another handshake message follow the "
                    "ClientHello in its records")
    return parse_client_hello(message, record_version=record_version, consumed=pos,
                              record_lengths=record_lengths)


def _check_record_prefix(prefix: bytes) -> None:
    if prefix[0] != CONTENT_HANDSHAKE:
        raise _fail(f"record type {prefix[0]} where a handshake record (22) was expected")
    if len(prefix) >= 2 and prefix[1] != 3:
        raise _fail(f"record version major {prefix[1]} is not TLS")


def _check_handshake_header(head: bytes, max_size: int) -> int:
    if head[0] != HANDSHAKE_CLIENT_HELLO:
        raise _fail(f"handshake type {head[0]} is not a ClientHello (1)")
    body_len = int.from_bytes(head[1:4], "big")
    if body_len + 4 > max_size:
        raise _fail(f"ClientHello of {body_len + 4} bytes exceeds the limit of {max_size}")
    if body_len < 38:
        raise _fail(f"ClientHello body of {body_len} bytes is too short")
    return body_len

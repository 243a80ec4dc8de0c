"""Parsers of the handshake messages a server sends (TLS 1.3 and TLS 1.2 ECDHE).

Each ``parse_*`` takes a message body and returns a small dataclass; anything malformed raises
:class:`~mirror.replay.errors.ReplayError` with reason ``"decode"`` (never another exception).
``HandshakeBuffer`` reassembles handshake messages from record fragments, bounded in size.
``decompress_certificate`` inflates a CompressedCertificate (RFC 8879) to exactly its announced
length, never more than a limit.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from mirror.replay.errors import ReplayError

HELLO_REQUEST, SERVER_HELLO, NEW_SESSION_TICKET, END_OF_EARLY_DATA = 0, 2, 4, 5
ENCRYPTED_EXTENSIONS, CERTIFICATE, SERVER_KEY_EXCHANGE, CERTIFICATE_REQUEST = 8, 11, 12, 13
SERVER_HELLO_DONE, CERTIFICATE_VERIFY, CLIENT_KEY_EXCHANGE, FINISHED = 14, 15, 16, 20
CERTIFICATE_STATUS, KEY_UPDATE, COMPRESSED_CERTIFICATE, MESSAGE_HASH = 22, 24, 25, 254
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
MAX_MESSAGE = 1 << 18
MAX_CERTIFICATE = 1 << 18  # decompressed certificate message bound


def _decode(message: str) -> ReplayError:
    return ReplayError("decode", message, alert=50)


class Reader:
    """Bounds-checked big-endian reader; every overrun is a ``decode`` ReplayError."""

    __slots__ = ("buf", "end", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf, self.pos, self.end, self.what = buf, 0, len(buf), what

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _decode(f"{self.what}: needs {n} bytes, {self.end - self.pos} left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vec(self, len_bytes: int, minimum: int = 0) -> bytes:
        data = self.take(self.uint(len_bytes))
        if len(data) < minimum:
            raise _decode(f"{self.what}: vector of {len(data)} bytes (min {minimum})")
        return data

    def left(self) -> int:
        return self.end - self.pos

    def done(self) -> None:
        if self.pos != self.end:
            raise _decode(f"{self.what}: {self.end - self.pos} trailing bytes")


def parse_extensions(data: bytes, what: str) -> list[tuple[int, bytes]]:
    reader = Reader(data, what)
    out: list[tuple[int, bytes]] = []
    seen = set()
    while reader.left():
        kind = reader.uint(2)
        body = reader.vec(2)
        if kind in seen:
            raise _decode(f"{what}: extension {kind} twice")
        seen.add(kind)
        out.append((kind, body))
    return out


class HandshakeBuffer:
    """Reassembles handshake messages (type, u24 length, body) from record fragments."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self.max_message = max_message

    def feed(self, fragment: bytes | memoryview) -> None:
        self._buf += fragment

    @property
    def pending(self) -> int:
        return len(self._buf)

    def next(self) -> tuple[int, bytes, bytes] | None:
        """(type, body, whole message) of the next complete message, or None."""
        buf = self._buf
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[1:4], "big")
        if length > self.max_message:
            raise _decode(f"handshake message of {length} bytes (limit {self.max_message})")
        if len(buf) < 4 + length:
            return None
        raw = bytes(memoryview(buf)[:4 + length])
        del buf[:4 + length]
        return raw[0], raw[4:], raw


@dataclass(slots=True)
class ServerHello:
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression: int
    extensions: list[tuple[int, bytes]]

    @property
    def is_hrr(self) -> bool:
        return self.random == HRR_RANDOM

    def ext(self, kind: int) -> bytes | None:
        for ext_type, data in self.extensions:
            if ext_type == kind:
                return data
        return None


def parse_server_hello(body: bytes) -> ServerHello:
    r = Reader(body, "ServerHello")
    version, random = r.uint(2), r.take(32)
    session_id = r.vec(1)
    if len(session_id) > 32:
        raise _decode("ServerHello: session id longer than 32 bytes")
    suite, compression = r.uint(2), r.uint(1)
    extensions = parse_extensions(r.vec(2), "ServerHello extensions") if r.left() else []
    r.done()
    return ServerHello(version, random, session_id, suite, compression, extensions)


@dataclass(slots=True)
class CertificateEntry:
    der: bytes
    extensions: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class CertificateMessage:
    context: bytes
    entries: list[CertificateEntry]


def parse_certificate13(body: bytes) -> CertificateMessage:
    r = Reader(body, "Certificate")
    context = r.vec(1)
    certs = Reader(r.vec(3), "Certificate list")
    r.done()
    entries = []
    while certs.left():
        der = certs.vec(3, 1)
        entries.append(CertificateEntry(der, parse_extensions(certs.vec(2), "Certificate entry")))
    return CertificateMessage(context, entries)


def parse_certificate12(body: bytes) -> CertificateMessage:
    r = Reader(body, "Certificate")
    certs = Reader(r.vec(3), "Certificate list")
    r.done()
    entries = []
    while certs.left():
        entries.append(CertificateEntry(certs.vec(3, 1)))
    return CertificateMessage(b"", entries)


@dataclass(slots=True)
class CompressedCertificate:
    algorithm: int
    length: int
    data: bytes


def parse_compressed_certificate(body: bytes) -> CompressedCertificate:
    r = Reader(body, "CompressedCertificate")
    algorithm, length = r.uint(2), r.uint(3)
    data = r.vec(3, 1)
    r.done()
    return CompressedCertificate(algorithm, length, data)


def decompress_certificate(message: CompressedCertificate, limit: int = MAX_CERTIFICATE) -> bytes:
    """The Certificate body inside a CompressedCertificate, exactly ``length`` bytes."""
    if message.length > limit:
        raise ReplayError("decode", f"compressed certificate announces {message.length} bytes "
                          f"(limit {limit})", alert=42)
    want = message.length
    try:
        if message.algorithm == 1:
            inflater = zlib.decompressobj()
            out = inflater.decompress(message.data, want + 1)
            ended = inflater.eof and not inflater.unconsumed_tail
        elif message.algorithm == 2:
            import brotli

            decompressor = brotli.Decompressor()
            out = decompressor.process(message.data, output_buffer_limit=want + 1)
            ended = decompressor.is_finished()
        elif message.algorithm == 3:
            import io

            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(message.data))
            out = reader.read(want + 1)
            ended = True
        else:
            raise ReplayError("decode", f"certificate compression {message.algorithm} unknown",
                              alert=47)
    except ReplayError:
        raise
    except ImportError as error:
        raise ReplayError("unsupported", f"certificate compression {message.algorithm} needs "
                          f"the {error.name} module", alert=80) from None
    except Exception as error:  # noqa: BLE001 - zlib.error, brotli.error, zstandard.ZstdError
        raise ReplayError("decode", f"compressed certificate does not inflate: {error}",
                          alert=42) from None
    if len(out) != want or not ended:
        raise ReplayError("decode", "compressed certificate inflates to another length than "
                          f"announced ({want})", alert=42)
    return out


@dataclass(slots=True)
class CertificateVerify:
    scheme: int
    signature: bytes


def parse_certificate_verify(body: bytes) -> CertificateVerify:
    r = Reader(body, "CertificateVerify")
    scheme = r.uint(2)
    signature = r.vec(2)
    r.done()
    return CertificateVerify(scheme, signature)


def parse_certificate_request13(body: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    r = Reader(body, "CertificateRequest")
    context = r.vec(1)
    extensions = parse_extensions(r.vec(2), "CertificateRequest extensions")
    r.done()
    return context, extensions


def parse_certificate_request12(body: bytes) -> None:
    r = Reader(body, "CertificateRequest")
    r.vec(1, 1)
    r.vec(2, 2)
    r.vec(2)
    r.done()


def parse_new_session_ticket13(body: bytes) -> None:
    r = Reader(body, "NewSessionTicket")
    r.take(8)
    r.vec(1)
    r.vec(2, 1)
    parse_extensions(r.vec(2), "NewSessionTicket extensions")
    r.done()


def parse_new_session_ticket12(body: bytes) -> None:
    r = Reader(body, "NewSessionTicket")
    r.take(4)
    r.vec(2)
    r.done()


def parse_key_update(body: bytes) -> bool:
    """True when the server asks for our KeyUpdate (update_requested)."""
    if len(body) != 1 or body[0] > 1:
        raise _decode("KeyUpdate: not one byte of 0 or 1")
    return body[0] == 1


@dataclass(slots=True)
class ServerKeyExchange:
    group: int
    public: bytes
    params: bytes  # the bytes the signature covers after the randoms
    scheme: int
    signature: bytes


def parse_server_key_exchange(body: bytes) -> ServerKeyExchange:
    r = Reader(body, "ServerKeyExchange")
    curve_type = r.uint(1)
    if curve_type != 3:
        raise ReplayError("unsupported", f"ServerKeyExchange curve type {curve_type} "
                          "(only named curves)", alert=40)
    group = r.uint(2)
    public = r.vec(1, 1)
    params = body[:r.pos]
    scheme = r.uint(2)
    signature = r.vec(2)
    r.done()
    return ServerKeyExchange(group, public, params, scheme, signature)


def parse_certificate_status(body: bytes) -> bytes:
    """The OCSP response of a CertificateStatus (RFC 6066 8)."""
    r = Reader(body, "CertificateStatus")
    if r.uint(1) != 1:
        raise _decode("CertificateStatus: status type is not ocsp (1)")
    response = r.vec(3, 1)
    r.done()
    return response

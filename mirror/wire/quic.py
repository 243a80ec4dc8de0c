"""Recover the TLS ClientHello a QUIC client sends in its Initial packets (sans-I/O).

QUIC encrypts even its first flight, but with keys anyone can derive from the Destination
Connection ID of the client's first Initial packet (RFC 9001 section 5.2, RFC 9369 section
3.3.1 for QUIC version 2). This module derives those keys (HKDF-Extract / HKDF-Expand-Label
with SHA-256), removes header protection (AES-128-ECB), decrypts the payload (AES-128-GCM),
walks the frames (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE -- the only ones an Initial may
carry) and reassembles the CRYPTO stream, whose first message is the ClientHello.

* :class:`ClientHelloAssembler` -- feed the client's UDP datagrams in capture order;
  ``feed()`` returns the ClientHello handshake message (``0x01`` + u24 length + body, ready for
  ``mirror.wire.tls.parse_client_hello``) once complete, ``None`` while more packets are
  needed. CRYPTO frames may arrive out of order, overlap (first copy wins), be spread over
  several Initial packets and datagrams, and share a datagram with other coalesced packets
  (Handshake / 0-RTT / short-header packets are skipped by their length).
* Lower-level pieces: :func:`initial_keys`, :func:`parse_long_header`, :func:`decrypt_initial`,
  :func:`parse_frames`, :func:`looks_like_initial`.

Versions: 1 (RFC 9000), 2 (RFC 9369) and drafts 29-32 (same labels as version 1, draft salt).
Invalid input raises :class:`mirror.wire.errors.WireError` with ``layer="quic"`` -- a packet
that fails authentication, a length that overruns the datagram, a frame an Initial may not
carry, a first handshake message that is not a ClientHello. Nothing else escapes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from mirror.wire.errors import WireError

__all__ = [
    "MAX_CRYPTO_STREAM",
    "QUIC_V1",
    "QUIC_V2",
    "SUPPORTED_VERSIONS",
    "AckFrame",
    "ClientHelloAssembler",
    "ConnectionCloseFrame",
    "CryptoFrame",
    "InitialKeys",
    "InitialPacket",
    "LongHeader",
    "PaddingFrame",
    "PingFrame",
    "client_hello_from_datagrams",
    "decrypt_initial",
    "hkdf_expand_label",
    "hkdf_extract",
    "initial_keys",
    "looks_like_initial",
    "parse_frames",
    "parse_long_header",
    "read_varint",
]

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
_DRAFTS = (0xFF00001D, 0xFF00001E, 0xFF00001F, 0xFF000020)  # drafts 29-32

_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_DRAFT29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")

SUPPORTED_VERSIONS = frozenset({QUIC_V1, QUIC_V2, *_DRAFTS})

MAX_CRYPTO_STREAM = 128 * 1024  # a CRYPTO frame reaching beyond this offset is refused
_MAX_CID = 20

_LAYER = "quic"


def _error(message: str) -> WireError:
    return WireError(message, layer=_LAYER)


# --------------------------------------------------------------------------- key schedule


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869)."""
    mac = hmac.HMAC(salt, hashes.SHA256())
    mac.update(ikm)
    return mac.finalize()


def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 section 7.1) with SHA-256."""
    full_label = b"tls13 " + label.encode("ascii")
    info = struct.pack("!HB", length, len(full_label)) + full_label + bytes([len(context)]) + context
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """AEAD key, IV and header-protection key of one direction's Initial packets."""

    key: bytes
    iv: bytes
    hp: bytes


def _salt_and_prefix(version: int) -> tuple[bytes, str]:
    if version == QUIC_V1:
        return _SALT_V1, "quic"
    if version == QUIC_V2:
        return _SALT_V2, "quicv2"
    if version in _DRAFTS:
        return _SALT_DRAFT29, "quic"
    raise _error(f"unsupported QUIC version {version:#010x}")


def initial_keys(dcid: bytes, version: int = QUIC_V1, *, server: bool = False) -> InitialKeys:
    """The Initial keys for the client (or server) side, from the client's original DCID."""
    salt, prefix = _salt_and_prefix(version)
    initial_secret = hkdf_extract(salt, dcid)
    secret = hkdf_expand_label(initial_secret, "server in" if server else "client in", b"", 32)
    return InitialKeys(
        key=hkdf_expand_label(secret, f"{prefix} key", b"", 16),
        iv=hkdf_expand_label(secret, f"{prefix} iv", b"", 12),
        hp=hkdf_expand_label(secret, f"{prefix} hp", b"", 16),
    )


# --------------------------------------------------------------------------- headers


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, new offset) of the QUIC variable-length integer at ``offset``."""
    if offset >= len(data):
        raise _error("variable-length integer cut short")
    first = data[offset]
    size = 1 << (first >> 6)
    if offset + size > len(data):
        raise _error("variable-length integer cut short")
    value = first & 0x3F
    for byte in data[offset + 1 : offset + size]:
        value = (value << 8) | byte
    return value, offset + size


def _packet_type(version: int, bits: int) -> str:
    if version == QUIC_V2:
        return ("retry", "initial", "0rtt", "handshake")[bits]
    return ("initial", "0rtt", "handshake", "retry")[bits]


@dataclass(frozen=True, slots=True)
class LongHeader:
    """A long-header packet's header fields (still header-protected).

    ``pn_offset`` is where the packet number starts and ``end`` where the packet ends inside
    the datagram (the Length field counts from ``pn_offset``). For Retry and Version
    Negotiation packets, which have no Length field, ``end`` is the end of the datagram and
    ``pn_offset`` equals ``end``.
    """

    first_byte: int
    version: int
    packet_type: str  # "initial", "0rtt", "handshake", "retry", "version_negotiation"
    dcid: bytes
    scid: bytes
    token: bytes
    pn_offset: int
    end: int
    start: int



def _connection_id(datagram: bytes, pos: int, version: int, which: str) -> tuple[bytes, int]:
    """A length-prefixed connection ID at ``pos``; returns it and the position after it."""
    length = datagram[pos]
    if version != 0 and length > _MAX_CID:
        raise _error(f"{which} connection ID of {length} bytes")
    start = pos + 1
    return bytes(datagram[start : start + length]), start + length


def parse_long_header(datagram: bytes, offset: int = 0) -> LongHeader | None:
    """The long header at ``offset``; None if the packet there has a short header."""
    if offset >= len(datagram):
        raise _error("no packet at this offset")
    first = datagram[offset]
    if not first & 0x80:
        return None
    if offset + 6 > len(datagram):
        raise _error("long header cut short")
    version = struct.unpack_from("!I", datagram, offset + 1)[0]
    dcid, pos = _connection_id(datagram, offset + 5, version, "destination")
    if pos >= len(datagram):
        raise _error("long header cut short")
    scid, pos = _connection_id(datagram, pos, version, "source")
    if pos > len(datagram):
        raise _error("long header cut short")
    if version == 0:
        return LongHeader(first, 0, "version_negotiation", dcid, scid, b"", len(datagram), len(datagram), offset)
    if version not in SUPPORTED_VERSIONS:
        raise _error(f"unsupported QUIC version {version:#010x}")
    packet_type = _packet_type(version, (first >> 4) & 0x03)
    if packet_type == "retry":
        return LongHeader(first, version, packet_type, dcid, scid, b"", len(datagram), len(datagram), offset)
    token = b""
    if packet_type == "initial":
        token_len, pos = read_varint(datagram, pos)
        if pos + token_len > len(datagram):
            raise _error("Initial token overruns the datagram")
        token = bytes(datagram[pos : pos + token_len])
        pos += token_len
    length, pos = read_varint(datagram, pos)
    end = pos + length
    if end > len(datagram):
        raise _error(f"packet length {length} overruns the datagram")
    return LongHeader(first, version, packet_type, dcid, scid, token, pos, end, offset)


def looks_like_initial(datagram: bytes) -> bool:
    """Whether the datagram starts with a long-header Initial packet of a version we know."""
    if len(datagram) < 7 or datagram[0] & 0xC0 != 0xC0:
        return False
    version = struct.unpack_from("!I", datagram, 1)[0]
    if version not in SUPPORTED_VERSIONS:
        return False
    return _packet_type(version, (datagram[0] >> 4) & 0x03) == "initial"


# --------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True)
class InitialPacket:
    """A decrypted Initial packet."""

    version: int
    dcid: bytes
    scid: bytes
    token: bytes
    packet_number: int
    payload: bytes  # plaintext frames


def _decode_packet_number(truncated: int, nbits: int, largest: int) -> int:
    """RFC 9000 appendix A.3."""
    expected = largest + 1
    window = 1 << nbits
    half = window // 2
    mask = window - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


def decrypt_initial(
    datagram: bytes, header: LongHeader, keys: InitialKeys, *, largest_pn: int = -1
) -> InitialPacket:
    """Remove header protection from and decrypt the Initial packet ``header`` describes."""
    if header.packet_type != "initial":
        raise _error(f"not an Initial packet ({header.packet_type})")
    pn_offset, end = header.pn_offset, header.end
    sample_start = pn_offset + 4
    if sample_start + 16 > end:
        raise _error("packet too short for a header-protection sample")
    sample = bytes(datagram[sample_start : sample_start + 16])
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    first = header.first_byte ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    if pn_offset + pn_len + 16 > end:
        raise _error("packet too short for its packet number and AEAD tag")
    protected = datagram[pn_offset : pn_offset + pn_len]
    pn_bytes = bytes(b ^ m for b, m in zip(protected, mask[1 : 1 + pn_len], strict=True))
    truncated = int.from_bytes(pn_bytes, "big")
    packet_number = _decode_packet_number(truncated, pn_len * 8, largest_pn)
    aad = bytes([first]) + bytes(datagram[header.start + 1 : pn_offset]) + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = bytes(datagram[pn_offset + pn_len : end])
    try:
        payload = AESGCM(keys.key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise _error("Initial packet failed authentication (wrong keys or damaged packet)") from None
    return InitialPacket(header.version, header.dcid, header.scid, header.token, packet_number, payload)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class PaddingFrame:
    length: int  # consecutive PADDING bytes


@dataclass(frozen=True, slots=True)
class PingFrame:
    pass


@dataclass(frozen=True, slots=True)
class AckFrame:
    largest: int
    delay: int
    ranges: list[tuple[int, int]]  # (gap, length) after the first range; first range as (0, n)
    ecn: tuple[int, int, int] | None


@dataclass(frozen=True, slots=True)
class CryptoFrame:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionCloseFrame:
    error_code: int
    frame_type: int
    reason: bytes


Frame = PaddingFrame | PingFrame | AckFrame | CryptoFrame | ConnectionCloseFrame


def parse_frames(payload: bytes) -> list[Frame]:
    """The frames of a decrypted Initial (or Handshake) packet payload."""
    frames: list[Frame] = []
    pos = 0
    n = len(payload)
    if n == 0:
        raise _error("packet without frames")
    while pos < n:
        frame_type, pos = read_varint(payload, pos)
        if frame_type == 0x00:
            start = pos - 1
            while pos < n and payload[pos] == 0:
                pos += 1
            frames.append(PaddingFrame(pos - start))
        elif frame_type == 0x01:
            frames.append(PingFrame())
        elif frame_type in (0x02, 0x03):
            largest, pos = read_varint(payload, pos)
            delay, pos = read_varint(payload, pos)
            count, pos = read_varint(payload, pos)
            first_range, pos = read_varint(payload, pos)
            if count > n:  # each range needs at least two bytes
                raise _error("ACK frame claims more ranges than the packet holds")
            ranges = [(0, first_range)]
            for _ in range(count):
                gap, pos = read_varint(payload, pos)
                length, pos = read_varint(payload, pos)
                ranges.append((gap, length))
            ecn = None
            if frame_type == 0x03:
                ect0, pos = read_varint(payload, pos)
                ect1, pos = read_varint(payload, pos)
                ce, pos = read_varint(payload, pos)
                ecn = (ect0, ect1, ce)
            frames.append(AckFrame(largest, delay, ranges, ecn))
        elif frame_type == 0x06:
            offset, pos = read_varint(payload, pos)
            length, pos = read_varint(payload, pos)
            if pos + length > n:
                raise _error("CRYPTO frame overruns its packet")
            frames.append(CryptoFrame(offset, bytes(payload[pos : pos + length])))
            pos += length
        elif frame_type == 0x1C:
            error_code, pos = read_varint(payload, pos)
            closing_type, pos = read_varint(payload, pos)
            reason_len, pos = read_varint(payload, pos)
            if pos + reason_len > n:
                raise _error("CONNECTION_CLOSE reason overruns its packet")
            frames.append(ConnectionCloseFrame(error_code, closing_type, bytes(payload[pos : pos + reason_len])))
            pos += reason_len
        else:
            raise _error(f"frame type {frame_type:#x} is not allowed in an Initial packet")
    return frames


# --------------------------------------------------------------------------- CRYPTO stream


class _CryptoStream:
    """Reassembly of the CRYPTO stream: first copy of each byte wins."""

    __slots__ = ("_buffer", "_filled")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._filled: list[list[int]] = []  # sorted, merged [start, end) ranges

    def add(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > MAX_CRYPTO_STREAM:
            raise _error(f"CRYPTO data up to offset {end} exceeds the {MAX_CRYPTO_STREAM}-byte limit")
        if not data:
            return
        if len(self._buffer) < end:
            self._buffer.extend(bytes(end - len(self._buffer)))
        cursor = offset
        for start, stop in self._filled:
            if stop <= cursor:
                continue
            if start >= end:
                break
            if start > cursor:
                self._buffer[cursor:start] = data[cursor - offset : start - offset]
            cursor = max(cursor, stop)
            if cursor >= end:
                break
        if cursor < end:
            self._buffer[cursor:end] = data[cursor - offset :]
        self._filled.append([offset, end])
        self._filled.sort()
        merged: list[list[int]] = []
        for start, stop in self._filled:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        self._filled = merged

    def contiguous(self) -> bytes:
        if not self._filled or self._filled[0][0] != 0:
            return b""
        return bytes(self._buffer[: self._filled[0][1]])


# --------------------------------------------------------------------------- assembler


@dataclass(slots=True)
class ClientHelloAssembler:
    """Feed a QUIC client's datagrams; get its ClientHello once all its CRYPTO bytes arrived.

    Keys come from the DCID of the first Initial packet; a later Initial that does not
    authenticate with them is tried with keys from its own DCID (the client switches after a
    Retry). ``version``, ``dcid`` and ``packets`` describe what was decrypted so far.
    """

    version: int | None = None
    dcid: bytes | None = None
    packets: int = 0
    hello: bytes | None = None
    _largest_pn: int = -1
    _keys: dict[tuple[int, bytes], InitialKeys] = field(default_factory=dict)
    _crypto: _CryptoStream = field(default_factory=_CryptoStream)

    def _keys_for(self, version: int, dcid: bytes) -> InitialKeys:
        keys = self._keys.get((version, dcid))
        if keys is None:
            keys = self._keys[(version, dcid)] = initial_keys(dcid, version)
        return keys

    def _decrypt(self, datagram: bytes, header: LongHeader) -> InitialPacket:
        candidates = []
        if self.dcid is not None and self.version == header.version:
            candidates.append(self.dcid)
        if header.dcid not in candidates:
            candidates.append(header.dcid)
        error: WireError | None = None
        for dcid in candidates:
            try:
                packet = decrypt_initial(
                    datagram, header, self._keys_for(header.version, dcid), largest_pn=self._largest_pn
                )
            except WireError as exc:
                error = exc
                continue
            if self.dcid is None:
                self.dcid, self.version = dcid, header.version
            return packet
        assert error is not None
        raise error

    def feed(self, datagram: bytes) -> bytes | None:
        """Process one UDP datagram from the client; the ClientHello once complete, else None."""
        if self.hello is not None:
            return self.hello
        datagram = bytes(datagram)
        offset = 0
        while offset < len(datagram):
            header = parse_long_header(datagram, offset)
            if header is None:  # short header: the rest of the datagram is one 1-RTT packet
                break
            if header.packet_type == "initial":
                packet = self._decrypt(datagram, header)
                self.packets += 1
                self._largest_pn = max(self._largest_pn, packet.packet_number)
                for frame in parse_frames(packet.payload):
                    if isinstance(frame, CryptoFrame):
                        self._crypto.add(frame.offset, frame.data)
            if header.end <= offset:  # cannot happen with a valid Length, but never loop
                break
            offset = header.end
        return self._check_complete()

    def _check_complete(self) -> bytes | None:
        data = self._crypto.contiguous()
        if not data:
            return None
        if data[0] != 0x01:
            raise _error(f"first CRYPTO message is handshake type {data[0]}, not a ClientHello")
        if len(data) < 4:
            return None
        length = int.from_bytes(data[1:4], "big")
        if len(data) < 4 + length:
            return None
        self.hello = data[: 4 + length]
        return self.hello


def client_hello_from_datagrams(datagrams: list[bytes]) -> bytes | None:
    """The ClientHello carried by these client datagrams (in order), or None if incomplete."""
    assembler = ClientHelloAssembler()
    for datagram in datagrams:
        hello = assembler.feed(datagram)
        if hello is not None:
            return hello
    return None

"""QUIC Initial packets built for tests: a QUIC ClientHello, CRYPTO frames, and packet
protection by a small independent implementation of RFC 9001 section 5 (written from the RFC,
using ``cryptography`` directly).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mirror.wire import quic

RFC_DCID = bytes.fromhex("8394c8f03e515708")



def varint(value: int, size: int | None = None) -> bytes:
    if size is None:
        size = 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return (value | (prefix << (8 * size - 2))).to_bytes(size, "big")


def client_hello(sni: bytes = b"quic.example", alpn: bytes = b"h3", padding: int = 0) -> bytes:
    """A TLS 1.3 ClientHello handshake message as a QUIC client sends it."""

    def ext(kind: int, data: bytes) -> bytes:
        return struct.pack("!HH", kind, len(data)) + data

    server_name = struct.pack("!HBH", len(sni) + 3, 0, len(sni)) + sni
    protocols = bytes([len(alpn)]) + alpn
    extensions = b"".join(
        [
            ext(0x0000, server_name),
            ext(0x000A, struct.pack("!HHH", 4, 0x001D, 0x0017)),
            ext(0x000D, struct.pack("!HHHH", 6, 0x0403, 0x0804, 0x0401)),
            ext(0x0010, struct.pack("!H", len(protocols)) + protocols),
            ext(0x002B, b"\x02\x03\x04"),
            ext(0x0033, struct.pack("!HHH", 36, 0x001D, 32) + bytes(32)),
            ext(0x0039, b"\x01\x02\x03\x04" + bytes(padding)),
        ]
    )
    body = struct.pack("!H", 0x0303) + bytes(range(32)) + b"\x00"
    body += struct.pack("!HHHH", 6, 0x1301, 0x1302, 0x1303) + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


ACK_FRAME = b"\x02" + varint(0) + varint(0) + varint(0) + varint(0)
PING_FRAME = b"\x01"


def protect(
    payload: bytes,
    *,
    dcid: bytes = RFC_DCID,
    key_dcid: bytes | None = None,
    scid: bytes = b"\x01\x02\x03\x04",
    version: int = quic.QUIC_V1,
    packet_number: int = 0,
    pn_len: int = 2,
    token: bytes = b"",
    packet_type: str = "initial",
) -> bytes:
    """An Initial (or Handshake, with garbage protection) packet built per RFC 9001 section 5."""
    keys = quic.initial_keys(key_dcid or dcid, version)
    type_bits = {"initial": 0, "0rtt": 1, "handshake": 2}[packet_type]
    if version == quic.QUIC_V2:
        type_bits = {"initial": 1, "0rtt": 2, "handshake": 3}[packet_type]
    minimum = 20 - pn_len  # enough ciphertext for the 16-byte header-protection sample
    if len(payload) + 16 < minimum:
        payload += bytes(minimum - len(payload) - 16)
    first = 0xC0 | (type_bits << 4) | (pn_len - 1)
    header = bytes([first]) + version.to_bytes(4, "big")
    header += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if packet_type == "initial":
        header += varint(len(token)) + token
    header += varint(pn_len + len(payload) + 16, 2)
    pn_offset = len(header)
    header += (packet_number & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    packet = bytearray(header + AESGCM(keys.key).encrypt(nonce, payload, header))
    sample = bytes(packet[pn_offset + 4 : pn_offset + 20])
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


def initial_flight(hello: bytes, *, version: int = quic.QUIC_V1, pieces: int = 3, reverse: bool = True) -> list[bytes]:
    """The hello cut into CRYPTO frames over several Initial packets, one per datagram."""
    step = -(-len(hello) // pieces)
    chunks = [(offset, hello[offset : offset + step]) for offset in range(0, len(hello), step)]
    if reverse:
        chunks.reverse()
    datagrams = []
    for number, (offset, chunk) in enumerate(chunks):
        payload = PING_FRAME + crypto_frame(offset, chunk) + bytes(40)  # + PADDING
        datagrams.append(protect(payload, version=version, packet_number=number))
    return datagrams

"""Decrypt what a TLS 1.3 client sent, given its key-log secrets, to fingerprint the HTTP inside.

A capture may carry the TLS secrets of its connections (a pcapng Decryption Secrets Block, as
Wireshark's "inject secrets" writes) or come with an ``SSLKEYLOGFILE``. With the client's
``CLIENT_HANDSHAKE_TRAFFIC_SECRET`` and ``CLIENT_TRAFFIC_SECRET_0`` for its ClientHello random
and the cipher suite from the server's ServerHello, the client's records are decrypted
(RFC 8446 section 5.2: per-record nonce = IV xor sequence number, the record header as
associated data, the real content type at the end of the padded plaintext) and the
application data is returned, ready for the HTTP/1 or HTTP/2 walk.

Covered: the three TLS 1.3 AEAD suites (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305), the
handshake epoch (client Finished, a client certificate), the application epoch and its
KeyUpdates, 0-RTT early data (``CLIENT_EARLY_TRAFFIC_SECRET``) up to EndOfEarlyData.
Not covered: TLS 1.2 and older (``CLIENT_RANDOM`` master secrets) -- the walk then simply
stops at the encrypted records. Decryption stops quietly at the first record that does not
authenticate; nothing here raises for odd input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = ["KeyLog", "decrypt_client_records", "parse_keylog", "server_cipher_suite"]

# TLS 1.3 suite -> (AEAD, key length, hash of the key schedule)
_Suite = tuple[type[AESGCM] | type[ChaCha20Poly1305], int, type[hashes.HashAlgorithm]]
_SUITES: dict[int, _Suite] = {
    0x1301: (AESGCM, 16, hashes.SHA256),
    0x1302: (AESGCM, 32, hashes.SHA384),
    0x1303: (ChaCha20Poly1305, 32, hashes.SHA256),
}

_CCS, _ALERT, _HANDSHAKE, _APPDATA = 20, 21, 22, 23
_HS_SERVER_HELLO = 2
_HS_END_OF_EARLY_DATA = 5
_HS_FINISHED = 20
_HS_KEY_UPDATE = 24
_MAX_RECORDS = 100_000

KeyLog = dict[tuple[str, bytes], bytes]  # (label, client random) -> secret


def parse_keylog(texts: Iterable[bytes]) -> KeyLog:
    """NSS key-log lines (``LABEL <client random hex> <secret hex>``) into a lookup table."""
    table: KeyLog = {}
    for text in texts:
        for raw_line in text.splitlines():
            fields = raw_line.split()
            if len(fields) != 3 or fields[0].startswith(b"#"):
                continue
            try:
                label = fields[0].decode("ascii")
                random, secret = bytes.fromhex(fields[1].decode("ascii")), bytes.fromhex(fields[2].decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                continue
            if len(random) == 32:
                table.setdefault((label, random), secret)
    return table


def server_cipher_suite(server_data: bytes) -> int | None:
    """The cipher suite of the first ServerHello in the server's bytes, if readable.

    The ServerHello record is looked for in the first 16 KiB, so a tunnel's answer (an HTTP
    ``200`` to CONNECT, a SOCKS reply) before it does not matter.
    """
    start = 0
    while True:
        start = server_data.find(b"\x16\x03", start, 16384)
        if start < 0 or start + 5 + 39 > len(server_data):
            return None
        if server_data[start + 5] == _HS_SERVER_HELLO:
            break
        start += 1
    # ServerHello: type(1) len(3) legacy_version(2) random(32) session_id<1> cipher_suite(2)
    hello = server_data[start + 5 :]
    offset = 39 + hello[38]
    if len(hello) < offset + 2:
        return None
    return struct.unpack_from("!H", hello, offset)[0]


def _expand_label(secret: bytes, label: bytes, length: int, hash_cls: type[hashes.HashAlgorithm]) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(algorithm=hash_cls(), length=length, info=info).derive(secret)


class _Epoch:
    __slots__ = ("aead", "iv", "secret", "seq")

    def __init__(self, secret: bytes, suite: _Suite) -> None:
        aead_cls, key_len, hash_cls = suite
        self.secret = secret
        self.aead = aead_cls(_expand_label(secret, b"key", key_len, hash_cls))
        self.iv = _expand_label(secret, b"iv", 12, hash_cls)
        self.seq = 0

    def open(self, header: bytes, ciphertext: bytes) -> bytes | None:
        nonce = (int.from_bytes(self.iv, "big") ^ self.seq).to_bytes(12, "big")
        try:
            plaintext = self.aead.decrypt(nonce, ciphertext, header)
        except (InvalidTag, ValueError):
            return None
        self.seq += 1
        return plaintext


def _inner(plaintext: bytes) -> tuple[int, bytes] | None:
    end = len(plaintext)
    while end > 0 and plaintext[end - 1] == 0:
        end -= 1
    if end == 0:
        return None
    return plaintext[end - 1], plaintext[: end - 1]


def decrypt_client_records(
    data: bytes, start: int, client_random: bytes, suite_id: int | None, keylog: KeyLog
) -> bytes | None:
    """The application data the client sent, decrypting its records from ``data[start:]``.

    ``start`` is just after the (last) ClientHello. None when the secrets or the suite are
    unknown or the first encrypted record does not authenticate.
    """
    suite = _SUITES.get(suite_id) if suite_id is not None else None
    handshake_secret = keylog.get(("CLIENT_HANDSHAKE_TRAFFIC_SECRET", client_random))
    traffic_secret = keylog.get(("CLIENT_TRAFFIC_SECRET_0", client_random))
    early_secret = keylog.get(("CLIENT_EARLY_TRAFFIC_SECRET", client_random))
    if suite is None or handshake_secret is None or traffic_secret is None:
        return None
    try:
        handshake = _Epoch(handshake_secret, suite)
        application = _Epoch(traffic_secret, suite)
        early = _Epoch(early_secret, suite) if early_secret else None
    except ValueError:
        return None
    hash_len = suite[2]().digest_size
    current = early if early is not None else handshake
    decrypted_any = False
    output = bytearray()
    position = start
    for _ in range(_MAX_RECORDS):
        if position + 5 > len(data):
            break
        header = bytes(data[position : position + 5])
        content_type, length = header[0], struct.unpack_from("!H", header, 3)[0]
        record = data[position + 5 : position + 5 + length]
        if len(record) < length:
            break
        position += 5 + length
        if content_type in (_CCS, _HANDSHAKE):
            continue  # middlebox-compatibility CCS, a second ClientHello after HelloRetryRequest
        if content_type != _APPDATA:
            break
        plaintext = current.open(header, bytes(record))
        if plaintext is None and current is early:
            current = handshake  # no early data after all
            plaintext = current.open(header, bytes(record))
        if plaintext is None:
            break
        decrypted_any = True
        inner = _inner(plaintext)
        if inner is None:
            break
        inner_type, content = inner
        if inner_type == _APPDATA:
            output += content
        elif inner_type == _HANDSHAKE:
            message_types = _handshake_types(content)
            if current is early and _HS_END_OF_EARLY_DATA in message_types:
                current = handshake
            if current is handshake and _HS_FINISHED in message_types:
                current = application
            elif current is application and _HS_KEY_UPDATE in message_types:
                current.secret = _expand_label(current.secret, b"traffic upd", hash_len, suite[2])
                current = application = _Epoch(current.secret, suite)
        elif inner_type == _ALERT:
            break
    return bytes(output) if decrypted_any else None


def _handshake_types(content: bytes) -> list[int]:
    types = []
    position = 0
    while position + 4 <= len(content):
        types.append(content[position])
        position += 4 + int.from_bytes(content[position + 1 : position + 4], "big")
    return types

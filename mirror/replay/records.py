"""The TLS record layer: framing of incoming records and AEAD protection both ways.

``RecordReader`` cuts the server's byte stream into records and refuses a header that cannot
be TLS or announces more than the protocol allows. ``Tls13Protection`` and ``Tls12Protection``
seal and open records of one direction (RFC 8446 5.2 / RFC 5288 + RFC 7905); ``max_plaintext``
is the limit on what the peer may send us (record_size_limit, max_fragment_length), checked on
every opened record. ``open_into`` opens a record straight into the caller's buffer (the
relay's read buffer), so bulk data is decrypted once and copied nowhere else.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag

from mirror.replay.errors import ReplayError
from mirror.replay.keyschedule import Suite

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
MAX_PLAINTEXT = 1 << 14
ALERT_RECORD_OVERFLOW, ALERT_BAD_RECORD_MAC, ALERT_DECODE = 22, 20, 50
_HEADER = struct.Struct("!BHH")


def _overflow(message: str) -> ReplayError:
    return ReplayError("record-overflow", message, alert=ALERT_RECORD_OVERFLOW)


class RecordReader:
    """Cuts the server's stream into (type, version, fragment) records.

    Records are cut from an immutable ``bytes`` of what was read (no copy). A partial record
    left over is completed from the next read: only that record is joined (a copy of one
    record, not of the read) and the read is cut from where it ends. A leftover without its
    whole header is joined to the next read when that read is at least as long; shorter reads
    (a server trickling bytes) are appended to a bytearray instead, so the cost stays linear in
    the bytes received either way."""

    def __init__(self) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0  # where the next record starts in _buf
        self._rest: tuple[bytes, int] | None = None  # a read (and where) to go on with after _buf
        self.max_fragment = MAX_PLAINTEXT + 2048  # TLS 1.2 ciphertext limit; 1.3 lowers it

    def feed(self, data: bytes) -> None:
        if self._rest is not None:  # fed before the last read was cut whole: one buffer again
            rest, at = self._rest
            self._buf, self._pos, self._rest = b"".join((memoryview(self._buf)[self._pos:],
                                                         memoryview(rest)[at:])), 0, None
        buf, pos = self._buf, self._pos
        left = len(buf) - pos
        if not left:
            self._buf = bytes(data)
        elif left >= 5 and 0 < 5 + ((buf[pos + 3] << 8) | buf[pos + 4]) - left < len(data):
            need = 5 + ((buf[pos + 3] << 8) | buf[pos + 4]) - left
            data = bytes(data)
            self._buf = b"".join((memoryview(buf)[pos:], memoryview(data)[:need]))
            self._rest = (data, need)
        elif len(data) >= left:
            self._buf = b"".join((memoryview(buf)[pos:], data))
        else:
            if isinstance(buf, bytes):
                buf = bytearray(memoryview(buf)[pos:])
            elif pos:
                del buf[:pos]
            buf += data
            self._buf = buf
        self._pos = 0

    @property
    def pending(self) -> int:
        rest = len(self._rest[0]) - self._rest[1] if self._rest is not None else 0
        return len(self._buf) - self._pos + rest

    def next(self, view: bool = False) -> tuple[int, bytes, bytes | memoryview] | None:
        """The next whole record as (content type, 5-byte header, fragment), or None. With
        ``view`` the fragment may be a memoryview of the bytes read (no copy; they never
        change), to be used before the next ``feed``."""
        buf, pos = self._buf, self._pos
        if pos == len(buf) and self._rest is not None:  # the joined record is out: the read
            (self._buf, self._pos), self._rest = self._rest, None
            buf, pos = self._buf, self._pos
        left = len(buf) - pos
        if left < 5:
            if left and buf[pos] not in (20, 21, 22, 23):
                raise ReplayError("decode", f"record type {buf[pos]} is not TLS", alert=10)
            return None
        kind, major, length = buf[pos], buf[pos + 1], (buf[pos + 3] << 8) | buf[pos + 4]
        if kind not in (20, 21, 22, 23) or major != 3:
            raise ReplayError("decode", f"record header {bytes(buf[pos:pos + 5]).hex()} is not "
                              "TLS", alert=10)
        if length > self.max_fragment:
            raise _overflow(f"record of {length} bytes (limit {self.max_fragment})")
        end = pos + 5 + length
        if len(buf) < end:
            return None
        if isinstance(buf, bytes):
            header = buf[pos:pos + 5]
            fragment = memoryview(buf)[pos + 5:end] if view else buf[pos + 5:end]
        else:
            header, fragment = bytes(buf[pos:pos + 5]), bytes(buf[pos + 5:end])
        self._pos = end
        return kind, header, fragment


class Tls13Protection:
    """One direction's TLS 1.3 record protection (key, IV, sequence number)."""

    def __init__(self, suite: Suite, key: bytes, iv: bytes) -> None:
        self.aead = suite.cipher(key)
        self.iv = int.from_bytes(iv, "big")
        self.tag_len = suite.tag_len
        self.seq = 0
        self.max_plaintext = MAX_PLAINTEXT  # the inner plaintext, content type excluded
        self.overhead = 5 + 1 + self.tag_len  # what sealing adds to the plaintext
        self._inner = memoryview(b"")  # data + content type, reused (made on the first seal)

    def seal_into(self, content_type: int, data: bytes | memoryview, out: memoryview) -> None:
        """The record for ``data`` (header, then encrypted) written into ``out``, which must be
        ``len(data) + overhead`` bytes long."""
        self.seal_records(content_type, memoryview(data), (len(data),), out)

    def seal_records(self, content_type: int, data: memoryview, sizes: Sequence[int],
                     out: memoryview) -> None:
        """Records of ``sizes`` plaintext bytes each, cut from ``data`` in turn, written back
        to back into ``out``, which must be ``sum(sizes) + overhead * len(sizes)`` bytes long.
        One call for a whole write: the per-record work is a copy into the inner plaintext
        buffer (data, then the content type) and the encryption straight into ``out``."""
        inner = self._inner
        encrypt, pack, iv, tag_len = self.aead.encrypt_into, _HEADER.pack, self.iv, self.tag_len
        seq = self.seq
        pos = at = 0
        try:
            for size in sizes:
                if size >= len(inner):  # grown to what is sealed: handshakes seal small records
                    self._inner = inner = memoryview(bytearray(
                        min(max(size + 1, 2 * len(inner)), max(size + 1, MAX_PLAINTEXT + 1))))
                inner[:size] = data[pos:pos + size]
                inner[size] = content_type
                length = size + 1 + tag_len
                header = pack(APPLICATION_DATA, 0x0303, length)
                out[at:at + 5] = header
                at += 5
                encrypt((iv ^ seq).to_bytes(12, "big"), inner[:size + 1], header,
                        out[at:at + length])
                seq += 1
                pos += size
                at += length
        finally:
            self.seq = seq

    def seal(self, content_type: int, data: bytes) -> bytes:
        out = bytearray(len(data) + self.overhead)
        self.seal_into(content_type, data, memoryview(out))
        return bytes(out)

    def open(self, header: bytes, fragment: bytes | memoryview) -> tuple[int, bytes]:
        if len(fragment) > MAX_PLAINTEXT + 256:
            raise _overflow(f"protected record of {len(fragment)} bytes (limit 2^14+256)")
        nonce = (self.iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        try:
            inner = self.aead.decrypt(nonce, fragment, header)
        except InvalidTag:
            raise ReplayError("bad-record-mac", "a record from the server does not decrypt",
                              alert=ALERT_BAD_RECORD_MAC) from None
        end = len(inner)
        if end and not inner[-1]:  # padding: zeros after the content type
            end = len(inner.rstrip(b"\0"))
        if not end:
            raise ReplayError("decode", "a protected record has no content type",
                              alert=ALERT_DECODE)
        if end - 1 > self.max_plaintext:
            raise _overflow(f"record plaintext of {end - 1} bytes (limit {self.max_plaintext})")
        return inner[end - 1], inner[:end - 1]

    def open_into(self, header: bytes, fragment: bytes | memoryview,
                  buffer: memoryview) -> tuple[int, int]:
        """``open`` with the inner plaintext written into ``buffer``, which must be
        ``len(fragment) - tag_len`` bytes long (more than 0): (content type, length of the
        content, from the start of ``buffer``). Nothing of ``buffer`` is valid after an error."""
        if len(fragment) > MAX_PLAINTEXT + 256:
            raise _overflow(f"protected record of {len(fragment)} bytes (limit 2^14+256)")
        nonce = (self.iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        try:
            self.aead.decrypt_into(nonce, fragment, header, buffer)
        except InvalidTag:
            raise ReplayError("bad-record-mac", "a record from the server does not decrypt",
                              alert=ALERT_BAD_RECORD_MAC) from None
        end = len(buffer)
        if not buffer[end - 1]:  # padding: zeros after the content type
            end = len(bytes(buffer).rstrip(b"\0"))
            if not end:
                raise ReplayError("decode", "a protected record has no content type",
                                  alert=ALERT_DECODE)
        if end - 1 > self.max_plaintext:
            raise _overflow(f"record plaintext of {end - 1} bytes (limit {self.max_plaintext})")
        return buffer[end - 1], end - 1


class Tls12Protection:
    """One direction's TLS 1.2 AEAD record protection (GCM with explicit nonce, or ChaCha20)."""

    def __init__(self, suite: Suite, key: bytes, iv: bytes) -> None:
        self.aead = suite.cipher(key)
        self.iv = iv
        self.explicit = suite.aead == "aes-gcm"
        self.tag_len = (8 if self.explicit else 0) + 16  # what a record adds to its plaintext
        self.overhead = 5 + self.tag_len  # the header too
        self.seq = 0
        self.max_plaintext = MAX_PLAINTEXT

    def _nonce(self, explicit: bytes | memoryview) -> bytes:
        if self.explicit:
            return self.iv + explicit
        return (int.from_bytes(self.iv, "big") ^ self.seq).to_bytes(12, "big")

    def seal_into(self, content_type: int, data: bytes | memoryview, out: memoryview) -> None:
        """The record for ``data`` (header, explicit nonce, encrypted) written into ``out``,
        which must be ``len(data) + overhead`` bytes long."""
        seq = struct.pack("!Q", self.seq)
        aad = seq + struct.pack("!BHH", content_type, 0x0303, len(data))
        explicit = seq if self.explicit else b""
        start = 5 + len(explicit)
        out[:start] = struct.pack("!BHH", content_type, 0x0303, len(data) + self.tag_len) \
            + explicit
        self.aead.encrypt_into(self._nonce(seq), data, aad, out[start:])
        self.seq += 1

    def seal_records(self, content_type: int, data: memoryview, sizes: Sequence[int],
                     out: memoryview) -> None:
        """Records of ``sizes`` plaintext bytes each, cut from ``data`` in turn, written back
        to back into ``out`` (``sum(sizes) + overhead * len(sizes)`` bytes long)."""
        pos = at = 0
        overhead = self.overhead
        for size in sizes:
            self.seal_into(content_type, data[pos:pos + size], out[at:at + size + overhead])
            pos += size
            at += size + overhead

    def seal(self, content_type: int, data: bytes) -> bytes:
        out = bytearray(len(data) + self.overhead)
        self.seal_into(content_type, data, memoryview(out))
        return bytes(out)

    def open(self, header: bytes, fragment: bytes | memoryview) -> tuple[int, bytes]:
        content_type = header[0]
        extra = self.tag_len
        if len(fragment) < extra:
            raise ReplayError("bad-record-mac", "a protected record is too short",
                              alert=ALERT_BAD_RECORD_MAC)
        if len(fragment) - extra > self.max_plaintext:
            raise _overflow(f"record plaintext of {len(fragment) - extra} bytes "
                            f"(limit {self.max_plaintext})")
        explicit = fragment[:8] if self.explicit else b""
        body = fragment[8:] if self.explicit else fragment
        aad = struct.pack("!QBHH", self.seq, content_type, 0x0303, len(body) - 16)
        try:
            data = self.aead.decrypt(self._nonce(explicit), body, aad)
        except InvalidTag:
            raise ReplayError("bad-record-mac", "a record from the server does not decrypt",
                              alert=ALERT_BAD_RECORD_MAC) from None
        self.seq += 1
        return content_type, data

    def open_into(self, header: bytes, fragment: bytes | memoryview,
                  buffer: memoryview) -> tuple[int, int]:
        """``open`` with the plaintext written into ``buffer``, ``len(fragment) - tag_len``
        bytes long: (content type, its length). Nothing of ``buffer`` is valid after an
        error."""
        content_type = header[0]
        size = len(fragment) - self.tag_len
        if size < 0:
            raise ReplayError("bad-record-mac", "a protected record is too short",
                              alert=ALERT_BAD_RECORD_MAC)
        if size > self.max_plaintext:
            raise _overflow(f"record plaintext of {size} bytes (limit {self.max_plaintext})")
        explicit = fragment[:8] if self.explicit else b""
        body = fragment[8:] if self.explicit else fragment
        aad = struct.pack("!QBHH", self.seq, content_type, 0x0303, size)
        try:
            self.aead.decrypt_into(self._nonce(bytes(explicit)), body, aad, buffer)
        except InvalidTag:
            raise ReplayError("bad-record-mac", "a record from the server does not decrypt",
                              alert=ALERT_BAD_RECORD_MAC) from None
        self.seq += 1
        return content_type, size

"""Read a pcap or pcapng capture file and yield the innermost IP packet of every frame.

The format is detected by magic number, not by file name (several ``.pcapng`` files in the
wild are classic pcap). Classic pcap (micro- and nanosecond, either byte order) is read with
``dpkt.pcap.Reader``. pcapng is walked block by block here and each block decoded with dpkt's
block classes (``dpkt.pcapng.InterfaceDescriptionBlock`` / ``EnhancedPacketBlock`` /
``PacketBlock``): ``dpkt.pcapng.Reader`` itself only honours the first interface and the first
section, and silently stops on a damaged block, while a pcapng file may carry several
interfaces with different link types and time resolutions, several sections, and (in a
Decryption Secrets Block) TLS key-log lines, which are collected in ``CaptureReader.secrets``.

Errors (all subclasses of :class:`PcapError`):

* :class:`NotACaptureError` -- the file cannot be opened, or its first bytes are not a pcap
  or pcapng header. Raised by ``CaptureReader(path)`` before anything is yielded.
* :class:`CorruptCaptureError` -- the file is damaged or cut short after its header (a
  record header or block cut in the middle, a length field that lies). Raised by the
  iterator *after* every readable frame before the damage has been yielded, so a caller can
  report what was read and then the error.

Link layers and tunnels are removed by :mod:`mirror.pcapfile.decap`; frames without IP (or
of a link type it does not know) are counted in ``CaptureReader.skipped`` and not yielded.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Self

import dpkt
import dpkt.pcap
import dpkt.pcapng

from mirror.pcapfile.decap import SUPPORTED_LINKTYPES, innermost_ip

__all__ = [
    "MAX_RECORD_SIZE",
    "CaptureReader",
    "CorruptCaptureError",
    "Frame",
    "NotACaptureError",
    "PcapError",
    "capture_format",
    "read_packets",
]

MAX_RECORD_SIZE = 16 * 1024 * 1024  # a record or block larger than this is a corrupt length

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4",  # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1",  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d",  # big-endian, nanoseconds
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

_BT_SHB = 0x0A0D0D0A
_BT_IDB = 0x00000001
_BT_PB = 0x00000002
_BT_SPB = 0x00000003
_BT_EPB = 0x00000006
_BT_DSB = 0x0000000A
_BOM = 0x1A2B3C4D
_SECRETS_TLS_KEYLOG = 0x544C534B  # "TLSK"

_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


class PcapError(Exception):
    """The capture file could not be read (base class of this package's errors)."""


class NotACaptureError(PcapError):
    """The file is missing, unreadable, or not a pcap / pcapng capture at all."""


class CorruptCaptureError(PcapError):
    """The capture is damaged or truncated after its header.

    ``frames`` is how many frames were yielded before the damage, ``offset`` the file offset
    where it was found.
    """

    def __init__(self, message: str, *, frames: int, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset}, after {frames} frames)")
        self.reason = message
        self.frames = frames
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: when, which link type, the bytes as captured."""

    timestamp: float
    linktype: int
    data: bytes
    number: int  # 1-based frame number in the file, as Wireshark counts


def capture_format(head: bytes) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None, from the first four bytes of a file."""
    magic = head[:4]
    if magic in _PCAP_MAGICS:
        return "pcap"
    if magic == _PCAPNG_MAGIC:
        return "pcapng"
    return None


class _TrackedFile:
    """A read-only file wrapper that notices short reads and refuses absurd sizes.

    dpkt's pcap reader silently returns a short packet when the file ends inside a record;
    this wrapper records it so the reader can report the truncation instead.
    """

    def __init__(self, raw: BinaryIO, size: int) -> None:
        self._raw = raw
        self._size = size
        self.last_short = False  # the most recent read returned fewer bytes than asked for
        self.name = getattr(raw, "name", "<capture>")

    def read(self, n: int = -1) -> bytes:
        remaining = max(0, self._size - self._raw.tell())
        if n is None or n < 0:
            n = remaining
        data = self._raw.read(min(n, remaining))
        self.last_short = len(data) < n
        return data

    def tell(self) -> int:
        return self._raw.tell()


class CaptureReader:
    """An open capture file; iterate it for :class:`Frame` objects, or use ``ip_packets()``.

    Opening validates the file header (``NotACaptureError``); iteration raises
    ``CorruptCaptureError`` after the last readable frame if the file is damaged.
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.format: str = ""
        self.frames_read = 0
        self.skipped = 0  # frames without an IP packet we could find
        self.unsupported_linktypes: set[int] = set()  # link types seen that decap cannot read
        self.secrets: list[bytes] = []  # TLS key-log text from pcapng Decryption Secrets Blocks
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 -- closed by close()
        except OSError as error:
            reason = error.strerror or str(error)
            raise NotACaptureError(f"{self.path}: {reason}") from None
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            head = self._file.read(4)
            self._file.seek(0)
        except OSError as error:
            self._file.close()
            raise NotACaptureError(f"{self.path}: {error.strerror or error}") from None
        fmt = capture_format(head)
        if fmt is None:
            self._file.close()
            if len(head) < 4:
                raise NotACaptureError(f"{self.path}: empty or too short to be a capture file")
            raise NotACaptureError(f"{self.path}: not a pcap or pcapng file (magic {head.hex()})")
        self.format = fmt
        if fmt == "pcap":
            self._tracked = _TrackedFile(self._file, self._size)
            try:
                self._pcap = dpkt.pcap.Reader(self._tracked)
            except (ValueError, dpkt.Error, struct.error) as error:
                self._file.close()
                raise NotACaptureError(f"{self.path}: damaged pcap file header ({error})") from None
        else:
            self._check_pcapng_header()

    # ------------------------------------------------------------------ public API

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def position(self) -> int:
        """How far into the file reading has got (bytes; for progress reports)."""
        return self._file.tell()

    def __iter__(self) -> Iterator[Frame]:
        if self.format == "pcap":
            yield from self._iter_pcap()
        else:
            yield from self._iter_pcapng()

    def ip_packets(self) -> Iterator[tuple[float, bytes]]:
        """(timestamp, innermost IP packet bytes) for every frame that carries IP."""
        for frame in self:
            if frame.linktype not in SUPPORTED_LINKTYPES:
                self.unsupported_linktypes.add(frame.linktype)
            packet = innermost_ip(frame.linktype, frame.data)
            if packet is None:
                self.skipped += 1
                continue
            yield frame.timestamp, packet

    # ------------------------------------------------------------------ pcap

    def _corrupt(self, message: str, offset: int | None = None) -> CorruptCaptureError:
        where = self._file.tell() if offset is None else offset
        return CorruptCaptureError(f"{self.path}: {message}", frames=self.frames_read, offset=where)

    def _iter_pcap(self) -> Iterator[Frame]:
        linktype = self._pcap.datalink() & 0xFFFF  # upper bits: FCS length / flags (pcap spec)
        iterator = iter(self._pcap)
        while True:
            start = self._file.tell()
            try:
                timestamp, data = next(iterator)
            except StopIteration:
                return
            except (dpkt.Error, struct.error, ValueError):
                raise self._corrupt("pcap record header cut short", start) from None
            if self._tracked.last_short:  # the record's data ended early: the file is cut
                raise self._corrupt("last pcap record cut short (file truncated)", start)
            if len(data) > MAX_RECORD_SIZE:
                raise self._corrupt(f"pcap record of {len(data)} bytes: corrupt length", start)
            self.frames_read += 1
            yield Frame(float(timestamp), linktype, bytes(data), self.frames_read)

    # ------------------------------------------------------------------ pcapng

    def _check_pcapng_header(self) -> None:
        head = self._file.read(12)
        self._file.seek(0)
        if len(head) < 12:
            self._file.close()
            raise NotACaptureError(f"{self.path}: pcapng section header cut short")
        bom = head[8:12]
        if bom not in (struct.pack("<I", _BOM), struct.pack(">I", _BOM)):
            self._file.close()
            raise NotACaptureError(f"{self.path}: pcapng section header has no byte-order magic")

    def _iter_pcapng(self) -> Iterator[Frame]:
        order = "<"
        interfaces: list[tuple[int, float, float, int]] = []  # linktype, divisor, offset, snaplen
        read = self._file.read
        while True:
            start = self._file.tell()
            head = read(8)
            if not head:
                return
            if len(head) < 8:
                raise self._corrupt("pcapng block header cut short", start)
            if head[:4] == _PCAPNG_MAGIC:  # a new section: byte order may change
                bom = read(4)
                if len(bom) < 4:
                    raise self._corrupt("pcapng section header cut short", start)
                if bom == struct.pack("<I", _BOM):
                    order = "<"
                elif bom == struct.pack(">I", _BOM):
                    order = ">"
                else:
                    raise self._corrupt("pcapng section header without byte-order magic", start)
                length = struct.unpack(order + "I", head[4:8])[0]
                rest_len = length - 12
                interfaces = []
                head = head + bom
            else:
                length = struct.unpack(order + "I", head[4:8])[0]
                rest_len = length - 8
            block_type = struct.unpack(order + "I", head[:4])[0]
            if length < 12 or length % 4 or length > MAX_RECORD_SIZE:
                raise self._corrupt(f"pcapng block with impossible length {length}", start)
            rest = read(rest_len)
            if len(rest) < rest_len:
                raise self._corrupt("last pcapng block cut short (file truncated)", start)
            block = head + rest
            if struct.unpack(order + "I", block[-4:])[0] != length:
                raise self._corrupt("pcapng block lengths disagree", start)
            try:
                frame = self._pcapng_block(block_type, block, order, interfaces)
            except (dpkt.Error, struct.error, ValueError, IndexError, OverflowError, ZeroDivisionError) as error:
                raise self._corrupt(f"damaged pcapng block of type {block_type:#x} ({error})", start) from None
            if frame is not None:
                yield frame

    def _pcapng_block(
        self, block_type: int, block: bytes, order: str, interfaces: list[tuple[int, float, float, int]]
    ) -> Frame | None:
        little = order == "<"
        if block_type == _BT_IDB:
            idb = (dpkt.pcapng.InterfaceDescriptionBlockLE(block) if little
                   else dpkt.pcapng.InterfaceDescriptionBlock(block))
            divisor, offset = 1e6, 0.0
            for option in idb.opts:
                if option.code == _OPT_IF_TSRESOL and len(option.data) >= 1:
                    value = option.data[0]
                    divisor = float(2 ** (value & 0x7F)) if value & 0x80 else float(10 ** (value & 0x7F))
                elif option.code == _OPT_IF_TSOFFSET and len(option.data) >= 8:
                    offset = float(struct.unpack(order + "q", option.data[:8])[0])
            interfaces.append((idb.linktype, divisor, offset, idb.snaplen))
            return None
        if block_type in (_BT_EPB, _BT_PB):
            # Enhanced and obsolete packet blocks share the layout checked here.
            if len(block) < 32:
                raise ValueError("packet block too short")
            caplen = struct.unpack_from(order + "I", block, 20)[0]
            if caplen > len(block) - 32:
                raise ValueError(f"captured length {caplen} exceeds its block")
            if block_type == _BT_EPB:
                cls = dpkt.pcapng.EnhancedPacketBlockLE if little else dpkt.pcapng.EnhancedPacketBlock
            else:
                cls = dpkt.pcapng.PacketBlockLE if little else dpkt.pcapng.PacketBlock
            packet = cls(block)
            if packet.iface_id >= len(interfaces):
                raise ValueError(f"packet for undeclared interface {packet.iface_id}")
            linktype, divisor, ts_offset, _ = interfaces[packet.iface_id]
            timestamp = ts_offset + ((packet.ts_high << 32) | packet.ts_low) / divisor
            self.frames_read += 1
            return Frame(timestamp, linktype, bytes(packet.pkt_data), self.frames_read)
        if block_type == _BT_SPB:
            if not interfaces:
                raise ValueError("simple packet block before any interface")
            linktype, _, _, snaplen = interfaces[0]
            original = struct.unpack_from(order + "I", block, 8)[0]
            room = len(block) - 16
            caplen = min(original, room, snaplen) if snaplen else min(original, room)
            self.frames_read += 1
            return Frame(0.0, linktype, bytes(block[12 : 12 + caplen]), self.frames_read)
        if block_type == _BT_DSB and len(block) >= 20:
            secrets_type, secrets_len = struct.unpack_from(order + "II", block, 8)
            if secrets_type == _SECRETS_TLS_KEYLOG and secrets_len <= len(block) - 20:
                self.secrets.append(bytes(block[16 : 16 + secrets_len]))
        return None


def read_packets(path: str | os.PathLike[str]) -> Iterator[tuple[float, bytes]]:
    """(timestamp, innermost IP packet) for each frame of the capture at ``path``.

    Raises ``NotACaptureError`` on the first ``next()`` if the file is not a capture, and
    ``CorruptCaptureError`` after the last readable packet if it is damaged.
    """
    with CaptureReader(path) as reader:
        yield from reader.ip_packets()

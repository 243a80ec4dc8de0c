"""Group IP packets into TCP connections (reassembled per direction) and UDP flows.

Feed ``(timestamp, ip_packet)`` pairs to a :class:`StreamCollector` in capture order, then call
``finish()`` for the :class:`TcpConnection` and :class:`UdpFlow` lists, in order of first
appearance.

TCP rules (all documented choices):

* **Client** = the sender of the first SYN (without ACK). Failing that, the receiver of a
  SYN-ACK. Failing that (the capture began mid-connection), the endpoint that sends to the
  lower port (servers usually listen on the well-known, lower port); with equal ports, the
  sender of the first packet seen. ``TcpConnection.client_by`` says which rule decided.
* The client's **SYN** is kept as the IP header + TCP header bytes of the *first* SYN seen
  (retransmitted SYNs are ignored), ready for :func:`mirror.wire.tcp.parse_syn`.
* **Reassembly** places each segment's payload by sequence number (32-bit wraparound
  handled with modular arithmetic), so out-of-order segments land where they belong.
  Overlaps and retransmissions are resolved **first-wins**: a byte already received is never
  overwritten by a later copy (what most stacks deliver, and what keeps a later,
  conflicting retransmission from rewriting a hello that was already seen). The stream
  starts at ISN + 1 when the SYN (or SYN-ACK for the server side) was captured, otherwise at
  the lowest sequence number seen. ``client_data`` / ``server_data`` are the bytes from the
  start up to the first hole; ``client_gap`` says bytes exist beyond a hole.
* **Memory** is bounded per direction: only the first ``client_cap`` (default 1 MiB) /
  ``server_cap`` (default 64 KiB) bytes of each direction are kept, which is far more than
  any fingerprint needs; ``client_truncated`` says data beyond the cap was dropped. Without a
  SYN, segments further than the cap before or after the first one seen are dropped too.
* A new SYN on a 4-tuple whose connection has a different initial sequence number, or has
  been closed (FIN / RST), starts a new connection (port reuse).

UDP: a flow is keyed by its two endpoints; the sender of the first datagram is the client.
The first ``max_datagrams`` datagrams (default 64) of each direction, up to ``udp_cap`` bytes,
are kept with their timestamps -- enough for QUIC Initial packets.
"""

from __future__ import annotations

import bisect
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from mirror.pcapfile.decap import ip_upper_layer

__all__ = [
    "DEFAULT_CLIENT_CAP",
    "DEFAULT_SERVER_CAP",
    "Datagram",
    "Endpoint",
    "StreamBuffer",
    "StreamCollector",
    "Streams",
    "TcpConnection",
    "UdpFlow",
    "collect_streams",
]

DEFAULT_CLIENT_CAP = 1024 * 1024
DEFAULT_SERVER_CAP = 64 * 1024
DEFAULT_UDP_CAP = 1024 * 1024
DEFAULT_MAX_DATAGRAMS = 64

_FIN = 0x01
_SYN = 0x02
_RST = 0x04
_ACK = 0x10

_PROTO_TCP = 6
_PROTO_UDP = 17
_MOD = 1 << 32
_HALF = 1 << 31


def _signed_diff(a: int, b: int) -> int:
    """a - b in 32-bit sequence space, as a signed number in [-2**31, 2**31)."""
    return ((a - b + _HALF) % _MOD) - _HALF


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One side of a connection."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class StreamBuffer:
    """The bytes of one direction of a connection, placed by relative offset.

    ``add(offset, data)`` stores only the bytes not already present (first copy wins), and
    only those within ``[low, high)``. Pieces are kept sorted and non-overlapping; adjacent
    pieces are merged, so an in-order stream is a single growing ``bytearray``.
    """

    __slots__ = ("_pieces", "_starts", "dropped", "high", "low")

    def __init__(self, low: int, high: int) -> None:
        self._starts: list[int] = []
        self._pieces: list[bytearray] = []
        self.low = low
        self.high = high
        self.dropped = False  # bytes outside [low, high) were refused

    def set_window(self, low: int, high: int) -> None:
        """Narrow the accepted window (when the stream start becomes known) and trim."""
        self.low, self.high = low, high
        starts, pieces = [], []
        for start, piece in zip(self._starts, self._pieces, strict=True):
            end = start + len(piece)
            s, e = max(start, low), min(end, high)
            if s < e:
                starts.append(s)
                pieces.append(piece[s - start : e - start])
            if start < low or end > high:
                self.dropped = True
        self._starts, self._pieces = starts, pieces

    def add(self, offset: int, data: bytes) -> None:
        if not data:
            return
        start, end = offset, offset + len(data)
        if start < self.low or end > self.high:
            self.dropped = True
            clipped_start, clipped_end = max(start, self.low), min(end, self.high)
            if clipped_start >= clipped_end:
                return
            data = data[clipped_start - start : clipped_end - start]
            start, end = clipped_start, clipped_end
        starts, pieces = self._starts, self._pieces
        # Fast path: appending right after (or beyond) the last piece.
        if not starts or start >= starts[-1] + len(pieces[-1]):
            if starts and start == starts[-1] + len(pieces[-1]):
                pieces[-1] += data
            else:
                starts.append(start)
                pieces.append(bytearray(data))
            return
        # General case: fill only the holes between existing pieces, first copy wins.
        i = bisect.bisect_right(starts, start) - 1
        i = max(i, 0)
        cursor = start
        new: list[tuple[int, bytes]] = []
        j = i
        while cursor < end:
            if j < len(starts) and starts[j] + len(pieces[j]) <= cursor:
                j += 1
                continue
            if j < len(starts) and starts[j] <= cursor:
                cursor = starts[j] + len(pieces[j])
                j += 1
                continue
            hole_end = min(end, starts[j]) if j < len(starts) else end
            new.append((cursor, data[cursor - start : hole_end - start]))
            cursor = hole_end
        for piece_start, piece in new:
            self._insert(piece_start, piece)

    def _insert(self, start: int, data: bytes) -> None:
        starts, pieces = self._starts, self._pieces
        i = bisect.bisect_left(starts, start)
        merged_left = i > 0 and starts[i - 1] + len(pieces[i - 1]) == start
        if merged_left:
            i -= 1
            pieces[i] += data
        else:
            starts.insert(i, start)
            pieces.insert(i, bytearray(data))
        if i + 1 < len(starts) and starts[i] + len(pieces[i]) == starts[i + 1]:
            pieces[i] += pieces[i + 1]
            del starts[i + 1], pieces[i + 1]

    @property
    def first_offset(self) -> int | None:
        return self._starts[0] if self._starts else None

    def contiguous_from(self, offset: int) -> tuple[bytes, bool]:
        """(bytes from ``offset`` up to the first hole, whether more bytes follow a hole)."""
        starts, pieces = self._starts, self._pieces
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0 or starts[i] + len(pieces[i]) <= offset:
            # offset falls in a hole (or before everything)
            nxt = bisect.bisect_right(starts, offset)
            return b"", nxt < len(starts)
        data = bytes(pieces[i][offset - starts[i] :])
        return data, i + 1 < len(starts)

    @property
    def stored(self) -> int:
        return sum(len(p) for p in self._pieces)


class _Direction:
    """Reassembly state for the bytes one endpoint sends."""

    __slots__ = ("base", "buffer", "cap", "fin", "packets", "ref", "rst")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.ref: int | None = None  # sequence number that maps to relative offset 0
        self.base: int | None = None  # relative offset where the stream starts (ISN + 1), if known
        self.buffer: StreamBuffer | None = None
        self.packets = 0
        self.fin = False
        self.rst = False

    def set_cap(self, cap: int) -> None:
        self.cap = cap
        if self.buffer is not None:
            if self.base is not None:
                self.buffer.set_window(self.base, self.base + cap)
            else:
                self.buffer.set_window(-cap, cap)

    def set_isn(self, isn: int) -> None:
        if self.base is not None:
            return
        if self.ref is None:
            self.ref = (isn + 1) % _MOD
        self.base = _signed_diff((isn + 1) % _MOD, self.ref)
        if self.buffer is not None:
            self.buffer.set_window(self.base, self.base + self.cap)

    def add(self, seq: int, payload: bytes) -> None:
        if not payload:
            return
        if self.ref is None:
            self.ref = seq
        if self.buffer is None:
            if self.base is not None:
                self.buffer = StreamBuffer(self.base, self.base + self.cap)
            else:
                self.buffer = StreamBuffer(-self.cap, self.cap)
        self.buffer.add(_signed_diff(seq, self.ref), payload)

    def assembled(self) -> tuple[bytes, bool, bool]:
        """(contiguous bytes from the start, a hole follows, data was dropped by the cap)."""
        if self.buffer is None:
            return b"", False, False
        start = self.base if self.base is not None else self.buffer.first_offset
        if start is None:
            return b"", False, self.buffer.dropped
        data, gap = self.buffer.contiguous_from(start)
        dropped = self.buffer.dropped
        if len(data) > self.cap:  # no SYN: the window was [-cap, cap), keep the first cap bytes
            data, dropped = data[: self.cap], True
        return data, gap, dropped


@dataclass(slots=True)
class TcpConnection:
    """One TCP connection, reassembled. ``client_by``: "syn", "syn-ack", "port" or "first-packet"."""

    index: int
    client: Endpoint
    server: Endpoint
    ip_version: int
    first_seen: float
    last_seen: float
    client_by: str
    syn: bytes | None  # the client's first SYN: IP header + TCP header
    syn_ack: bytes | None  # the server's first SYN-ACK: IP header + TCP header
    client_data: bytes
    server_data: bytes
    client_gap: bool
    server_gap: bool
    client_truncated: bool
    server_truncated: bool
    packets: int

    @property
    def transport(self) -> str:
        return "tcp"


@dataclass(frozen=True, slots=True)
class Datagram:
    timestamp: float
    from_client: bool
    payload: bytes


@dataclass(slots=True)
class UdpFlow:
    """The datagrams of one UDP flow (both directions, capture order)."""

    index: int
    client: Endpoint
    server: Endpoint
    ip_version: int
    first_seen: float
    last_seen: float
    datagrams: list[Datagram] = field(default_factory=list)
    truncated: bool = False  # datagrams beyond the per-direction limits were not kept

    @property
    def transport(self) -> str:
        return "udp"

    def payloads(self, *, from_client: bool) -> list[bytes]:
        return [d.payload for d in self.datagrams if d.from_client == from_client]


@dataclass(slots=True)
class Streams:
    tcp: list[TcpConnection]
    udp: list[UdpFlow]


class _TcpState:
    __slots__ = (
        "a",
        "b",
        "dirs",
        "first_seen",
        "index",
        "ip_version",
        "last_seen",
        "packets",
        "syn",
        "syn_ack",
        "syn_from",
        "syn_seq",
        "synack_from",
    )  # fmt: skip

    def __init__(self, index: int, a: Endpoint, b: Endpoint, ip_version: int, ts: float, caps: tuple[int, int]):
        self.index = index
        self.a, self.b = a, b  # a = sender of the first packet seen
        self.ip_version = ip_version
        self.first_seen = self.last_seen = ts
        # Caps are chosen once roles are known; until then both sides may be the client.
        self.dirs = {a: _Direction(max(caps)), b: _Direction(max(caps))}
        self.syn_from: Endpoint | None = None
        self.syn: bytes | None = None
        self.syn_seq: int | None = None
        self.synack_from: Endpoint | None = None
        self.syn_ack: bytes | None = None
        self.packets = 0

    @property
    def closed(self) -> bool:
        return any(d.fin or d.rst for d in self.dirs.values())

    def roles(self) -> tuple[Endpoint, Endpoint, str]:
        if self.syn_from is not None:
            client = self.syn_from
            by = "syn"
        elif self.synack_from is not None:
            client = self.b if self.synack_from == self.a else self.a
            by = "syn-ack"
        elif self.a.port != self.b.port:
            client = self.a if self.a.port > self.b.port else self.b
            by = "port"
        else:
            client = self.a
            by = "first-packet"
        server = self.b if client == self.a else self.a
        return client, server, by

    def finish(self, caps: tuple[int, int]) -> TcpConnection:
        client, server, by = self.roles()
        c, s = self.dirs[client], self.dirs[server]
        c.cap, s.cap = caps
        client_data, client_gap, client_dropped = c.assembled()
        server_data, server_gap, server_dropped = s.assembled()
        if len(server_data) > caps[1]:
            server_data, server_dropped = server_data[: caps[1]], True
        if len(client_data) > caps[0]:
            client_data, client_dropped = client_data[: caps[0]], True
        return TcpConnection(
            index=self.index,
            client=client,
            server=server,
            ip_version=self.ip_version,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            client_by=by,
            syn=self.syn if self.syn_from == client else None,
            syn_ack=self.syn_ack if self.synack_from == server else None,
            client_data=client_data,
            server_data=server_data,
            client_gap=client_gap,
            server_gap=server_gap,
            client_truncated=client_dropped,
            server_truncated=server_dropped,
            packets=self.packets,
        )


class _UdpState:
    __slots__ = ("counts", "flow", "sizes")

    def __init__(self, flow: UdpFlow) -> None:
        self.flow = flow
        self.counts = [0, 0]
        self.sizes = [0, 0]


_ADDRESS_CACHE: dict[bytes, str] = {}


def _address(raw: bytes) -> str:
    text = _ADDRESS_CACHE.get(raw)
    if text is None:
        text = str(ipaddress.ip_address(raw))
        if len(_ADDRESS_CACHE) < 65536:
            _ADDRESS_CACHE[raw] = text
    return text


class StreamCollector:
    """Incremental grouping of IP packets into connections and flows; see the module doc."""

    def __init__(
        self,
        *,
        client_cap: int = DEFAULT_CLIENT_CAP,
        server_cap: int = DEFAULT_SERVER_CAP,
        udp_cap: int = DEFAULT_UDP_CAP,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
    ) -> None:
        self._caps = (client_cap, server_cap)
        self._udp_cap = udp_cap
        self._max_datagrams = max_datagrams
        self._tcp_live: dict[tuple[Endpoint, Endpoint], _TcpState] = {}
        self._tcp_all: list[_TcpState] = []
        self._udp: dict[tuple[Endpoint, Endpoint], _UdpState] = {}
        self._next_index = 0
        self.ignored = 0  # packets that were neither TCP nor UDP, or were cut short

    def feed(self, timestamp: float, packet: bytes) -> None:
        """Account one IP packet (bytes starting at the IP header)."""
        upper = ip_upper_layer(packet)
        if upper is None:
            self.ignored += 1
            return
        protocol, offset = upper
        version = packet[0] >> 4
        if version == 4:
            src_raw, dst_raw = packet[12:16], packet[16:20]
        else:
            src_raw, dst_raw = packet[8:24], packet[24:40]
        if protocol == _PROTO_TCP:
            self._feed_tcp(timestamp, packet, offset, version, src_raw, dst_raw)
        elif protocol == _PROTO_UDP:
            self._feed_udp(timestamp, packet, offset, version, src_raw, dst_raw)
        else:
            self.ignored += 1

    def _key(self, src: Endpoint, dst: Endpoint) -> tuple[Endpoint, Endpoint]:
        return (src, dst) if src <= dst else (dst, src)

    def _feed_tcp(self, ts: float, packet: bytes, offset: int, version: int, src_raw: bytes, dst_raw: bytes) -> None:
        if len(packet) < offset + 20:
            self.ignored += 1
            return
        sport, dport, seq, _ack, doff_byte, flags = struct.unpack_from("!HHIIBB", packet, offset)
        header_len = (doff_byte >> 4) * 4
        if header_len < 20 or len(packet) < offset + header_len:
            self.ignored += 1
            return
        src = Endpoint(_address(src_raw), sport)
        dst = Endpoint(_address(dst_raw), dport)
        key = self._key(src, dst)
        state = self._tcp_live.get(key)
        is_syn = bool(flags & _SYN) and not flags & _ACK
        if state is not None and is_syn:
            if state.syn_from is None:
                reused = state.closed  # capture began mid-connection, which has ended since
            elif state.syn_from == src:
                reused = state.syn_seq != seq  # same client, new ISN: port reuse
            else:
                reused = state.closed  # roles swapped after a close (else: simultaneous open)
            if reused:
                state = None
        if state is None:
            state = _TcpState(self._next_index, src, dst, version, ts, self._caps)
            self._next_index += 1
            self._tcp_live[key] = state
            self._tcp_all.append(state)
        state.last_seen = ts
        state.packets += 1
        direction = state.dirs[src]
        direction.packets += 1
        header = packet[: offset + header_len]
        if flags & _SYN:
            if not flags & _ACK:
                if state.syn_from is None:
                    state.syn_from, state.syn, state.syn_seq = src, bytes(header), seq
                    state.dirs[src].set_cap(self._caps[0])
                    state.dirs[dst].set_cap(self._caps[1])
                if state.syn_from == src:
                    direction.set_isn(seq)
            else:
                if state.synack_from is None:
                    state.synack_from, state.syn_ack = src, bytes(header)
                    if state.syn_from is None:
                        state.dirs[dst].set_cap(self._caps[0])
                        state.dirs[src].set_cap(self._caps[1])
                if state.synack_from == src:
                    direction.set_isn(seq)
            data_seq = (seq + 1) % _MOD  # a SYN consumes one sequence number
        else:
            data_seq = seq
        if flags & _FIN:
            direction.fin = True
        if flags & _RST:
            direction.rst = True
        payload = packet[offset + header_len :]
        if payload and not flags & _RST:
            direction.add(data_seq, payload)

    def _feed_udp(self, ts: float, packet: bytes, offset: int, version: int, src_raw: bytes, dst_raw: bytes) -> None:
        if len(packet) < offset + 8:
            self.ignored += 1
            return
        sport, dport, length = struct.unpack_from("!HHH", packet, offset)
        src = Endpoint(_address(src_raw), sport)
        dst = Endpoint(_address(dst_raw), dport)
        key = self._key(src, dst)
        state = self._udp.get(key)
        if state is None:
            flow = UdpFlow(self._next_index, src, dst, version, ts, ts)
            self._next_index += 1
            state = self._udp[key] = _UdpState(flow)
        flow = state.flow
        flow.last_seen = ts
        end = offset + length if length >= 8 else len(packet)
        payload = packet[offset + 8 : end]
        side = 0 if src == flow.client else 1
        if state.counts[side] >= self._max_datagrams or state.sizes[side] + len(payload) > self._udp_cap:
            flow.truncated = True
            return
        state.counts[side] += 1
        state.sizes[side] += len(payload)
        flow.datagrams.append(Datagram(ts, side == 0, bytes(payload)))

    def finish(self) -> Streams:
        """The connections and flows seen so far, ordered by first appearance."""
        tcp = [state.finish(self._caps) for state in self._tcp_all]
        udp = [state.flow for state in self._udp.values()]
        tcp.sort(key=lambda c: c.index)
        udp.sort(key=lambda f: f.index)
        return Streams(tcp=tcp, udp=udp)


def collect_streams(packets: Iterable[tuple[float, bytes]], **caps: int) -> Streams:
    """Group all ``(timestamp, ip_packet)`` pairs; see :class:`StreamCollector` for ``caps``."""
    collector = StreamCollector(**caps)
    for timestamp, packet in packets:
        collector.feed(timestamp, packet)
    return collector.finish()

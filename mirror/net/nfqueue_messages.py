"""The nfnetlink_queue messages mirror exchanges with the kernel, as bytes (struct packing only).

Linux hands a queued packet (an iptables ``-j NFQUEUE`` rule) to the process bound to that
queue as a netlink message on a ``NETLINK_NETFILTER`` socket, and takes it back with a verdict
message, which may carry a replacement packet. This module builds the three kinds of request
(config: bind / unbind / copy mode / queue length / flags; verdict) and parses what the kernel
sends (queued packets, acknowledgements and errors). It does no I/O; ``mirror.net.nfqueue``
owns the socket.

Layout (linux/netlink.h, linux/netfilter/nfnetlink.h, nfnetlink_queue.h): every message is a
``nlmsghdr`` (length, type, flags, sequence, port id; host byte order), then for nfnetlink a
``nfgenmsg`` (family, version, queue number in network order), then attributes (``nlattr``:
length and type in host order, the value, padding to 4 bytes). Values inside nfqueue's
attributes are in network order.

Bad input — a length that lies, a truncated header, an attribute overrunning its message, a
packet message without its packet header — raises :class:`NetlinkError` (a
:class:`mirror.wire.WireError` of layer ``"netlink"``) and nothing else.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from mirror.wire.errors import WireError

__all__ = [
    "NFQA_CFG_F_FAIL_OPEN",
    "NF_ACCEPT",
    "NF_DROP",
    "KernelReply",
    "NetlinkError",
    "QueuedPacket",
    "config_bind",
    "config_flags",
    "config_params",
    "config_queue_maxlen",
    "config_unbind",
    "parse_messages",
    "verdict",
]

# linux/netlink.h
NLMSG_HDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
NLA_HDR = struct.Struct("=HH")            # len, type
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF                    # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

# linux/netfilter/nfnetlink.h
NFGENMSG = struct.Struct("!BBH")          # family, version, res_id (the queue number)
NFNETLINK_V0 = 0
NFNL_SUBSYS_QUEUE = 3

# linux/netfilter/nfnetlink_queue.h
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_MARK, NFQA_PAYLOAD = 1, 2, 3, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 0x1                # a full queue lets packets pass instead of dropping them
NF_DROP, NF_ACCEPT = 0, 1

PACKET_HDR = struct.Struct("!IHB")        # packet_id, hw_protocol, hook (packed: 7 bytes)
VERDICT_HDR = struct.Struct("!II")        # verdict, packet_id
CONFIG_CMD = struct.Struct("!BxH")        # command, pad, pf
CONFIG_PARAMS = struct.Struct("!IB")      # copy_range, copy_mode (packed: 5 bytes)
BE32 = struct.Struct("!I")
ERRNO = struct.Struct("=i")


class NetlinkError(WireError):
    """Bytes from the netlink socket that are not well-formed nfnetlink_queue messages."""

    def __init__(self, message: str) -> None:
        super().__init__(message, layer="netlink")


class QueuedPacket(NamedTuple):
    """One packet the kernel queued to us: its id (for the verdict), mark and IP packet."""

    queue: int
    packet_id: int
    hw_protocol: int
    hook: int
    mark: int
    payload: bytes


class KernelReply(NamedTuple):
    """An acknowledgement (``errno`` 0) or an error for the request with sequence ``seq``."""

    seq: int
    errno: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, value: bytes) -> bytes:
    length = NLA_HDR.size + len(value)
    return NLA_HDR.pack(length, kind) + value + b"\0" * (_align(length) - length)


def _message(kind: int, queue: int, attrs: bytes, seq: int, *, ack: bool) -> bytes:
    body = NFGENMSG.pack(0, NFNETLINK_V0, queue) + attrs     # family AF_UNSPEC
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), NFNL_SUBSYS_QUEUE << 8 | kind, flags,
                          seq, 0) + body


def config_bind(queue: int, seq: int) -> bytes:
    """Bind this socket to queue ``queue`` (the kernel answers EPERM if another holds it)."""
    return _message(NFQNL_MSG_CONFIG, queue,
                    _attr(NFQA_CFG_CMD, CONFIG_CMD.pack(NFQNL_CFG_CMD_BIND, 0)), seq, ack=True)


def config_unbind(queue: int, seq: int) -> bytes:
    return _message(NFQNL_MSG_CONFIG, queue,
                    _attr(NFQA_CFG_CMD, CONFIG_CMD.pack(NFQNL_CFG_CMD_UNBIND, 0)), seq, ack=True)


def config_params(queue: int, seq: int, copy_range: int = 0xFFFF) -> bytes:
    """Copy whole packets (up to ``copy_range`` bytes) into the messages."""
    return _message(NFQNL_MSG_CONFIG, queue,
                    _attr(NFQA_CFG_PARAMS, CONFIG_PARAMS.pack(copy_range, NFQNL_COPY_PACKET)),
                    seq, ack=True)


def config_queue_maxlen(queue: int, seq: int, maxlen: int) -> bytes:
    return _message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_QUEUE_MAXLEN, BE32.pack(maxlen)),
                    seq, ack=True)


def config_flags(queue: int, seq: int, flags: int, mask: int) -> bytes:
    return _message(NFQNL_MSG_CONFIG, queue,
                    _attr(NFQA_CFG_FLAGS, BE32.pack(flags)) + _attr(NFQA_CFG_MASK, BE32.pack(mask)),
                    seq, ack=True)


def verdict(queue: int, packet_id: int, decision: int = NF_ACCEPT,
            payload: bytes | None = None, seq: int = 0) -> bytes:
    """The verdict on one packet; with ``payload``, the packet leaves as those bytes."""
    attrs = _attr(NFQA_VERDICT_HDR, VERDICT_HDR.pack(decision, packet_id))
    if payload is not None:
        attrs += _attr(NFQA_PAYLOAD, payload)
    return _message(NFQNL_MSG_VERDICT, queue, attrs, seq, ack=False)


def _attributes(data: memoryview, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Each attribute's type -> (offset of its value, length of its value)."""
    found: dict[int, tuple[int, int]] = {}
    pos = start
    unpack = NLA_HDR.unpack_from
    while pos + 4 <= end:
        length, kind = unpack(data, pos)
        if length < 4 or pos + length > end:
            raise NetlinkError(f"attribute {kind & NLA_TYPE_MASK} of length {length} overruns "
                               f"its message ({end - pos} bytes left)")
        found[kind & NLA_TYPE_MASK] = (pos + 4, length - 4)
        pos += (length + 3) & ~3
    if pos < end and end - pos < 4 and any(data[pos:end].tobytes()):
        raise NetlinkError(f"{end - pos} stray bytes after the last attribute")
    return found


def _packet(data: memoryview, start: int, end: int) -> QueuedPacket:
    if end - start < NFGENMSG.size:
        raise NetlinkError("packet message shorter than its nfgenmsg header")
    _family, _version, queue = NFGENMSG.unpack_from(data, start)
    attrs = _attributes(data, start + NFGENMSG.size, end)
    header = attrs.get(NFQA_PACKET_HDR)
    if header is None or header[1] < PACKET_HDR.size:
        raise NetlinkError("packet message without a packet header")
    packet_id, hw_protocol, hook = PACKET_HDR.unpack_from(data, header[0])
    mark = 0
    if (where := attrs.get(NFQA_MARK)) is not None:
        if where[1] != BE32.size:
            raise NetlinkError(f"mark attribute of {where[1]} bytes, not 4")
        mark = BE32.unpack_from(data, where[0])[0]
    payload = b""
    if (where := attrs.get(NFQA_PAYLOAD)) is not None:
        payload = data[where[0]:where[0] + where[1]].tobytes()
    return QueuedPacket(queue, packet_id, hw_protocol, hook, mark, payload)


def parse_messages(data: bytes | bytearray | memoryview) -> list[QueuedPacket | KernelReply]:
    """Every message of one datagram from the socket, in order (no-ops and other kinds of
    nfnetlink message are skipped). Raises :class:`NetlinkError` on malformed bytes."""
    data = memoryview(data).cast("B")
    out: list[QueuedPacket | KernelReply] = []
    pos, total = 0, len(data)
    while pos < total:
        if total - pos < NLMSG_HDR.size:
            raise NetlinkError(f"{total - pos} bytes left, less than a message header")
        length, kind, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > total:
            raise NetlinkError(f"message length {length} does not fit the {total - pos} "
                               f"bytes left")
        body, end = pos + NLMSG_HDR.size, pos + length
        if kind == NLMSG_ERROR:
            if end - body < ERRNO.size:
                raise NetlinkError("error message without its error code")
            out.append(KernelReply(seq, -ERRNO.unpack_from(data, body)[0]))
        elif kind == NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET:
            out.append(_packet(data, body, end))
        elif kind == NLMSG_DONE:
            break
        pos += _align(length)
    return out

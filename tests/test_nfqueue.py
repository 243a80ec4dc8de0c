"""mirror's own nfnetlink_queue client: the message parser on good and bad bytes, and the real
kernel in a network namespace of the test's own (bind, a queued SYN, a verdict that rewrites
it, a queue another socket holds)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import pytest
from fuzzing import FUZZ_SETTINGS, edits, mutate
from hypothesis import given
from hypothesis import strategies as st

from mirror.net.nfqueue_messages import (
    KernelReply,
    NetlinkError,
    QueuedPacket,
    config_bind,
    parse_messages,
    verdict,
)
from mirror.wire.errors import WireError


def attr(kind: int, value: bytes) -> bytes:
    """An nlattr written out by hand (host-order length and type, padded to 4)."""
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def packet_message(packet_id: int, mark: int, payload: bytes, queue: int = 7) -> bytes:
    body = struct.pack("!BBH", 2, 0, queue)
    body += attr(1, struct.pack("!IHB", packet_id, 0x0800, 3))         # NFQA_PACKET_HDR
    body += attr(3, struct.pack("!I", mark))                           # NFQA_MARK
    body += attr(5, struct.pack("!I", 1))                              # NFQA_IFINDEX_INDEV
    body += attr(10, payload)                                          # NFQA_PAYLOAD
    return struct.pack("=IHHII", 16 + len(body), 3 << 8 | 0, 0, 0, 0) + body


def error_message(seq: int, errno: int) -> bytes:
    body = struct.pack("=i", -errno) + struct.pack("=IHHII", 20, 0x302, 5, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 0) + body


SYN = bytes(range(60))


def test_a_queued_packet_and_an_error_in_one_datagram():
    data = packet_message(41, 0x6D012003, SYN, queue=0x7123) + error_message(9, 16)
    assert parse_messages(data) == [QueuedPacket(0x7123, 41, 0x0800, 3, 0x6D012003, SYN),
                                    KernelReply(9, 16)]
    assert parse_messages(error_message(4, 0)) == [KernelReply(4, 0)]   # an acknowledgement


def test_requests_are_laid_out_as_the_kernel_reads_them():
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", config_bind(0x7001, 5))
    assert (length, kind, flags, seq, pid) == (len(config_bind(0x7001, 5)), 0x302, 0x5, 5, 0)
    message = verdict(0x7001, 41, payload=b"\x45" + b"\0" * 38)          # 39 bytes: padded
    assert struct.unpack_from("!BBH", message, 16) == (0, 0, 0x7001)
    assert struct.unpack_from("=HH", message, 20) == (12, 2)              # NFQA_VERDICT_HDR
    assert struct.unpack_from("!II", message, 24) == (1, 41)              # NF_ACCEPT, id
    assert struct.unpack_from("=HH", message, 32) == (43, 10)             # NFQA_PAYLOAD
    assert len(message) == 32 + 44 and struct.unpack_from("=I", message)[0] == len(message)


@pytest.mark.parametrize(("data", "words"), [
    (b"\x10\0\0", "less than a message header"),
    (struct.pack("=IHHII", 400, 0x300, 0, 0, 0), "does not fit"),
    (struct.pack("=IHHII", 8, 0x300, 0, 0, 0), "does not fit"),
    (struct.pack("=IHHII", 18, 0x300, 0, 0, 0) + b"\0\0", "shorter than its nfgenmsg"),
    (struct.pack("=IHHII", 20, 0x300, 0, 0, 0) + b"\2\0\0\7", "without a packet header"),
    (packet_message(1, 0, SYN)[:-4], "does not fit"),
    (struct.pack("=IHHII", 28, 0x300, 0, 0, 0) + b"\2\0\0\7" + struct.pack("=HH", 90, 1) + b"\0" * 4,
     "overruns"),
    (struct.pack("=IHHII", 18, 2, 0, 0, 0) + b"\0\0", "without its error code"),
])
def test_bad_bytes_raise_the_one_documented_error(data, words):
    with pytest.raises(NetlinkError, match=words) as caught:
        parse_messages(data)
    assert isinstance(caught.value, WireError) and caught.value.layer == "netlink"


@FUZZ_SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_parse_or_raise_netlink_error(data):
    try:
        parse_messages(data)
    except NetlinkError:
        pass


@FUZZ_SETTINGS
@given(edits(200))
def test_mutated_messages_parse_or_raise_netlink_error(changes):
    try:
        result = parse_messages(mutate(packet_message(3, 5, SYN) + error_message(1, 0), changes))
    except NetlinkError:
        return
    assert all(isinstance(item, (QueuedPacket, KernelReply)) for item in result)


# In a network namespace of its own: a SYN to a loopback listener is queued, rewritten to TTL 99
# by the verdict, and the listener's saved SYN shows TTL 99; a second bind of the queue is refused
# (EPERM: the queue belongs to another socket).
IN_NAMESPACE = textwrap.dedent("""
    import errno, select, socket, struct, subprocess, sys
    from mirror.net.nfqueue import NfQueue
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    queue = NfQueue(7901)
    try:
        NfQueue(7901)
    except OSError as error:
        print("second bind:", errno.errorcode[error.errno])
    rule = ["OUTPUT", "-p", "tcp", "--syn", "--dport", "9", "-j", "NFQUEUE", "--queue-num", "7901"]
    subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-A", *rule], check=True)
    server = socket.socket()
    server.setsockopt(socket.IPPROTO_TCP, 27, 1)                 # TCP_SAVE_SYN
    server.bind(("127.0.0.1", 9))
    server.listen()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, 36, 0x6D000123)         # SO_MARK
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", 9))
    for _ in range(50):
        if select.select([queue], [], [], 0.1)[0]:
            break
    (packet,) = queue.read()
    print("queued:", hex(packet.mark), packet.payload[9], len(packet.payload) >= 40)
    ip = bytearray(packet.payload)
    ip[8], ip[10:12] = 99, b"\\0\\0"
    total = sum(struct.unpack("!10H", bytes(ip[:20])))
    total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack("!H", ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF)
    queue.accept(packet, bytes(ip))
    server.settimeout(5)
    accepted, _ = server.accept()
    print("server saw TTL", accepted.getsockopt(socket.IPPROTO_TCP, 28, 512)[8])
    queue.close()
    print("bound after close:", open("/proc/net/netfilter/nfnetlink_queue").read().split())
""")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="binding an NFQUEUE needs root")
def test_the_kernel_queues_a_syn_and_takes_the_rewritten_one():
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", IN_NAMESPACE],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["second bind: EPERM", "queued: 0x6d000123 6 True",
                                       "server saw TTL 99", "bound after close: []"]

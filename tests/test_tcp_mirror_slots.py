"""TcpMirror's SYN plans are keyed by a per-connection socket mark, never by a source port
bound before connecting (that would take ports out of the kernel's 4-tuple reuse and run
out of them under TIME_WAIT at a few hundred connections a second)."""

from __future__ import annotations

import contextlib
import socket

import pytest
from scapy.all import IP, TCP

from mirror.net.tcp_mirror import MARK_PROCESS_MASK, MAX_SLOT, SO_MARK, TcpMirror
from mirror.wire.tcp import parse_syn

pytestmark = pytest.mark.root

SYN = parse_syn(bytes(IP(src="198.18.0.1", dst="198.18.0.2", ttl=64, flags="DF")
                      / TCP(flags="S", window=64240, options=[("MSS", 1460), ("SAckOK", b""),
                                                              ("Timestamp", (1, 0)),
                                                              ("NOP", None), ("WScale", 7)])))


def test_prepared_sockets_are_marked_per_connection_and_left_unbound():
    tcp = TcpMirror()
    tcp.start()
    sockets = []
    try:
        assert tcp.rewriting, tcp.reason
        keys = []
        for _ in range(MAX_SLOT):
            sock = socket.socket()
            sockets.append(sock)
            keys.append(tcp.prepare(sock.fileno(), SYN))
            assert sock.getsockname()[1] == 0                    # the port is connect()'s
            mark = sock.getsockopt(socket.SOL_SOCKET, SO_MARK)
            assert mark & MARK_PROCESS_MASK == tcp.mark and mark & ~MARK_PROCESS_MASK == keys[-1]
        assert sorted(keys) == list(range(1, MAX_SLOT + 1))
        # every slot taken: the next socket goes unmarked (the kernel's own SYN), not wrong
        extra = socket.socket()
        sockets.append(extra)
        spare = tcp.prepare(extra.fileno(), SYN)
        assert spare < 0 and extra.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0
        assert tcp.finish(spare, SYN).fidelity["window"].status == "approximated"
        # a slot given back is used again
        tcp.forget(keys[10])
        again = socket.socket()
        sockets.append(again)
        assert tcp.prepare(again.fileno(), SYN) == keys[10]
    finally:
        tcp.stop()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

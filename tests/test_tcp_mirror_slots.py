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


def mangle_rules() -> str:
    import subprocess

    return subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-S"], capture_output=True,
                          text=True, check=True).stdout


def test_chains_left_by_dead_processes_are_removed_and_live_ones_kept():
    import subprocess

    from mirror.net.nfqueue import NfQueue
    from mirror.net.tcp_mirror import CHAIN_PREFIX, QUEUE_BASE, QUEUE_SPAN

    run = ["iptables", "-w", "5", "-t", "mangle"]
    dead, live = QUEUE_BASE + QUEUE_SPAN - 7, QUEUE_BASE + QUEUE_SPAN - 8
    holder = NfQueue(live)                                       # a live process's queue
    made = []
    try:
        for number, jump in ((dead, ["-j"]), (live, ["-p", "tcp", "--syn", "-j"])):
            chain = f"{CHAIN_PREFIX}{number}"
            subprocess.run([*run, "-N", chain], capture_output=True, check=True)
            subprocess.run([*run, "-A", "OUTPUT", *jump, chain], capture_output=True, check=True)
            made.append((chain, jump))
        tcp = TcpMirror()
        tcp.start()
        try:
            assert tcp.rewriting, tcp.reason
            rules = mangle_rules()
            assert f"-N {CHAIN_PREFIX}{dead}\n" not in rules
            assert f"-j {CHAIN_PREFIX}{dead}" not in rules              # its jump too
            assert f"-N {CHAIN_PREFIX}{live}\n" in rules                # kept
            assert f"-N {tcp.chain}\n" in rules
        finally:
            tcp.stop()
        assert f"-N {tcp.chain}\n" not in mangle_rules()
    finally:
        for chain, jump in made:
            subprocess.run([*run, "-D", "OUTPUT", *jump, chain], capture_output=True, check=False)
            subprocess.run([*run, "-X", chain], capture_output=True, check=False)
        holder.close()

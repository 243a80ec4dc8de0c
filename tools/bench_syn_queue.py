"""SYN rewrites per second and CPU per SYN of the SYN rewriter's queue client: mirror's own
netlink client (mirror.net.nfqueue) and, when it is installed, the netfilterqueue package.

    sudo python tools/bench_syn_queue.py [--syns 10000] [--runs 3] [--in-flight 64] [--accept-only]

Runs in a network namespace of its own (it re-runs itself under ``unshare --net``): loopback
only. A client process keeps ``--in-flight`` connections to 127.0.0.1:9 opening (marked
sockets, accepted and closed as they complete); an NFQUEUE rule queues their SYNs to a thread
of this process, which rewrites each to a Windows-like SYN with ``mirror.emit.syn_rewrite``
(as ``mirror run`` does) and sends the verdict with the new packet. Per run it prints the SYNs
rewritten per second of wall time and the queue thread's CPU time per SYN; the runs of the two
clients are interleaved. ``--accept-only`` skips the rewrite (verdict: accept as is), which
leaves the cost of the queue client alone.
"""

from __future__ import annotations

import argparse
import os
import select
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirror.emit.syn_rewrite import rewrite_syn
from mirror.net.nfqueue import NfQueue
from mirror.wire.tcp import parse_syn

QUEUE, PORT, MARK = 7950, 9, 0x6D000001
RULE = ["OUTPUT", "-p", "tcp", "--tcp-flags", "SYN,ACK,RST", "SYN", "-m", "mark", "--mark",
        hex(MARK), "-j", "NFQUEUE", "--queue-num", str(QUEUE)]
# a Windows 10 SYN: MSS, NOP, WS 8, NOP, NOP, SACK; window 64240, TTL 128, no timestamps
WINDOWS = bytes.fromhex("45000034abcd400080060000c6120102c6130202d5a101bb0000000000000000"
                        "8002faf000000000020405b40103030801010402")


def client(count: int, in_flight: int) -> None:
    """Open ``count`` connections, ``in_flight`` at a time, to a listener of our own."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PORT))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    started = done = 0
    deadline = time.monotonic() + 300

    def open_one() -> None:
        nonlocal started
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, 36, MARK)                 # SO_MARK
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", PORT))
        sel.register(sock, selectors.EVENT_WRITE, "connect")
        started += 1

    for _ in range(min(in_flight, count)):
        open_one()
    while done < count and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            if key.data == "accept":
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                continue
            sel.unregister(key.fileobj)
            key.fileobj.close()                                      # RST: no TIME_WAIT
            done += 1
            if started < count:
                open_one()
    print(done, flush=True)


class Server:
    """Serve the queue in a thread; count SYNs, measure the thread's CPU time."""

    def __init__(self, kind: str, rewrite: bool) -> None:
        self.kind, self.count, self.cpu, self.do_rewrite = kind, 0, 0.0, rewrite
        self.first = self.last = 0.0
        self.plan = parse_syn(WINDOWS)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def rewrite(self, payload: bytes) -> bytes | None:
        if not self.count:
            self.first = time.perf_counter()
        self.count += 1
        self.last = time.perf_counter()
        return rewrite_syn(payload, self.plan, hops=1).packet if self.do_rewrite else None

    def run(self) -> None:
        start = time.thread_time()
        if self.kind == "netlink":
            queue = NfQueue(QUEUE)
            self.ready.set()
            while not self.stop.is_set():
                if select.select([queue], [], [], 0.1)[0]:
                    for packet in queue.read():
                        queue.accept(packet, self.rewrite(packet.payload))
            queue.close()
        else:
            from netfilterqueue import NetfilterQueue

            def on_packet(packet) -> None:
                new = self.rewrite(packet.get_payload())
                if new is not None:
                    packet.set_payload(new)
                packet.accept()

            queue = NetfilterQueue()
            queue.bind(QUEUE, on_packet, max_len=1024)
            self.ready.set()
            fd = queue.get_fd()
            while not self.stop.is_set():
                if select.select([fd], [], [], 0.1)[0]:
                    queue.run(block=False)
            queue.unbind()
        self.cpu = time.thread_time() - start


def one_run(kind: str, count: int, in_flight: int, rewrite: bool) -> tuple[float, float]:
    server = Server(kind, rewrite)
    server.thread.start()
    server.ready.wait(5)
    done = subprocess.run([sys.executable, __file__, "--client", str(count), str(in_flight)],
                          capture_output=True, text=True, timeout=400, check=True)
    server.stop.set()
    server.thread.join(10)
    assert int(done.stdout) == count, done.stdout
    wall = server.last - server.first
    return server.count / wall, server.cpu / server.count * 1e6


def inside(args) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for key, value in (("net.core.somaxconn", "4096"), ("net.ipv4.tcp_max_syn_backlog", "4096")):
        subprocess.run(["sysctl", "-qw", f"{key}={value}"], check=False)
    subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-A", *RULE], check=True)
    kinds = ["netlink"]
    try:
        import netfilterqueue  # noqa: F401
        kinds.append("netfilterqueue")
    except ImportError:
        print("netfilterqueue: not installed, only mirror's netlink client is measured")
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for run in range(args.runs):
        for kind in kinds if run % 2 == 0 else kinds[::-1]:
            rate, cpu = one_run(kind, args.syns, args.in_flight, not args.accept_only)
            results[kind].append((rate, cpu))
            print(f"run {run + 1} {kind:15} {rate:8.0f} SYN/s  {cpu:6.1f} µs CPU per SYN",
                  flush=True)
    what = "accept as is" if args.accept_only else "rewrite"
    print(f"\n{args.syns} SYNs per run, {args.in_flight} in flight, {args.runs} runs, {what}; "
          "medians:")
    for kind, rows in results.items():
        print(f"  {kind:15} {statistics.median(r for r, _ in rows):8.0f} SYN/s  "
              f"{statistics.median(c for _, c in rows):6.1f} µs CPU per SYN (queue thread: "
              f"read, {what}, verdict)")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--client":
        client(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syns", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--accept-only", action="store_true",
                        help="Do not rewrite: the queue client's own cost.")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("bench_syn_queue: needs root and unshare (a network namespace of its own)")
    os.execvp("unshare", ["unshare", "--net", sys.executable, __file__, "--inside",
                          "--syns", str(args.syns), "--runs", str(args.runs),
                          "--in-flight", str(args.in_flight),
                          *(["--accept-only"] if args.accept_only else [])])


if __name__ == "__main__":
    main()

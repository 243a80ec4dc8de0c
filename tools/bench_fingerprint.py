"""Benchmark: `mirror fingerprint` on a capture of many connections, table versus --json.

It writes a classic pcap (Ethernet, IPv4, TCP) of ``--connections`` connections (30,000 by
default) between 198.18.0.0/15 addresses: per connection the client's SYN (Linux-like options),
the server's SYN-ACK, the client's ACK, its ClientHello (made by this Python's ssl module, one
of 64 server names, so rows differ), and the client's FIN. Nothing is sent anywhere.

Then it runs ``mirror fingerprint FILE`` (the table) and ``mirror fingerprint FILE --json``,
each as its own process with stdout to /dev/null (or ``--repeat`` times, keeping the fastest),
and prints for each: wall time, peak RSS (the child's ``ru_maxrss``), and the ratio
table / json. The target is a table within 2x of --json.

    python tools/bench_fingerprint.py [--connections N] [--keep FILE] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirror.wire.checksum import internet_checksum


def client_hello(server_name: str) -> bytes:
    """The first flight this Python's OpenSSL sends to ``server_name`` (no network)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
            options: bytes = b"", payload: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 64240, 0, 0)
    tcp += options + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", internet_checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


SYN_OPTIONS = bytes.fromhex("020405b40402080a002c0c470000000001030307")   # MSS,SACK,TS,NOP,WS


def write_capture(path: Path, connections: int) -> int:
    hellos = [client_hello(f"host{i}.bench.example") for i in range(64)]
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        now = 1_700_000_000.0
        for n in range(connections):
            client = bytes([198, 18, (n >> 8) & 0xFF, n & 0xFF])
            server = bytes([198, 19, 0, 1])
            sport = 10000 + n % 50000
            hello = hellos[n % len(hellos)]
            isn, server_isn = 1000 + n, 5000 + n
            frames = [
                _packet(client, server, sport, 443, isn, 0, 0x02, SYN_OPTIONS),
                _packet(server, client, 443, sport, server_isn, isn + 1, 0x12,
                        bytes.fromhex("020405b40101040201030307")),
                _packet(client, server, sport, 443, isn + 1, server_isn + 1, 0x10),
                _packet(client, server, sport, 443, isn + 1, server_isn + 1, 0x18, b"", hello),
                _packet(client, server, sport, 443, isn + 1 + len(hello), server_isn + 1, 0x11),
            ]
            for frame in frames:
                now += 0.0001
                seconds = int(now)
                out.write(struct.pack("<IIII", seconds, int((now - seconds) * 1e6), len(frame),
                                      len(frame)))
                out.write(frame)
    return path.stat().st_size


def run(args: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit status) of one ``mirror`` process, stdout discarded."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "mirror", *args], stdout=sink,
                                   stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest counts")
    parser.add_argument("--keep", type=Path, default=None, help="write the capture here and keep it")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mirror-bench-fp-") as scratch:
        path = options.keep or Path(scratch) / "many.pcap"
        size = write_capture(path, options.connections)
        print(f"capture: {path} ({options.connections:,} connections, {size / 2**20:.1f} MiB)")
        print(f"python {sys.version.split()[0]}; {os.cpu_count()} cores; "
              f"load {os.getloadavg()[0]:.2f}")
        results = {}
        for name, extra in (("--json", ["--json"]), ("table", [])):
            best = None
            for _ in range(options.repeat):
                seconds, rss, code = run(["fingerprint", str(path), *extra])
                if code != 0:
                    sys.exit(f"mirror fingerprint {' '.join(extra)} exited {code}")
                if best is None or seconds < best[0]:
                    best = (seconds, rss)
            results[name] = best
            print(f"{name:7} {best[0]:8.2f} s   peak RSS {best[1]:8.1f} MiB")
        ratio = results["table"][0] / results["--json"][0]
        print(f"table / --json: {ratio:.2f}x time, "
              f"{results['table'][1] / results['--json'][1]:.2f}x peak RSS (target: within 2x)")


if __name__ == "__main__":
    main()

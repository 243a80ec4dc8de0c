"""Benchmark: ClientHello parsing (+ JA4) per second, mirror versus scapy, on the same hellos.

What it measures
----------------
Four timed cases, each run over exactly the same list of raw TLS first flights (record headers
included, as a proxy reads them from a socket):

* ``mirror parse``       ``mirror.wire.tls.read_client_hello(data)``
* ``scapy  parse``       ``scapy.layers.tls.record.TLS(data)`` (scapy's full TLS dissector)
* ``mirror parse+ja4``   ``ja4(read_client_hello(data))``
* ``scapy  parse+ja4``   ``TLS(data)`` then :func:`scapy_ja4`, a small JA4 written here over the
  fields scapy dissected.

Before anything is timed, :func:`scapy_ja4` is checked to give the same JA4 string as
``mirror.fingerprint.tls.ja4`` on every hello (the script stops if not), so both sides do the
same work and produce the same answer.

The hellos: real ones recorded at start-up from curl_cffi (chrome, firefox, safari, safari_ios,
tor, chrome_android, edge), each read off a bare TCP listener on 127.0.0.1 by the test suite's
``capture_client_hello``; plus, when present, the 59 hellos of FoxIO's
``pcap/tls-handshake.pcapng`` (skip them with ``--no-pcap``).

Method: ``time.perf_counter``; a warm-up pass that also sizes each round; then ``--rounds``
rounds, the four cases interleaved inside each round (so a slow moment of the machine hits all
of them alike); each round runs a case over the whole hello list as many times as fits in
about ``--seconds / --rounds`` seconds. The garbage collector stays on (as in a real proxy);
``gc.collect()`` runs before every timed block.

How to read it
--------------
``hellos/s`` is the median over the rounds, ``min-max`` the slowest and fastest round, and
``µs/hello`` is 1e6 / median. ``mirror/scapy`` is how many times more hellos per second mirror
handles than scapy for that case (above 1 = mirror is faster). A wide min-max spread means a
noisy machine: rerun with more ``--rounds``/``--seconds``. (parse+ja4) minus (parse) is roughly
what the fingerprint costs on top of the parse, but it is the difference of two noisy figures.

Run from the repository root::

    python tools/bench_parse.py                 # table, about 30 s
    python tools/bench_parse.py --rounds 11 --seconds 8
    python tools/bench_parse.py --json > bench.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from hashlib import sha256
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import capture_client_hello, native_target, pcap_hellos, vectors_dir
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

from mirror.fingerprint.tls import ja4
from mirror.wire.tls import read_client_hello

FAMILIES = ("chrome", "firefox", "safari", "safari_ios", "tor", "chrome_android", "edge")
PCAP = vectors_dir() / "foxio-ja4" / "pcap" / "tls-handshake.pcapng"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- hellos ------------------------------------------------------------------------------------

def curl_hellos() -> list[tuple[str, bytes]]:
    """One recorded first flight per curl_cffi family (the newest native target of each)."""
    out = []
    for family in FAMILIES:
        data = capture_client_hello(family)
        hello = read_client_hello(data)
        if hello is None:
            raise SystemExit(f"curl_cffi {family}: incomplete hello ({len(data)} bytes)")
        out.append((native_target(family), data[: hello.consumed]))
    return out


# --- scapy side ---------------------------------------------------------------------------------

GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))
VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
            0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


def _short_hash(items: list[str]) -> str:
    return sha256(",".join(items).encode()).hexdigest()[:12] if items else "000000000000"


def _alpn_chars(protocol: bytes) -> str:
    if not protocol:
        return "00"
    if protocol[:1].isalnum() and protocol[-1:].isalnum():  # bytes.isalnum: ASCII only
        return chr(protocol[0]) + chr(protocol[-1])
    hexed = protocol.hex()
    return hexed[0] + hexed[-1]


def scapy_client_hello(packet) -> TLSClientHello | None:
    """The TLSClientHello inside a dissected record (None if scapy found none)."""
    for message in packet.msg or ():
        if isinstance(message, TLSClientHello):
            return message
    return None


def scapy_ja4(packet, transport: str = "t") -> str:
    """JA4 (FoxIO) of the ClientHello scapy dissected, from scapy's fields only.

    Scapy field access is a Python ``__getattr__`` chain (about 1 µs), so each field is read
    once: this is the cheap way to use scapy, not a handicap.
    """
    hello = scapy_client_hello(packet)
    ciphers = [c for c in hello.ciphers or () if c not in GREASE]
    types, versions, alpn, sigalgs = [], (), b"", ()
    for ext in hello.ext or ():
        kind = ext.type
        if kind in GREASE:
            continue
        types.append(kind)
        if kind == 43:
            versions = [v for v in ext.versions if v not in GREASE]
        elif kind == 16:
            protocols = ext.protocols
            alpn = protocols[0].protocol if protocols else b""
        elif kind == 13:
            sigalgs = [s for s in ext.sig_algs or () if s not in GREASE]
    version = max(versions) if versions else hello.version
    part_a = (f"{transport}{VERSIONS.get(version, '00')}{'d' if 0 in types else 'i'}"
              f"{min(len(ciphers), 99):02d}{min(len(types), 99):02d}{_alpn_chars(alpn)}")
    part_b = _short_hash([f"{c:04x}" for c in sorted(ciphers)])
    ext_items = [f"{t:04x}" for t in sorted(types) if t not in (0, 16)]
    if sigalgs:  # the signature algorithms join the extension list after an underscore
        text = ",".join(ext_items) + "_" + ",".join(f"{s:04x}" for s in sigalgs)
        part_c = sha256(text.encode()).hexdigest()[:12]
    else:
        part_c = _short_hash(ext_items)
    return f"{part_a}_{part_b}_{part_c}"


# --- timing -------------------------------------------------------------------------------------

def one_pass(fn: Callable[[bytes], object], hellos: list[bytes], passes: int) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(passes):
        for data in hellos:
            fn(data)
    return time.perf_counter() - start


def run(cases: dict[str, Callable[[bytes], object]], hellos: list[bytes], rounds: int,
        seconds: float) -> dict[str, dict]:
    """Warm up and size every case, then time them interleaved; hellos/s per round."""
    per_round = seconds / rounds
    passes = {}
    for name, fn in cases.items():
        one_pass(fn, hellos, 1)  # imports, caches, first-call costs
        spent, done = 0.0, 0
        while spent < min(0.25, per_round / 2):
            spent += one_pass(fn, hellos, 1)
            done += 1
        passes[name] = max(1, round(per_round / (spent / done)))
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for index in range(rounds):
        log(f"round {index + 1}/{rounds}")
        for name, fn in cases.items():
            elapsed = one_pass(fn, hellos, passes[name])
            rates[name].append(passes[name] * len(hellos) / elapsed)
    return {name: {"hellos_per_s": statistics.median(r), "min": min(r), "max": max(r),
                   "us_per_hello": 1e6 / statistics.median(r), "passes_per_round": passes[name],
                   "rounds": r} for name, r in rates.items()}


# --- report -------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {}
    for name in ("mirror", "scapy", "curl_cffi", "dpkt"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu,
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "packages": packages,
    }


def print_table(result: dict) -> None:
    m, s = result["machine"], result["cases"]
    print(f"CPU     {m['cpu']}  ({m['cores_logical']} logical cores, {m['cores_usable']} usable)")
    print(f"Python  {m['python']} on {m['platform']}")
    print("Packages " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()))
    h = result["hellos"]
    print(f"Hellos  {h['count']} ({h['curl_cffi']} curl_cffi + {h['pcap']} from pcap), "
          f"{h['mean_bytes']:.0f} bytes on average; {result['rounds']} rounds, "
          f"~{result['seconds']:g} s per case; JA4 identical on all {h['count']}")
    print()
    head = f"{'case':<18}{'hellos/s (median)':>18}{'min - max':>22}{'µs/hello':>11}"
    print(head)
    print("-" * len(head))
    for task in ("parse", "parse+ja4"):
        for impl in ("mirror", "scapy"):
            c = s[f"{impl} {task}"]
            spread = f"{c['min']:,.0f} - {c['max']:,.0f}"
            print(f"{impl + ' ' + task:<18}{c['hellos_per_s']:>18,.0f}{spread:>22}"
                  f"{c['us_per_hello']:>11.1f}")
        print(f"{'  mirror/scapy':<18}{result['ratio'][task]:>17.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case (7)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="approximate timed seconds per case, split over the rounds (5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--no-pcap", action="store_true", help="curl_cffi hellos only")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1 and --seconds > 0")

    log("recording curl_cffi hellos on 127.0.0.1 ...")
    named = curl_hellos()
    n_curl = len(named)
    if not args.no_pcap and PCAP.is_file():
        named += pcap_hellos(PCAP)
    elif not args.no_pcap:
        log(f"{PCAP} not found: curl_cffi hellos only")
    hellos = [data for _, data in named]

    for name, data in named:  # same answer on both sides, or no comparison at all
        ours = ja4(read_client_hello(data))
        try:
            theirs = scapy_ja4(TLS(data))
        except (AttributeError, TypeError) as error:  # scapy found no ClientHello
            theirs = f"nothing ({type(error).__name__}: {error})"
        if theirs != ours:
            raise SystemExit(f"JA4 differs on {name}: mirror {ours}, scapy {theirs}")

    cases = {
        "mirror parse": read_client_hello,
        "scapy parse": TLS,
        "mirror parse+ja4": lambda data: ja4(read_client_hello(data)),
        "scapy parse+ja4": lambda data: scapy_ja4(TLS(data)),
    }
    log(f"{len(hellos)} hellos, JA4 identical on both sides; timing ...")
    timed = run(cases, hellos, args.rounds, args.seconds)
    result = {
        "machine": machine(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "hellos": {"count": len(hellos), "curl_cffi": n_curl, "pcap": len(hellos) - n_curl,
                   "mean_bytes": sum(map(len, hellos)) / len(hellos),
                   "names": [name for name, _ in named]},
        "cases": timed,
        "ratio": {task: timed[f"mirror {task}"]["hellos_per_s"]
                  / timed[f"scapy {task}"]["hellos_per_s"] for task in ("parse", "parse+ja4")},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()

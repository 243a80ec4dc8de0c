"""Instructions per proxied connection in the connection's glue: accept, fronts, first bytes,
the TLS decision, refusals and the capture record, without sockets or threads.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python tools/connection_cpu.py -r 100
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python tools/connection_cpu.py -r 300

Each round drives one connection of each kind below through a real ``ProxyConnection`` on the
in-process harness (``tests/inprocess.py``: a recording transport, a hand-driven clock) until
its capture record is stored. The difference of callgrind's "Collected" total between two
round counts, divided by the extra connections, is the cost of one connection with the
interpreter's start and the imports taken out; the count of instructions does not depend on
the machine's load as time does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from inprocess import connect_client, feed, openssl_hello, running_proxy

from mirror.proxy.access import AccessPolicy

OWN = ("127.0.0.1", 8080)        # a listener of the proxy under test: a request for it is a loop
CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
SOCKS_CONNECT = b"\x05\x01\x00\x05\x01\x00\x03\x0cexample.test\x01\xbb"


def scenarios(hello: bytes) -> list[tuple[str, str, object, bytes]]:
    """(name, mode, reverse target, client bytes): each ends with the proxy closing."""
    return [
        ("connect, strict refusal of the hello", "http", None, CONNECT + hello),
        ("socks5, bad TLS", "socks5", None, SOCKS_CONNECT + b"\x16\x03\x01\x00\x05hello"),
        ("absolute form, bad header: 400", "http", None,
         b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nBad Header\r\n\r\n"),
        ("connect to the proxy itself: loop", "http", None,
         b"CONNECT 127.0.0.1:8080 HTTP/1.1\r\n\r\n"),
        ("reverse, bad TLS", "reverse", ("https", "example.test", 443),
         b"\x16\x03\x01\x00\x05hello"),
        ("transparent without an original destination", "transparent", None, b""),
        ("wrong proxy credentials: 407", "http", None,
         b"CONNECT example.test:443 HTTP/1.1\r\nProxy-Authorization: Basic eDp5\r\n\r\n"),
    ]


def run(rounds: int, step: int) -> int:
    hello = openssl_hello("example.test")
    done = 0
    with tempfile.TemporaryDirectory() as ca_dir, \
            running_proxy(Path(ca_dir), on_mismatch="strict",
                          access=AccessPolicy(credentials=("alice", "s3cret"))) as proxy:
        proxy.listening_on(*OWN)
        kinds = scenarios(hello)
        for _ in range(rounds):
            for name, mode, target, data in kinds:
                if name.startswith("wrong proxy credentials"):
                    proxy.access.credentials = ("alice", "s3cret")
                else:
                    proxy.access.credentials = None
                conn, client = connect_client(proxy, mode, target)
                if data:
                    feed(conn, data, step=step)
                proxy.loop.settle(2)
                if not client.closed or len(proxy.records) != done + 1:
                    raise SystemExit(f"{name}: the connection did not end with one record")
                done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-r", "--rounds", type=int, default=100)
    parser.add_argument("--step", type=int, default=64, help="bytes per data_received call")
    args = parser.parse_args()
    print(f"{run(args.rounds, args.step)} connections")


if __name__ == "__main__":
    main()

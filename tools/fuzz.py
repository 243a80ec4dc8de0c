"""Long fuzzing run of every parser mirror exposes to the network (the test suite runs a short
Hypothesis pass of each; this one runs a million inputs per parser by default).

    python tools/fuzz.py                       # all parsers, 1 000 000 inputs each
    python tools/fuzz.py --count 100000 --parsers tls,http2 --seed 7

Inputs: random bytes, and valid messages (real ClientHellos from fingerprints/, real SYNs,
HTTP/1 heads, an HTTP/2 start, SOCKS5 and proxy-tunnel exchanges, the kernel's NFQUEUE
messages, server messages and first flights for the replay TLS engine) mutated — bytes
replaced, inserted, deleted, truncated, spliced — and fed whole or in random pieces. The only
exception a parser may raise is ``WireError`` (``ReplayError`` for the replay engine);
anything else is printed with the input (hex) that caused it and the run exits 1. Prints
inputs/s per parser.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mirror.net.nfqueue_messages import parse_messages
from mirror.proxy.observe import Http1Observer, Http2Observer
from mirror.replay import messages as replay_messages
from mirror.replay.client import ReplayClient, ReplayConfig
from mirror.replay.errors import ReplayError
from mirror.wire import socks5
from mirror.wire.errors import WireError
from mirror.wire.http1 import ChunkedReader, body_framing, parse_request_head
from mirror.wire.http1_response import parse_response_head
from mirror.wire.http2 import PREFACE, H2ClientReader
from mirror.wire.proxy_client import ProxyHandshake
from mirror.wire.proxy_request import parse_connect_target, split_absolute_form
from mirror.wire.quic import ClientHelloAssembler
from mirror.wire.tcp import parse_syn
from mirror.wire.tls import read_client_hello

SYN = bytes.fromhex("4500003c1c4640004006b1e6c6120001c6120002d4a301bb5d3c9e2a00000000a002faf0"
                    "fe300000020405b40402080a0001d4c10000000001030307")
H1 = (b"POST /a?b=1 HTTP/1.1\r\nHost: x.test\r\nUser-Agent: f\r\nTransfer-Encoding: chunked\r\n"
      b"\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
# a SYN the kernel queued (nfnetlink_queue packet message, as read from the socket), an ack
NETLINK = [bytes.fromhex(
    "7000000000030000000000000000000002001ede0b00010000000001080003000800060000000001080003006d"
    "00012340000a004500003cf4a44000400648157f0000017f00000199680009c69ea4ce00000000a002ffd7c849"
    "00000204ffd70402080aadd9d4fc000000000103030a"),
    bytes.fromhex("2400000002000000050000000000000000000000140000000203050005000000"
                  "00000000")]
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcHTTP/1.1 101 Switching\r\n\r\n"


def _h2_start() -> bytes:
    import h2.config
    import h2.connection

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":authority", "x"), (":scheme", "https"),
                          (":path", "/"), ("user-agent", "f")], end_stream=True)
    return conn.data_to_send()


def _hellos() -> list[bytes]:
    out = []
    for path in sorted((ROOT / "fingerprints").glob("*.json")):
        tls = json.loads(path.read_text()).get("tls") or {}
        raw = bytes.fromhex(tls.get("raw_client_hello", ""))
        if raw:
            out.append(raw if raw[0] == 0x16 else b"\x16\x03\x01" + len(raw).to_bytes(2, "big") + raw)
    return out


def _feed_pieces(rng: random.Random, data: bytes, feed) -> None:
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 2, 7, 64, len(data)))
        feed(data[pos:pos + step])
        pos += step


def _chunked(data, rng):
    _feed_pieces(rng, data, ChunkedReader(max_line=256, max_trailer_size=1024).feed)


def _h2(data, rng):
    _feed_pieces(rng, PREFACE + data[len(PREFACE):] if rng.random() < 0.5 else data,
                 H2ClientReader().feed)


def _observer1(data, rng):
    observer = Http1Observer()
    _feed_pieces(rng, data, observer.feed)
    _feed_pieces(rng, RESPONSE if rng.random() < 0.5 else data, observer.server_bytes)


def _observer2(data, rng):
    observer = Http2Observer()
    _feed_pieces(rng, data, observer.feed)
    observer.server_bytes(data)


def _head(data, _rng):
    head = parse_request_head(data)
    if head is not None:
        body_framing(head)


def _socks(data, _rng):
    for parse in (socks5.parse_greeting, socks5.parse_userpass, socks5.parse_request):
        try:
            parse(data)
        except WireError:
            pass


def _tunnel(data, rng):
    shake = ProxyHandshake(rng.choice(("http", "socks5", "socks5h")), "x.test", 443, "u", "p")
    shake.start()
    _feed_pieces(rng, data, shake.feed)


def _proxy_request(data, _rng):
    text = data.decode("latin-1")
    for parse in (parse_connect_target, split_absolute_form):
        try:
            parse(text)
        except WireError:
            pass


def _quic(data, _rng):
    ClientHelloAssembler().feed(data)


_SID = b"\xaa" * 32


def _replay_flights() -> list[bytes]:
    """Server first flights: TLS 1.3 ServerHello (+CCS), a HelloRetryRequest, a TLS 1.2 start."""
    def record(kind: int, body: bytes) -> bytes:
        message = bytes([kind]) + len(body).to_bytes(3, "big") + body
        return b"\x16\x03\x03" + len(message).to_bytes(2, "big") + message

    share = b"\x00\x33\x00\x24\x00\x1d\x00\x20" + bytes(range(1, 33))
    sh13 = (b"\x03\x03" + bytes(32) + b"\x20" + _SID + b"\x13\x01\x00\x00\x2e"
            + b"\x00\x2b\x00\x02\x03\x04" + share)
    hrr = (b"\x03\x03" + replay_messages.HRR_RANDOM + b"\x20" + _SID + b"\x13\x01\x00\x00\x0c"
           + b"\x00\x2b\x00\x02\x03\x04\x00\x33\x00\x02\x00\x17")
    sh12 = (b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + b"\xc0\x2f\x00\x00\x09"
            + b"\xff\x01\x00\x01\x00\x00\x17\x00\x00")
    ske = b"\x03\x00\x1d\x20" + bytes(range(1, 33)) + b"\x08\x04\x00\x02ab"
    return [record(2, sh13) + b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x20" + bytes(32),
            record(2, hrr) + b"\x14\x03\x03\x00\x01\x01",
            record(2, sh12) + record(11, b"\x00\x00\x00") + record(12, ske) + record(14, b"")]


def _replay_client(data, rng):
    hello = _hellos()[0]
    from mirror.wire.tls import read_client_hello as read

    client = ReplayClient(ReplayConfig(client_hello=read(hello), server_name="x.test",
                                       insecure=True))
    client.start()
    data = data.replace(_SID, client.hello.session_id)
    try:
        _feed_pieces(rng, data, client.receive)
        client.eof()
    except ReplayError:
        pass


_REPLAY_PARSERS = [
    replay_messages.parse_server_hello, replay_messages.parse_certificate13,
    replay_messages.parse_certificate12, replay_messages.parse_certificate_verify,
    lambda body: replay_messages.decompress_certificate(
        replay_messages.parse_compressed_certificate(body)),
    replay_messages.parse_certificate_request13, replay_messages.parse_certificate_request12,
    replay_messages.parse_new_session_ticket13, replay_messages.parse_new_session_ticket12,
    replay_messages.parse_key_update, replay_messages.parse_server_key_exchange,
    replay_messages.parse_certificate_status,
    lambda body: replay_messages.parse_extensions(body, "fuzz")]


def _replay_message_samples() -> list[bytes]:
    import zlib

    cert = b"\x00\x00\x00\x0c\x00\x00\x07" + b"\x30\x05\x02\x01\x01\x05\x00" + b"\x00\x00"
    packed = zlib.compress(cert)
    return [cert, b"\x00\x01" + len(cert).to_bytes(3, "big") + len(packed).to_bytes(3, "big")
            + packed, b"\x04\x03\x00\x04abcd", b"\x00\x00\x0a\x00\x0d\x00\x06\x00\x04\x04\x03\x08\x04",
            bytes(8) + b"\x00\x00\x04tick\x00\x00", b"\x03\x00\x1d\x20" + bytes(32) + b"\x04\x03\x00\x02ab",
            b"\x01\x00\x00\x03abc", b"\x00\x10\x00\x05\x00\x03\x02h2"]


def _replay_messages(data, _rng):
    for parse in _REPLAY_PARSERS:
        try:
            parse(data)
        except ReplayError:
            pass


PARSERS = {
    "tls": (lambda d, r: read_client_hello(d), _hellos),
    "tcp": (lambda d, r: parse_syn(d), lambda: [SYN]),
    "http1": (_head, lambda: [H1]),
    "chunked": (_chunked, lambda: [H1[H1.index(b"\r\n\r\n") + 4:]]),
    "http1-response": (lambda d, r: parse_response_head(d), lambda: [RESPONSE]),
    "http2": (_h2, lambda: [_h2_start()]),
    "observer-h1": (_observer1, lambda: [H1]),
    "observer-h2": (_observer2, lambda: [_h2_start()]),
    "socks5": (_socks, lambda: [b"\x05\x02\x00\x02", b"\x01\x05alice\x03pwd",
                                b"\x05\x01\x00\x03\x06x.test\x01\xbb"]),
    "proxy-request": (_proxy_request, lambda: [b"x.test:443", b"http://x.test:8080/a?b"]),
    "tunnel": (_tunnel, lambda: [b"HTTP/1.1 200 OK\r\n\r\n", b"\x05\x02\x01\x00\x05\x00\x00\x01"
                                 b"\x7f\x00\x00\x01\x01\xbb"]),
    "quic": (_quic, lambda: [bytes(1200)]),
    "netlink": (lambda d, r: parse_messages(d), lambda: NETLINK),
    "replay-messages": (_replay_messages, _replay_message_samples),
    "replay-client": (_replay_client, _replay_flights),
}


def mutate(rng: random.Random, sample: bytes) -> bytes:
    data = bytearray(sample)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        kind = rng.random()
        if not data or kind < 0.1:
            data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif kind < 0.5:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif kind < 0.7:
            data.insert(rng.randrange(len(data) + 1), rng.getrandbits(8))
        elif kind < 0.85:
            del data[rng.randrange(len(data))]
        elif kind < 0.95:
            del data[rng.randrange(len(data)):]
        else:
            start = rng.randrange(len(data))
            data[start:start] = data[start:start + rng.randint(1, 64)]   # splice a copy
    return bytes(data)


def run(name: str, count: int, seed: int) -> bool:
    parse, corpus = PARSERS[name]
    samples = corpus()
    rng = random.Random(seed)
    started = time.perf_counter()
    for i in range(count):
        if i % 10 == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        else:
            data = mutate(rng, rng.choice(samples))
        try:
            parse(data, rng)
        except (WireError, ReplayError):
            pass
        except Exception:  # noqa: BLE001 - any other exception is the finding, reported
            print(f"{name}: unexpected exception on input {i} (seed {seed}): {data.hex()}")
            traceback.print_exc()
            return False
    elapsed = time.perf_counter() - started
    allowed = "ReplayError" if name.startswith("replay") else "WireError"
    print(f"{name:15} {count:>10,} inputs  {count / elapsed:>10,.0f}/s  only {allowed}", flush=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--parsers", default=",".join(PARSERS))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    names = [n for n in args.parsers.split(",") if n]
    unknown = [n for n in names if n not in PARSERS]
    if unknown:
        parser.error(f"unknown parser(s) {unknown}; known: {', '.join(PARSERS)}")
    ok = all(run(name, args.count, args.seed + i) for i, name in enumerate(names))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

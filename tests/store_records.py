"""A realistic capture record (the proxy's record shape, with a real TLS report) for the
capture store's tests."""

from __future__ import annotations

from typing import Any

from conftest import alpn_ext, make_hello

from mirror.fingerprint.report import tls_report
from mirror.fingerprint.tls import ja4
from mirror.wire.tls import parse_client_hello

HELLO = parse_client_hello(make_hello(
    ciphers=(0x1301, 0x1302, 0xC02B),
    extensions=[(0, b"\x00\x0e\x00\x00\x0bexample.com"), alpn_ext(b"h2", b"http/1.1"),
                (43, b"\x04\x03\x04\x03\x03")],
))


def full_record(**changes: Any) -> dict[str, Any]:
    """A record shaped like the proxy's (contract), with a real TLS report."""
    record = {
        "started": 1_750_000_000.25,
        "ended": 1_750_000_002.75,
        "mode": "http",
        "client": {"addr": "::1", "port": 51000},
        "destination": {"host": "example.com", "port": 443, "source": "connect"},
        "sni": "example.com",
        "protocol": "tls",
        "alpn": {"offered": ["h2", "http/1.1"], "upstream": "h2", "client": "h2"},
        "tcp": {"ja4t": "64240_2-4-8-1-3_1460_7", "p0f": "4:64+0:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+:0"},
        "tls": tls_report(HELLO),
        "http": {"version": "HTTP/2", "h2": {"akamai": "1:65536;4:6291456|15663105|0|m,a,s,p"},
                 "requests": [{"method": "GET", ":path": "/index.html", "authority": "example.com",
                               "headers": [[":method", "GET"], [":path", "/index.html"],
                                           ["user-agent", "test-agent/1"]],
                               "ja4h": "ge20nn010000_4740ae6347b0_000000000000_000000000000",
                               "status": 200}]},
        "emitted": {"tls": {"ja4": ja4(HELLO)},
                    "fidelity": {"cipher_suites": {"status": "exact", "detail": ""},
                                 "extension_order": {"status": "exact", "detail": ""},
                                 "grease": {"status": "approximated", "detail": "GREASE values are re-drawn"},
                                 "ech": {"status": "impossible", "detail": "[bold]no ECH[/bold] key"}}},
        "upstream": {"error": None, "route": "direct"},
        "error": {"stage": "relay", "message": "connection reset by peer while relaying the response body"},
        "bytes": {"up": 517, "down": 20480},
    }
    record.update(changes)
    return record

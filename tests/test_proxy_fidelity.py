"""Fidelity through the proxy, judged by the server: real clients direct vs through `mirror run`.

A real `mirror echo` server reports what reached it (TLS ClientHello, HTTP/2 frames, HTTP/1
head). Each client fetches from it directly and through the proxy (explicit HTTP and SOCKS5 on
loopback). Order-free fields must be equal direct and proxied; fields that depend on the
connection's own extension order (Chrome permutes it per connection) are compared between the
hello the proxy received from the client (its capture record) and the hello the server
received from the proxy. Every comparison lands in a table; with MIRROR_FIDELITY_TABLE=path
the table is written there (tools/fidelity_table.py puts it in the README).
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import sqlite3
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from conftest import running_echo
from proxyrun import running_proxy

from mirror.fingerprint.tls import ja3_string, ja4, ja4_o
from mirror.wire.tls import ClientHello, is_grease, parse_client_hello

NAME = "echo.test"
CURL_CFFI = ["chrome", "edge", "firefox", "safari", "safari_ios", "tor", "chrome_android"]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--ignore-certificate-errors",
]
FIELDS = ["ja4", "ja4_o", "ja3_string", "alpn", "signature_algorithms", "supported_groups",
          "key_share_groups", "cert_compression", "akamai", "h2_headers", "h1_head"]
RESULTS: dict[tuple[str, str], dict[str, str]] = {}


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fidelity")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(workdir / "proxy", extra=extra) as proxy:
            yield {"port": port, "echo_ca": echo_ca, "proxy": proxy, "workdir": workdir}


# ------------------------------------------------------------------ clients
def curl_cffi_get(bed, family: str, via: str | None, http1: bool = False) -> dict:
    from curl_cffi import CurlHttpVersion, CurlOpt, requests

    port = bed["port"]
    kwargs = {"http_version": CurlHttpVersion.V1_1} if http1 else {}
    if via is None:
        session = requests.Session(impersonate=family, verify=str(bed["echo_ca"]), timeout=20,
                                   curl_options={CurlOpt.RESOLVE: [f"{NAME}:{port}:127.0.0.1"]})
    else:
        session = requests.Session(impersonate=family, verify=str(bed["proxy"].ca_cert),
                                   timeout=20, proxy=bed["proxy"].url(via))
    with session:
        response = session.get(f"https://{NAME}:{port}/fidelity?client={family}", **kwargs)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def chromium_get(bed, via: str | None) -> dict:
    port = bed["port"]
    profile = bed["workdir"] / f"chromium-{via}-{time.monotonic_ns()}"
    if via is None:
        route = [f"--host-resolver-rules=MAP {NAME} 127.0.0.1"]
    else:
        scheme = "http" if via == "http" else "socks5"
        route = [f"--proxy-server={scheme}://127.0.0.1:{bed['proxy'].ports[via]}"]
    out = subprocess.run(
        [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *route,
         "--dump-dom", f"https://{NAME}:{port}/fidelity?client=chromium"],
        capture_output=True, text=True, timeout=90,
    ).stdout
    match = re.search(r"<pre[^>]*>(.*)</pre>", out, re.DOTALL)
    assert match, f"chromium printed no JSON page: {out[:300]!r}"
    return json.loads(html.unescape(match.group(1)))


def curl_get(bed, via: str | None) -> dict:
    port = bed["port"]
    url = f"https://{NAME}:{port}/fidelity?client=curl"
    if via is None:
        route = ["--resolve", f"{NAME}:{port}:127.0.0.1", "--cacert", str(bed["echo_ca"])]
    else:
        flag = "-x" if via == "http" else "--socks5-hostname"
        route = [flag, f"127.0.0.1:{bed['proxy'].ports[via]}", "--cacert", str(bed["proxy"].ca_cert)]
    out = subprocess.run(["curl", "-sS", "--http2", *route, "-H", "X-Mixed-Case: 1", url],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


def httpx_get(bed, via: str | None) -> dict:
    import httpx

    port = bed["port"]
    url = f"https://{NAME}:{port}/fidelity?client=httpx"
    if via is None:
        context = ssl.create_default_context(cafile=str(bed["echo_ca"]))
        client = httpx.Client(transport=_loopback_transport(context), timeout=20)
    else:
        context = ssl.create_default_context(cafile=str(bed["proxy"].ca_cert))
        client = httpx.Client(verify=context, timeout=20, proxy=bed["proxy"].url("http"))
    with client:
        response = client.get(url)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def _loopback_transport(context: ssl.SSLContext):
    """httpx's own transport, connecting to 127.0.0.1 whatever the name (httpx has no --resolve)."""
    import httpcore
    import httpx

    class Loopback(httpcore.SyncBackend):
        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            return super().connect_tcp("127.0.0.1", port, timeout, local_address, socket_options)

    transport = httpx.HTTPTransport(verify=context)
    transport._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=Loopback())
    return transport


# ------------------------------------------------------------------ comparing
def newest_capture(store: Path, after_id: int, timeout: float = 8.0, sni: str = NAME) -> dict:
    """The first capture with id > after_id (records land when the connection closes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                row = db.execute("SELECT id, record FROM captures WHERE id > ? AND sni = ? "
                                 "ORDER BY id LIMIT 1", (after_id, sni)).fetchone()
            if row:
                record = json.loads(row[1])
                record["id"] = row[0]
                return record
        time.sleep(0.1)
    raise AssertionError(f"no capture after id {after_id} in {store}")


def last_id(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0]


def _grease_free(values: list) -> list:
    """GREASE values are drawn at random per connection: compare their places, not values."""
    return ["GREASE" if isinstance(v, int) and is_grease(v) else v for v in values]


def tls_fields(tls: dict) -> dict:
    return {
        "ja4": tls["ja4"],
        "alpn": tls["alpn"],
        "signature_algorithms": _grease_free(tls["signature_algorithms"]),
        "supported_groups": _grease_free(tls["supported_groups"]),
        "key_share_groups": _grease_free([share["group"] if isinstance(share, dict) else share[0]
                                          for share in tls["key_shares"]]),
        "cert_compression": tls["compress_certificate"],
    }


def own_order_fields(tls: dict) -> dict:
    return {"ja4_o": tls["ja4_o"], "ja3_string": tls["ja3_full"]}


def http_fields(report: dict) -> dict:
    out = {}
    if report.get("http2"):
        out["akamai"] = report["http2"]["akamai"]
        out["h2_headers"] = report["http2"]["request"]["headers"]
    if report.get("http1"):
        out["h1_head"] = report["http1"]["raw"]
    return out


PADDING_SENSITIVE = {"ja4", "ja4_o", "ja3_string"}
HELLO_SHAPE = ("ciphers", "extension_order", "supported_groups", "signature_algorithms",
               "ec_point_formats", "supported_versions", "alpn", "grease", "padding")
DEPENDS = {"ja4": HELLO_SHAPE, "ja4_o": HELLO_SHAPE, "ja3_string": HELLO_SHAPE,
           "signature_algorithms": ("signature_algorithms", "grease"),
           "supported_groups": ("supported_groups", "grease"),
           "key_share_groups": ("key_share_groups", "supported_groups", "grease"),
           "cert_compression": ("cert_compression",), "alpn": ("alpn",)}
GREASE_LISTS = {"signature_algorithms", "supported_groups", "key_share_groups"}


def grease_only(want: list, got: list) -> bool:
    return [v for v in want if v != "GREASE"] == [v for v in got if v != "GREASE"]


def _without_padding(raw_hex: str) -> ClientHello:
    hello = parse_client_hello(bytes.fromhex(raw_hex))
    return dataclasses.replace(hello, extensions=[e for e in hello.extensions if e.type != 21])


def padding_only(capture: dict, proxied: dict, field: str) -> bool:
    """True when the two hellos differ in ``field`` only by the padding extension."""
    mine, theirs = _without_padding(capture["tls"]["raw"]), _without_padding(proxied["tls"]["raw"])
    compute = {"ja4": ja4, "ja4_o": ja4_o, "ja3_string": ja3_string}[field]
    return compute(mine) == compute(theirs)


def compare(client: str, via: str, direct: dict, proxied: dict, capture: dict) -> None:
    row: dict[str, str] = {}
    mismatches = []
    want, got = tls_fields(direct["tls"]), tls_fields(proxied["tls"])
    # the connection's own extension order: the client's hello at the proxy vs the server's view
    want.update(own_order_fields(capture["tls"]))
    got.update(own_order_fields(proxied["tls"]))
    want.update(http_fields(direct))
    got.update(http_fields(proxied))
    for field in FIELDS:
        if field not in want and field not in got:
            continue
        equal = want.get(field) == got.get(field)
        row[field] = "same" if equal else "DIFFERENT"
        if not equal and field in PADDING_SENSITIVE and padding_only(capture, proxied, field):
            # BoringSSL pads a hello of 256-511 bytes; with GREASE ECH (random payload size,
            # drawn per connection by the client and by the emitter alike) padding comes and
            # goes on both sides. The record says so: fidelity "padding" is approximated.
            assert capture["emitted"]["fidelity"]["padding"]["status"] == "approximated"
            row[field] = "same but padding"
            continue
        if not equal and field in GREASE_LISTS and grease_only(want[field], got[field]):
            # Chromium 156 puts a GREASE value first in signature_algorithms; curl-impersonate's
            # BoringSSL has no way to send one there. The record says so (fidelity "grease").
            grease = capture["emitted"]["fidelity"]["grease"]
            assert grease["status"] == "approximated" and field in grease["detail"], grease
            row[field] = "same but GREASE"
            continue
        declared = {name: f for name, f in capture["emitted"]["fidelity"].items()
                    if name in DEPENDS.get(field, ()) and f["status"] != "exact"}
        if not equal and declared:
            # the proxy said beforehand that it could not send this exactly, and why
            row[field] = "differs: " + "; ".join(f"{n} {f['status']}" for n, f in declared.items())
            continue
        if not equal:
            mismatches.append(f"{field}: client {want.get(field)!r} != server saw {got.get(field)!r}")
    RESULTS[(client, via)] = row
    assert not mismatches, f"{client} via {via}: " + "; ".join(mismatches)
    assert proxied["tls"]["raw"] != capture["tls"]["raw"] or True  # random/key shares differ
    assert capture["alpn"]["upstream"] == capture["alpn"]["client"]


@pytest.mark.parametrize("via", ["http", "socks5"])
@pytest.mark.parametrize("family", CURL_CFFI)
def test_curl_cffi_targets_look_the_same_through_the_proxy(bed, family, via):
    direct = curl_cffi_get(bed, family, None)
    before = last_id(bed["proxy"].store)
    proxied = curl_cffi_get(bed, family, via)
    compare(f"curl_cffi {family}", via, direct, proxied, newest_capture(bed["proxy"].store, before))


@pytest.mark.parametrize("family", ["chrome", "firefox", "safari"])
def test_http1_head_is_relayed_byte_for_byte(bed, family):
    direct = curl_cffi_get(bed, family, None, http1=True)
    before = last_id(bed["proxy"].store)
    proxied = curl_cffi_get(bed, family, "http", http1=True)
    capture = newest_capture(bed["proxy"].store, before)
    assert proxied["http_version"] == "HTTP/1.1"
    compare(f"curl_cffi {family} (HTTP/1.1)", "http", direct, proxied, capture)
    assert capture["http"]["requests"][0]["header_order"] == direct["http1"]["header_order"]


@pytest.mark.browser
@pytest.mark.parametrize("via", ["http", "socks5"])
def test_chromium_looks_the_same_through_the_proxy(bed, via):
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed; .ci/run installs it")
    direct = chromium_get(bed, None)
    before = last_id(bed["proxy"].store)
    proxied = chromium_get(bed, via)
    compare("Chromium (headless)", via, direct, proxied, newest_capture(bed["proxy"].store, before))


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_system_curl_looks_the_same_through_the_proxy(bed, via):
    if not shutil.which("curl"):
        pytest.fail("curl is not installed; .ci/run installs it")
    direct = curl_get(bed, None)
    before = last_id(bed["proxy"].store)
    proxied = curl_get(bed, via)
    compare("curl (system)", via, direct, proxied, newest_capture(bed["proxy"].store, before))


def test_httpx_looks_the_same_through_the_proxy(bed):
    direct = httpx_get(bed, None)
    before = last_id(bed["proxy"].store)
    proxied = httpx_get(bed, "http")
    compare("httpx", "http", direct, proxied, newest_capture(bed["proxy"].store, before))


def test_capture_records_what_was_mirrored(bed):
    before = last_id(bed["proxy"].store)
    curl_cffi_get(bed, "chrome", "http")
    capture = newest_capture(bed["proxy"].store, before)
    assert capture["mode"] == "http"
    assert capture["destination"] == {"host": NAME, "port": bed["port"], "source": "connect"}
    assert capture["protocol"] == "tls"
    assert capture["alpn"] == {"offered": ["h2", "http/1.1"], "upstream": "h2", "client": "h2"}
    fidelity = capture["emitted"]["fidelity"]
    assert fidelity["ciphers"]["status"] == "exact"
    assert fidelity["extension_order"]["status"] == "exact"
    assert fidelity["ech"]["status"] == "approximated" and "GREASE" in fidelity["ech"]["detail"]
    assert capture["http"]["version"] == "HTTP/2"
    assert capture["http"]["h2"]["akamai"].startswith("1:65536;")
    assert capture["tcp"]["ja4t"]


def fidelity_table() -> str:
    """The comparisons made in this session as a Markdown table (README's fidelity table)."""
    lines = ["| client | via | " + " | ".join(FIELDS) + " |",
             "|---|---|" + "---|" * len(FIELDS)]
    for (client, via), row in sorted(RESULTS.items()):
        cells = [row.get(f, "n/a") for f in FIELDS]
        lines.append(f"| {client} | {via} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

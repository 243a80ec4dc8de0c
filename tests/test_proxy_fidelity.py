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

import json
import shutil
import ssl
import subprocess

import pytest
from conftest import running_echo
from fidelity_helpers import (
    CHROMIUM_PATH,
    NAME,
    chromium_get,
    compare,
    compare_exactly,
    last_id,
    newest_capture,
)
from proxyrun import running_proxy

CURL_CFFI = ["chrome", "edge", "firefox", "safari", "safari_ios", "tor", "chrome_android"]


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
    capture = newest_capture(bed["proxy"].store, before, request=CHROMIUM_PATH)
    compare_exactly("Chromium (headless)", via, direct, proxied, capture, permutes=True)


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_system_curl_looks_the_same_through_the_proxy(bed, via):
    if not shutil.which("curl"):
        pytest.fail("curl is not installed; .ci/run installs it")
    direct = curl_get(bed, None)
    before = last_id(bed["proxy"].store)
    proxied = curl_get(bed, via)
    compare_exactly("curl (system)", via, direct, proxied,
                    newest_capture(bed["proxy"].store, before))


def test_httpx_looks_the_same_through_the_proxy(bed):
    direct = httpx_get(bed, None)
    before = last_id(bed["proxy"].store)
    proxied = httpx_get(bed, "http")
    compare_exactly("httpx", "http", direct, proxied, newest_capture(bed["proxy"].store, before))


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
    # BoringSSL would send a GREASE ECH of its own; the replay engine sent Chrome's hello, and
    # the record holds that measurement, not the plan's prediction
    assert capture["upstream"]["engine"] == "replay"
    assert capture["emitted"]["tls"]["hello"]["exact"] is True
    assert fidelity["ech"] == {"status": "exact",
                               "detail": "measured: the hello written upstream is the client's own"}
    assert capture["http"]["version"] == "HTTP/2"
    assert capture["http"]["h2"]["akamai"].startswith("1:65536;")
    assert capture["tcp"]["ja4t"]

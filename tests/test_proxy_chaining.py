"""Chaining through an upstream proxy: client -> mirror -> upstream proxy -> server.

The upstream proxy is pproxy (tests/upstream_proxies.py) with
username/password authentication. Through it, the echo server must still see the client's
TLS and HTTP fingerprints; the credentials must reach the upstream proxy and nowhere else
(not the log, not the capture store); each failure of the upstream proxy must come back as
its documented status.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from conftest import running_echo
from fidelity_helpers import (
    CHROMIUM_PATH,
    chromium_get,
    compare,
    compare_exactly,
    last_id,
    newest_capture,
)
from proxyrun import running_proxy
from upstream_proxies import free_port, pproxy

from mirror.ca import CertificateAuthority, LeafCache

SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def upstream_proxy(tmp_path_factory):
    with pproxy(tmp_path_factory.mktemp("pproxy"),
                "http+socks5://127.0.0.1:{port}#alice:" + SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def tls_upstream_proxy(tmp_path_factory, bed):
    """An https:// upstream proxy: TLS to the proxy, its certificate from the echo's CA."""
    workdir = tmp_path_factory.mktemp("pproxy-tls")
    leaf = LeafCache(CertificateAuthority.load(bed["echo_ca"].parent)).get(None, "127.0.0.1")
    (workdir / "proxy.crt").write_bytes(leaf.cert_pem)
    (workdir / "proxy.key").write_bytes(leaf.key_pem)
    with pproxy(workdir, "http+ssl://127.0.0.1:{port}#alice:" + SECRET,
                "--ssl", f"{workdir / 'proxy.crt'},{workdir / 'proxy.key'}") as running:
        yield running


@pytest.fixture(scope="module")
def silent_port():
    """A port that accepts connections and never says a word (an upstream proxy that hangs)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture(scope="module")
def bed(tmp_path_factory, upstream_proxy, silent_port):
    workdir = tmp_path_factory.mktemp("chaining")
    pp = upstream_proxy["port"]
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        names = ["echo.test", "socks.test", "http.test", "direct.test", "badpass.test",
                 "badsocks.test", "refused.test", "hanging.test"]
        config = workdir / "mirror.toml"
        config.write_text("\n".join([
            f'upstream-proxy-file = "{workdir / "upstream.url"}"',
            "route = [",
            f'  "^http\\\\.test$=http://alice:{SECRET}@127.0.0.1:{pp}",',
            '  "^direct\\\\.test$=direct",',
            f'  "^badpass\\\\.test$=http://alice:wrong@127.0.0.1:{pp}",',
            f'  "^badsocks\\\\.test$=socks5h://alice:wrong@127.0.0.1:{pp}",',
            f'  "^refused\\\\.test$=socks5h://127.0.0.1:{free_port()}",',
            f'  "^hanging\\\\.test$=http://127.0.0.1:{silent_port}",',
            "]",
            "resolve = [" + ", ".join(f'"{n}:{port}:127.0.0.1"' for n in names) + "]",
        ]) + "\n")
        (workdir / "upstream.url").write_text(f"socks5h://alice:{SECRET}@127.0.0.1:{pp}\n")
        extra = ["--config", str(config), "--upstream-ca", str(echo_ca), "--connect-timeout", "3"]
        with running_proxy(workdir / "proxy", modes=("http",), extra=extra) as proxy:
            yield {"port": port, "echo_ca": echo_ca, "proxy": proxy, "workdir": workdir}


@pytest.fixture(scope="module")
def tls_chain(tmp_path_factory, bed, tls_upstream_proxy):
    """A second mirror whose upstream proxy is the https:// one."""
    url = f"https://alice:{SECRET}@127.0.0.1:{tls_upstream_proxy['port']}"
    extra = ["--upstream-ca", str(bed["echo_ca"]), "--resolve", f"echo.test:{bed['port']}:127.0.0.1"]
    env = dict(os.environ, MIRROR_UPSTREAM_PROXY=url)
    with running_proxy(tmp_path_factory.mktemp("tls-chain"), modes=("http",), extra=extra,
                       env=env) as proxy:
        yield {**bed, "proxy": proxy}


def fetch(bed, name: str, family: str = "firefox", direct: bool = False):
    """GET https://NAME:PORT/chained with curl_cffi: through mirror, or straight to the echo."""
    from curl_cffi import CurlOpt, requests

    if direct:
        session = requests.Session(impersonate=family, verify=str(bed["echo_ca"]), timeout=20,
                                   curl_options={CurlOpt.RESOLVE: [f"{name}:{bed['port']}:127.0.0.1"]})
    else:
        session = requests.Session(impersonate=family, verify=str(bed["proxy"].ca_cert),
                                   timeout=20, proxy=bed["proxy"].url("http"))
    with session:
        return session.get(f"https://{name}:{bed['port']}/chained")


@pytest.mark.parametrize("name", ["socks.test", "http.test"])
@pytest.mark.parametrize("family", ["chrome", "firefox", "safari"])
def test_fingerprints_survive_the_upstream_proxy(bed, upstream_proxy, family, name):
    direct = fetch(bed, name, family, direct=True).json()
    before = last_id(bed["proxy"].store)
    response = fetch(bed, name, family)
    assert response.status_code == 200, response.text[:300]
    capture = newest_capture(bed["proxy"].store, before, sni=name)
    kind = "socks5h" if name == "socks.test" else "http"
    assert capture["upstream"]["route"] == f"via {kind}://127.0.0.1:{upstream_proxy['port']}"
    assert "not the client's" in capture["upstream"]["proxy_exchange"]
    # the upstream proxy did carry it
    assert f":{bed['port']}" in upstream_proxy["log"].read_text()
    compare(f"curl_cffi {family}", f"mirror + {kind} proxy", direct, response.json(), capture)


@pytest.mark.browser
def test_chromium_through_mirror_and_the_upstream_proxy(bed):
    direct = chromium_get(bed, None)
    before = last_id(bed["proxy"].store)
    proxied = chromium_get(bed, "http")        # echo.test: the default route, SOCKS5
    capture = newest_capture(bed["proxy"].store, before, request=CHROMIUM_PATH)
    assert capture["upstream"]["route"].startswith("via socks5h://")
    compare_exactly("Chromium (headless)", "mirror + socks5h proxy", direct, proxied, capture,
                    permutes=True)


def test_direct_route_skips_the_upstream_proxy(bed):
    before = last_id(bed["proxy"].store)
    assert fetch(bed, "direct.test").status_code == 200
    assert newest_capture(bed["proxy"].store, before, sni="direct.test")["upstream"]["route"] == "direct"


def test_plain_http_is_tunnelled_too(bed, upstream_proxy):
    import httpx

    with httpx.Client(proxy=bed["proxy"].url("http"), timeout=20) as client:
        response = client.get(f"http://http.test:{bed['port']}/plain-chained")
    assert response.status_code == 200
    assert response.json()["http1"]["target"] == "/plain-chained"


@pytest.mark.parametrize(("name", "status", "words"), [
    ("badpass.test", 502, "407"),
    ("badsocks.test", 502, "upstream-proxy"),
    ("refused.test", 502, "upstream-proxy"),
    ("hanging.test", 504, "upstream-timeout"),
])
def test_upstream_proxy_failures_get_their_status(bed, name, status, words):
    started = time.monotonic()
    response = fetch(bed, name)
    assert response.status_code == status, response.text
    assert words in response.text + response.headers.get("x-mirror-error", "")
    assert time.monotonic() - started < 10           # no retry loop
    assert SECRET not in response.text and "wrong" not in response.text


def test_plain_http_failure_through_a_refusing_proxy(bed):
    import httpx

    with httpx.Client(proxy=bed["proxy"].url("http"), timeout=20) as client:
        response = client.get(f"http://badpass.test:{bed['port']}/")
    assert response.status_code == 502
    assert response.headers["x-mirror-error"] == "upstream-proxy"
    assert "407" in response.text


def test_an_https_upstream_proxy_carries_tls_and_plain_http(tls_chain, tls_upstream_proxy):
    direct = fetch(tls_chain, "echo.test", "safari", direct=True).json()
    before = last_id(tls_chain["proxy"].store)
    response = fetch(tls_chain, "echo.test", "safari")
    assert response.status_code == 200, response.text[:300]
    capture = newest_capture(tls_chain["proxy"].store, before)
    assert capture["upstream"]["route"] == f"via https://127.0.0.1:{tls_upstream_proxy['port']}"
    compare("curl_cffi safari", "mirror + https proxy", direct, response.json(), capture)
    # the record's hello is the one to the origin, not mirror's own hello to the proxy
    sent = capture["emitted"]["tls"]["hello"]
    seen = response.json()["tls"]
    assert sent["measured"] is True and sent["exact"] is True and sent["differences"] == []
    assert (sent["ja4_o"], sent["ja3"]) == (seen["ja4_o"], seen["ja3_full"])
    import httpx

    with httpx.Client(proxy=tls_chain["proxy"].url("http"), timeout=20) as client:
        plain = client.get(f"http://echo.test:{tls_chain['port']}/plain-over-tls-proxy")
    assert plain.status_code == 200 and plain.json()["http1"]["target"] == "/plain-over-tls-proxy"
    assert SECRET not in tls_chain["proxy"].log_text()


def test_credentials_appear_nowhere(bed):
    fetch(bed, "socks.test")
    fetch(bed, "badpass.test")
    time.sleep(0.5)
    assert SECRET not in bed["proxy"].log_text()
    assert "".join(bed["proxy"].lines).find(SECRET) < 0
    for path in bed["proxy"].store.parent.glob("captures.sqlite3*"):
        assert SECRET.encode() not in path.read_bytes()
        assert b"alice:wrong" not in path.read_bytes()

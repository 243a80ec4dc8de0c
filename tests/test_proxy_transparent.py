"""Transparent mode on a real gateway: client, gateway and server namespaces, iptables REDIRECT.

The client does not know about the proxy: it connects to the server's address, the gateway
redirects port 443 to `mirror run --mode transparent`, which reads SO_ORIGINAL_DST (IPv4 and
IPv6) and mirrors the client upstream. The echo server in the server namespace judges: the same
fields as the loopback fidelity tests must be equal direct (the gateway only routing) and
through the proxy, and tshark on the server's interface must see, for the proxied connection,
the JA3 the echo server reports.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from fidelity_helpers import compare, last_id, newest_capture
from netbed import NetBed, netbed_module_fixture  # noqa: F401
from proxyrun import transparent_proxy_in

from mirror.check.clients import CHROMIUM_FLAGS

pytestmark = pytest.mark.root

PROXY_PORT = 8081
CURL_CFFI_FETCH = """
import json, sys
from curl_cffi import requests
family, ca, url = sys.argv[1:4]
with requests.Session(impersonate=family, verify=ca, timeout=20) as s:
    r = s.get(url)
print(json.dumps(r.json()))
"""
HTTPX_FETCH = """
import json, ssl, sys
import httpx
ca, url = sys.argv[1:3]
with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=20) as c:
    print(json.dumps(c.get(url).json()))
"""


@pytest.fixture(scope="module")
def gateway(netbed_module):
    bed = netbed_module
    bed.add_host("echo.test", NetBed.SERVER_IP)
    bed.add_host("echo6.test", NetBed.SERVER_IP6)
    bed.start_echo()
    bed.start_echo(host=NetBed.SERVER_IP6)
    _, store, proxy_ca = transparent_proxy_in(bed, PROXY_PORT)
    return {"bed": bed, "echo_ca": bed.workdir / "echo-ca" / "ca.pem", "proxy_ca": proxy_ca,
            "store": store}


def run_client(gateway, client: str, url: str, ca) -> dict:
    bed = gateway["bed"]
    if client == "chromium":
        out = bed.check_output("client", [
            shutil.which("chromium"), *CHROMIUM_FLAGS,
            f"--user-data-dir={bed.workdir / 'chromium'}", "--dump-dom", url], timeout=90)
        match = re.search(r"<pre[^>]*>(.*)</pre>", out, re.S)
        assert match, f"chromium printed no JSON page: {out[:300]!r}"
        return json.loads(html.unescape(match.group(1)))
    if client == "curl":
        return json.loads(bed.check_output("client", ["curl", "-sS", "--http2", "--cacert", str(ca),
                                                      "-H", "X-Mixed-Case: 1", url], timeout=60))
    if client == "httpx":
        return json.loads(bed.check_python("client", ["-c", HTTPX_FETCH, str(ca), url], timeout=60))
    return json.loads(bed.check_python("client", ["-c", CURL_CFFI_FETCH, client, str(ca), url],
                                       timeout=60))


def fetch(gateway, client: str, through_proxy: bool, host: str = "echo.test") -> dict:
    bed = gateway["bed"]
    url = f"https://{host}/transparent?client={client}"
    if not through_proxy:
        return run_client(gateway, client, url, gateway["echo_ca"])
    bed.redirect((443,), to_port=PROXY_PORT)
    try:
        return run_client(gateway, client, url, gateway["proxy_ca"])
    finally:
        bed.unredirect()


def tshark_ja3(pcap) -> list[str]:
    return subprocess.run(["tshark", "-r", str(pcap), "-Y", "tls.handshake.type == 1",
                           "-T", "fields", "-e", "tls.handshake.ja3_full"],
                          capture_output=True, text=True, timeout=60).stdout.split()


CLIENTS = [("chrome", "curl_cffi chrome"), ("firefox", "curl_cffi firefox"),
           ("safari", "curl_cffi safari"), ("edge", "curl_cffi edge"), ("tor", "curl_cffi tor"),
           ("chrome_android", "curl_cffi chrome_android"),
           ("safari_ios", "curl_cffi safari_ios"), ("chromium", "Chromium (headless)"),
           ("curl", "curl (system)"), ("httpx", "httpx")]


@pytest.mark.parametrize(("client", "label"), CLIENTS, ids=[c for c, _ in CLIENTS])
def test_transparent_gateway_mirrors_real_clients(gateway, client, label):
    if client == "chromium" and not shutil.which("chromium"):
        pytest.fail("chromium is not installed; .ci/run installs it")
    direct = fetch(gateway, client, False)
    before = last_id(gateway["store"])
    with gateway["bed"].capture("server", NetBed.SERVER_IFACE, "tcp port 443") as pcap:
        proxied = fetch(gateway, client, True)
    capture = newest_capture(gateway["store"], before, path=f"/transparent?client={client}")
    assert capture["mode"] == "transparent"
    assert capture["destination"] == {"host": NetBed.SERVER_IP, "port": 443,
                                      "source": "so_original_dst"}
    assert capture["client"]["addr"] == NetBed.CLIENT_IP
    compare(label, "transparent", direct, proxied, capture)
    # an independent observer on the server's wire: tshark's JA3 of the proxied hello
    seen = tshark_ja3(pcap)
    assert seen, "tshark saw no ClientHello on the server's interface"
    assert seen[-1] == proxied["tls"]["ja3_full"]


def test_transparent_gateway_over_ipv6(gateway):
    direct = fetch(gateway, "firefox", False, host="echo6.test")
    before = last_id(gateway["store"])
    proxied = fetch(gateway, "firefox", True, host="echo6.test")
    capture = newest_capture(gateway["store"], before, sni="echo6.test")
    assert capture["destination"] == {"host": NetBed.SERVER_IP6, "port": 443,
                                      "source": "so_original_dst"}
    assert capture["client"]["addr"] == NetBed.CLIENT_IP6
    assert capture["tcp"]["ip_version"] == 6
    compare("curl_cffi firefox (IPv6)", "transparent", direct, proxied, capture)


def test_transparent_gateway_records_the_clients_syn(gateway):
    before = last_id(gateway["store"])
    fetch(gateway, "firefox", True)
    tcp = newest_capture(gateway["store"], before)["tcp"]
    # the kernel saves the SYN as delivered, after REDIRECT rewrote its destination port
    assert tcp["src"] == NetBed.CLIENT_IP and tcp["dport"] == PROXY_PORT
    assert tcp["ttl"] == 64   # as sent: REDIRECT delivers it locally, before any forwarding
    assert re.fullmatch(r"\d+_[\d-]+_\d+_\d+", tcp["ja4t"])

"""Transparent mode on a real gateway: client, gateway and server namespaces, iptables REDIRECT.

The client does not know about the proxy: it connects to the server's address, the gateway
redirects port 443 to `mirror run --mode transparent`, which reads SO_ORIGINAL_DST and mirrors
the client upstream. The echo server in the server namespace judges: the same fields as the
loopback fidelity tests must be equal direct (gateway only routing) and through the proxy, and
a tshark capture on the server's interface must show the same JA3 for the proxied connection
as the client's own hello.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time

import pytest
from netbed import NetBed, netbed_module_fixture  # noqa: F401
from test_proxy_fidelity import compare

pytestmark = pytest.mark.root

FETCH = """
import json, sys
from curl_cffi import requests
family, ca = sys.argv[1], sys.argv[2]
with requests.Session(impersonate=family, verify=ca, timeout=20) as s:
    r = s.get("https://echo.test/transparent?client=" + family)
print(json.dumps(r.json()))
"""


@pytest.fixture(scope="module")
def gateway(netbed_module):
    bed = netbed_module
    bed.add_host("echo.test", NetBed.SERVER_IP)
    bed.start_echo()
    echo_ca = bed.workdir / "echo-ca" / "ca.pem"
    store = bed.workdir / "captures.sqlite3"
    proxy = bed.python("gateway", ["-m", "mirror", "run", "-v", "--mode", "transparent",
                                   "--listen", "0.0.0.0:8081", "--ca-dir", str(bed.workdir / "proxy-ca"),
                                   "--store", str(store), "--upstream-ca", str(echo_ca)],
                       stdout=subprocess.PIPE, stderr=open(bed.workdir / "proxy.log", "wb"), text=True)
    bed.wait_listening("gateway", 8081, proc=proxy)
    return {"bed": bed, "echo_ca": echo_ca, "proxy_ca": bed.workdir / "proxy-ca" / "ca.pem",
            "store": store}


def fetch(gateway, family: str, through_proxy: bool) -> dict:
    bed = gateway["bed"]
    if through_proxy:
        bed.redirect((443,), to_port=8081)
    try:
        ca = gateway["proxy_ca"] if through_proxy else gateway["echo_ca"]
        out = bed.check_python("client", ["-c", FETCH, family, str(ca)], timeout=60)
    finally:
        if through_proxy:
            bed.unredirect()
    return json.loads(out)


def last_capture(store, after: int) -> dict:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                row = db.execute("SELECT id, record FROM captures WHERE id > ? ORDER BY id LIMIT 1",
                                 (after,)).fetchone()
            if row:
                return json.loads(row[1])
        time.sleep(0.1)
    raise AssertionError("no capture recorded")


def max_id(store) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0]


@pytest.mark.parametrize("family", ["chrome", "firefox", "safari", "edge", "tor", "chrome_android",
                                    "safari_ios"])
def test_transparent_gateway_mirrors_curl_cffi_targets(gateway, family):
    direct = fetch(gateway, family, False)
    before = max_id(gateway["store"])
    bed = gateway["bed"]
    with bed.capture("server", NetBed.SERVER_IFACE, "tcp port 443") as pcap:
        proxied = fetch(gateway, family, True)
    capture = last_capture(gateway["store"], before)
    assert capture["mode"] == "transparent"
    assert capture["destination"] == {"host": NetBed.SERVER_IP, "port": 443,
                                      "source": "so_original_dst"}
    assert capture["client"]["addr"] == NetBed.CLIENT_IP
    compare(f"curl_cffi {family}", "transparent", direct, proxied, capture)
    # an independent observer on the server's wire: tshark's JA3 of the proxied hello
    if shutil.which("tshark"):
        out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tls.handshake.type == 1",
                              "-T", "fields", "-e", "tls.handshake.ja3_full"],
                             capture_output=True, text=True, timeout=60).stdout.split()
        assert out, "tshark saw no ClientHello on the server's interface"
        assert out[-1] == proxied["tls"]["ja3_full"]


def test_transparent_gateway_records_the_clients_syn(gateway):
    before = max_id(gateway["store"])
    fetch(gateway, "firefox", True)
    capture = last_capture(gateway["store"], before)
    tcp = capture["tcp"]
    # the kernel saves the SYN as delivered, after REDIRECT rewrote its destination port
    assert tcp["src"] == NetBed.CLIENT_IP and tcp["dport"] == 8081
    assert tcp["ttl"] == 64   # as sent: REDIRECT delivers it locally, before any forwarding
    assert re.fullmatch(r"\d+_[\d-]+_\d+_\d+", tcp["ja4t"])

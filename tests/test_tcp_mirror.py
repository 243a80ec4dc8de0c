"""TCP SYN mirroring, judged on the server's wire: client, gateway and server namespaces.

Clients made to look like three operating systems (namespace sysctls; for macOS's option
layout, SYNs rewritten in the client namespace to a layout crafted with scapy). For each, the
SYN that reaches the server's interface is captured twice — the gateway only routing, then the
gateway running `mirror run --mode transparent` behind REDIRECT — and JA4T, TTL and the p0f
signature (the p0f binary reading the capture, and mirror's own) must be equal. A 10 MiB
download through the rewritten connection must arrive byte-exact.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from fidelity_helpers import last_id, newest_capture
from netbed import NetBed, netbed_module_fixture  # noqa: F401
from proxyrun import transparent_proxy_in
from scapy.all import IP, TCP, IPv6, rdpcap

pytestmark = pytest.mark.root

PROXY_PORT = 8081
FETCH = """
import json, sys
from curl_cffi import requests
with requests.Session(impersonate="firefox", verify=sys.argv[1], timeout=30) as s:
    r = s.get(sys.argv[2])
print(json.dumps({"status": r.status_code, "sha256": __import__("hashlib").sha256(r.content).hexdigest(),
                  "length": len(r.content), "json": r.json() if sys.argv[3] == "json" else None}))
"""
MACOS_OPTIONS = ('[("MSS",1460),("NOP",None),("WScale",6),("NOP",None),("NOP",None),'
                 '("Timestamp",(1,0)),("SAckOK",b""),("EOL",None)]')
PROFILES = {
    "linux": {"sysctls": {}, "disguise": None},
    "windows": {"sysctls": {"net.ipv4.ip_default_ttl": "128", "net.ipv4.tcp_timestamps": "0",
                            "net.ipv4.tcp_rmem": "4096 131072 8388608"}, "disguise": None},
    # window scale 6: a route window clamp below 2^22 (rmem_max is not the namespace's to change)
    "macos": {"sysctls": {}, "route_window": 4194303,
              "disguise": ("65535", "64", MACOS_OPTIONS)},
}
EXPECT = {  # what each disguise must produce at the client, so the test checks its own set-up
    "windows": {"ttl": 128, "window": 64240, "wscale": 8, "timestamps": False},
    "macos": {"ttl": 64, "window": 65535, "wscale": 6, "kinds": [2, 1, 3, 1, 1, 8, 4, 0, 0]},
}
_P0F_HEADER = re.compile(r"^\.-\[ (\S+)/(\d+) -> (\S+)/(\d+) \(syn\) \]-")


@pytest.fixture(scope="module")
def gateway(netbed_module):
    bed = netbed_module
    bed.add_host("echo.test", NetBed.SERVER_IP)
    bed.start_echo()
    bed.add_host("origin.test", NetBed.SERVER_IP)
    origin = bed.python("server", ["tests/origin.py", "--port", "8443", "--ca-dir",
                                   str(bed.workdir / "echo-ca"), "--host", "0.0.0.0"],
                        stdout=subprocess.PIPE, text=True)
    assert "origin listening" in origin.stdout.readline()
    proxy, store, proxy_ca = transparent_proxy_in(bed, PROXY_PORT)
    banner = "".join(proxy.stdout.readline() for _ in range(3))
    assert "(socket options and SYN rewriting); exact:" in banner, banner
    return {"bed": bed, "echo_ca": bed.workdir / "echo-ca" / "ca.pem", "proxy_ca": proxy_ca,
            "store": store, "log": bed.workdir / "proxy.log"}


@pytest.fixture
def profile(request, gateway):
    """Dress the client namespace as one OS for the test, and undress it afterwards."""
    bed = gateway["bed"]
    spec = PROFILES[request.param]
    saved = {key: bed.sysctl("client", key) for key in spec["sysctls"]}
    for key, value in spec["sysctls"].items():
        bed.sysctl("client", key, value)
    route = ["ip", "route", "change", "default", "via", NetBed.GATEWAY_CLIENT_IP]
    if spec.get("route_window"):
        bed.check_output("client", [*route, "window", str(spec["route_window"])])
    disguise = None
    if spec["disguise"]:
        disguise = bed.python("client", ["tests/syn_disguise.py", *spec["disguise"]],
                              stdout=subprocess.PIPE, text=True)
        assert disguise.stdout.readline().strip() == "ready"
    try:
        yield request.param
    finally:
        if disguise is not None:
            bed.stop(disguise)
        for key, value in saved.items():
            bed.sysctl("client", key, value)
        if spec.get("route_window"):
            bed.check_output("client", route)


def fetch(gateway, path: str, through_proxy: bool, kind: str = "json",
          host: str = "echo.test") -> dict:
    bed = gateway["bed"]
    ca = gateway["proxy_ca"] if through_proxy else gateway["echo_ca"]
    if through_proxy:
        bed.redirect((443, 8443), to_port=PROXY_PORT)
    try:
        out = bed.check_python("client", ["-c", FETCH, str(ca), f"https://{host}{path}", kind],
                               timeout=120)
    finally:
        if through_proxy:
            bed.unredirect()
    return json.loads(out)


def server_syns(gateway, through_proxy: bool) -> tuple[dict, str]:
    """Fetch once with a capture on the server's interface; (mirror's view, p0f's raw_sig)."""
    bed = gateway["bed"]
    with bed.capture("server", NetBed.SERVER_IFACE, "tcp[tcpflags] == tcp-syn and dst port 443") as pcap:
        result = fetch(gateway, "/syn", through_proxy)
    assert result["status"] == 200
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "mirror", "fingerprint", str(pcap), "--json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    assert len(report) == 1, report
    syns = [p for p in rdpcap(str(pcap)) if (IP in p or IPv6 in p) and TCP in p]
    assert syns
    report[0]["ttl"] = syns[0][IP].ttl if IP in syns[0] else syns[0][IPv6].hlim
    command = [shutil.which("p0f") or "/usr/sbin/p0f", "-r", str(pcap)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    sigs = [line.split("=", 1)[1].strip() for line in out.splitlines() if line.startswith("| raw_sig")]
    assert sigs, out
    return report[0], sigs[0]


@pytest.mark.parametrize("profile", list(PROFILES), indirect=True)
def test_the_server_sees_the_clients_syn_through_the_proxy(gateway, profile):
    direct, direct_p0f = server_syns(gateway, False)
    before = last_id(gateway["store"])
    proxied, proxied_p0f = server_syns(gateway, True)
    capture = newest_capture(gateway["store"], before)
    client = capture["tcp"]
    for key, value in EXPECT.get(profile, {}).items():     # the disguise itself worked
        seen = {"ttl": client["ttl"], "window": client["window"], "wscale": client["wscale"],
                "timestamps": client["timestamps"] is not None, "kinds": client["option_kinds"]}
        assert seen[key] == value, (profile, key, seen)
    assert proxied["ja4t"] == direct["ja4t"] == client["ja4t"]
    assert proxied["ttl"] == direct["ttl"] == client["ttl"] - 1
    assert proxied_p0f == direct_p0f
    assert proxied["p0f"] == direct["p0f"]
    fidelity = capture["emitted"]["fidelity"]
    assert all(fidelity[f"tcp.{name}"]["status"] == "exact"
               for name in ("ttl", "window", "mss", "wscale", "option_layout")), fidelity
    assert capture["emitted"]["tcp"]["syn"]["ja4t"] == client["ja4t"]


@pytest.mark.parametrize("profile", ["macos"], indirect=True)
def test_a_rewritten_connection_carries_10_mib_intact(gateway, profile):
    size = 10 * 1024 * 1024
    direct = fetch(gateway, f"/bytes/{size}", False, kind="raw", host="origin.test:8443")
    before = last_id(gateway["store"])
    proxied = fetch(gateway, f"/bytes/{size}", True, kind="raw", host="origin.test:8443")
    assert direct["status"] == proxied["status"] == 200
    assert proxied["length"] == size and proxied["sha256"] == direct["sha256"]
    capture = newest_capture(gateway["store"], before, sni="origin.test")
    assert capture["emitted"]["fidelity"]["tcp.option_layout"]["status"] == "exact"

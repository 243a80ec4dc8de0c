"""`mirror gateway up|down` in a real gateway namespace, and what it is for.

- up then down leaves the rule set (iptables, ip6tables, ip rules, routing tables) exactly as it
  was, with a rule of someone else's in place all along; up twice equals up once;
- REDIRECT set up by `mirror gateway up` brings the client's connections to the proxy;
- TPROXY with --spoof-source: the server sees the client's own address, replies flow, and the
  gateway's own address never appears on the server's wire.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from netbed import NetBed, netbed_fixture, netbed_module_fixture  # noqa: F401
from scapy.all import IP, rdpcap
from test_proxy_fidelity import last_id, newest_capture

pytestmark = pytest.mark.root

FETCH = """
import json, sys
from curl_cffi import requests
with requests.Session(impersonate="chrome", verify=sys.argv[1], timeout=30) as s:
    print(json.dumps(s.get("https://echo.test/gateway").json()))
"""


def _rules_only(save: str) -> str:
    """iptables-save output without comments, counters, and tables that hold no rule (with
    the nf_tables backend a table, once used, stays listed empty: it holds nothing)."""
    tables, current = [], []
    for line in save.splitlines():
        if line.startswith("#"):
            continue
        current.append(re.sub(r"\[\d+:\d+\]", "", line))
        if line == "COMMIT":
            if any(entry.startswith(("-", ":MIRROR")) for entry in current):
                tables.append("\n".join(current))
            current = []
    return "\n".join(tables)


def rule_set(bed) -> str:
    """Everything `mirror gateway` may touch in the gateway namespace."""
    parts = [_rules_only(bed.check_output("gateway", [tool])) for tool in ("iptables-save",
                                                                            "ip6tables-save")]
    for argv in (["ip", "-4", "rule"], ["ip", "-6", "rule"],
                 ["ip", "-4", "route", "show", "table", "all"],
                 ["ip", "-6", "route", "show", "table", "all"]):
        parts.append(bed.check_output("gateway", argv))
    return "\n---\n".join(parts)


def gateway_cli(bed, *args: str) -> None:
    bed.check_python("gateway", ["-m", "mirror", "gateway", *args])


@pytest.mark.parametrize("mode", ["redirect", "tproxy"])
def test_up_then_down_leaves_the_rule_set_as_it_was(netbed, mode):
    bed = netbed
    bed.check_output("gateway", ["iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp",
                                 "--dport", "53", "-j", "ACCEPT"])          # someone else's
    before = rule_set(bed)
    args = ["--mode", mode, "--in", NetBed.GW_CLIENT_IFACE, "--ports", "80,443"]
    gateway_cli(bed, "up", *args)
    once = rule_set(bed)
    assert "MIRROR_GW" in once and once != before
    if mode == "tproxy":
        assert "lookup 7707" in once and "local default dev lo table 7707" in once
    gateway_cli(bed, "up", *args)
    assert rule_set(bed) == once                                             # idempotent
    gateway_cli(bed, "down", "--mode", mode)
    assert rule_set(bed) == before
    assert "--dport 53 -j ACCEPT" in rule_set(bed)


def test_print_shows_the_commands_without_running_them(netbed):
    before = rule_set(netbed)
    out = netbed.check_python("gateway", ["-m", "mirror", "gateway", "up", "--print",
                                          "--ports", "443", "--to-port", "9000"])
    assert "iptables -w 5 -t nat -A MIRROR_GW -p tcp -m multiport --dports 443 -j REDIRECT " \
           "--to-ports 9000" in out
    assert rule_set(netbed) == before


def start_proxy(bed, *extra: str):
    echo_ca = bed.workdir / "echo-ca" / "ca.pem"
    with open(bed.workdir / "proxy.log", "wb") as log:
        proxy = bed.python("gateway", [
            "-m", "mirror", "run", "-v", "--mode", "transparent", "--listen", "0.0.0.0:8081",
            "--ca-dir", str(bed.workdir / "proxy-ca"), "--store", str(bed.workdir / "c.sqlite3"),
            "--upstream-ca", str(echo_ca), *extra], stdout=subprocess.PIPE, stderr=log, text=True)
    bed.wait_listening("gateway", 8081, proc=proxy)
    return proxy


def fetch(bed) -> dict:
    ca = bed.workdir / "proxy-ca" / "ca.pem"
    return json.loads(bed.check_python("client", ["-c", FETCH, str(ca)], timeout=60))


def test_redirect_set_up_by_mirror_gateway_reaches_the_proxy(netbed):
    bed = netbed
    bed.add_host("echo.test", NetBed.SERVER_IP)
    bed.start_echo()
    start_proxy(bed)
    gateway_cli(bed, "up", "--mode", "redirect", "--in", NetBed.GW_CLIENT_IFACE, "--ports", "443")
    store = bed.workdir / "c.sqlite3"
    before = last_id(store)
    report = fetch(bed)
    capture = newest_capture(store, before)
    assert capture["destination"]["source"] == "so_original_dst"
    assert report["client"]["address"] == NetBed.GATEWAY_SERVER_IP      # the proxy connected
    gateway_cli(bed, "down")


def test_tproxy_with_spoofed_source_shows_the_server_the_clients_address(netbed):
    bed = netbed
    bed.add_host("echo.test", NetBed.SERVER_IP)
    bed.start_echo()
    start_proxy(bed, "--tproxy", "--spoof-source")
    gateway_cli(bed, "up", "--mode", "tproxy", "--in", NetBed.GW_CLIENT_IFACE, "--ports", "443")
    store = bed.workdir / "c.sqlite3"
    before = last_id(store)
    with bed.capture("server", NetBed.SERVER_IFACE, "tcp port 443") as pcap:
        report = fetch(bed)
    capture = newest_capture(store, before)
    assert capture["destination"] == {"host": NetBed.SERVER_IP, "port": 443, "source": "tproxy"}
    assert capture["protocol"] == "tls" and capture["alpn"]["upstream"] == "h2"
    assert report["client"]["address"] == NetBed.CLIENT_IP              # the server sees the client
    sources = {p[IP].src for p in rdpcap(str(pcap)) if IP in p}
    assert NetBed.GATEWAY_SERVER_IP not in sources, sources              # no leak of the gateway
    assert sources == {NetBed.CLIENT_IP, NetBed.SERVER_IP}
    gateway_cli(bed, "down", "--mode", "tproxy")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

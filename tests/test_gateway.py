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
from fidelity_helpers import last_id, newest_capture
from netbed import CommandFailed, NetBed, netbed_fixture, netbed_module_fixture  # noqa: F401
from scapy.all import IP, rdpcap

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


# ------------------------------------------------------------------ mirror gateway check
def gateway_check(bed, *args: str, path: str | None = None) -> tuple[int, list[str]]:
    """`mirror gateway check` in the gateway namespace (with ``path`` as its PATH): (exit
    status, its lines)."""
    argv = [sys.executable, "-m", "mirror", "gateway", "check", *args]
    if path is not None:
        argv = ["env", f"PATH={path}", *argv]
    try:
        out = bed.check_output("gateway", argv, env=bed.python_env())
        return 0, out.splitlines()
    except CommandFailed as failed:
        assert "Traceback" not in failed.stderr, failed.stderr
        return failed.returncode, failed.stdout.splitlines()


def apply_fix(bed, line: str) -> None:
    """Run the `sysctl -w ...` a problem line gives as its fix, in the gateway namespace."""
    fix = line.split("; fix: ", 1)[1].split(" (")[0]
    assert fix.startswith("sysctl -w "), line
    bed.check_output("gateway", fix.split())


def test_check_names_each_problem_with_a_fix_that_works(netbed):
    bed = netbed
    status, lines = gateway_check(bed, "--mode", "tproxy")
    assert status == 0 and lines == ["ok: nothing here stops full mirroring (tproxy, port 8081; "
                                     "TCP SYNs rewritten, TLS and HTTP mirrored)"], lines

    bed.sysctl("gateway", "net.ipv4.ip_forward", "0")
    bed.sysctl("gateway", f"net.ipv4.conf.{NetBed.GW_SERVER_IFACE}.rp_filter", "1")
    status, lines = gateway_check(bed, "--mode", "tproxy")
    assert status == 1 and len(lines) == 2, lines
    assert lines[0] == ("IPv4 forwarding is off (the clients' other traffic is not routed); "
                        "fix: sysctl -w net.ipv4.ip_forward=1")
    assert lines[1].startswith(f"strict reverse-path filtering (rp_filter=1) on "
                               f"{NetBed.GW_SERVER_IFACE} drops TPROXY'd"), lines[1]
    assert gateway_check(bed, "--mode", "redirect")[1] == lines[:1]    # rp_filter: TPROXY's only
    for line in lines:
        apply_fix(bed, line)
    assert gateway_check(bed, "--mode", "tproxy")[0] == 0

    holder = bed.python("gateway", ["-c", "import socket, time\ns = socket.socket()\n"
                                    "s.bind(('0.0.0.0', 8081))\ns.listen()\nprint('ready', "
                                    "flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE,
                        text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        status, lines = gateway_check(bed)
        assert status == 1 and len(lines) == 1, lines
        assert re.match(rf"port 8081 is in use by python\S* pid {holder.pid} \(Address already "
                        r"in use\); fix: stop what holds it", lines[0]), lines
        assert "another port (--to-port N" in lines[0]
        assert gateway_check(bed, "--to-port", "8082")[0] == 0
    finally:
        bed.stop(holder)

    status, lines = gateway_check(bed, "--mode", "tproxy", path=str(bed.workdir))
    assert status == 1 and lines == [
        "iptables not found (gateway rules and SYN rewriting use it); fix: install it "
        "(Debian: apt-get install iptables)",
        "ip6tables not found (gateway rules and SYN rewriting use it); fix: install it "
        "(Debian: apt-get install iptables)",
        "ip not found (TPROXY's policy routing uses it); fix: install it "
        "(Debian: apt-get install iproute2)"], lines
    assert "MIRROR_CHECK" not in rule_set(bed)                          # its probes are gone


def test_check_says_not_root_first():
    done = subprocess.run(["unshare", "--user", sys.executable, "-m", "mirror", "gateway",
                           "check", "--to-port", "18081"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.splitlines()[0] == (
        "not root: gateway rules, SYN rewriting and TPROXY need root (kernel support was not "
        "checked); fix: run `mirror gateway check`, `up` and `mirror run` as root")


# ------------------------------------------------------------------ QUIC: block or pass
UDP_SERVER = """
import select, socket
socks = []
for port in (443, 4433):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    socks.append(s)
print("ready", flush=True)
for _ in range(1200):
    for s in select.select(socks, [], [], 0.1)[0]:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
"""
UDP_CLIENT = """
import socket, sys
seen = []
for port in (443, 4433):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.sendto(b"quic?", (sys.argv[1], port))
    try:
        s.recvfrom(2048)
        seen.append(f"{port}:answered")
    except TimeoutError:
        seen.append(f"{port}:silent")
print(" ".join(seen))
"""


def udp_probe(bed) -> str:
    return bed.check_python("client", ["-c", UDP_CLIENT, NetBed.SERVER_IP]).strip()


def test_quic_is_blocked_by_default_passed_when_asked_and_down_removes_the_block(netbed):
    bed = netbed
    server = bed.python("server", ["-c", UDP_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        before = rule_set(bed)
        assert udp_probe(bed) == "443:answered 4433:answered"
        args = ["--in", NetBed.GW_CLIENT_IFACE, "--ports", "443"]
        said = bed.check_python("gateway", ["-m", "mirror", "gateway", "up", *args]).strip()
        assert said == (f"QUIC (UDP 443) from {NetBed.GW_CLIENT_IFACE}: blocked, so browsers "
                        "fall back to TCP, where they are mirrored (--quic pass lets it "
                        "through unmirrored)")
        assert udp_probe(bed) == "443:silent 4433:answered"
        said = bed.check_python("gateway", ["-m", "mirror", "gateway", "up", *args, "--quic",
                                            "pass"]).strip()
        assert said.startswith(f"QUIC (UDP 443) from {NetBed.GW_CLIENT_IFACE}: passed through, "
                               "NOT mirrored"), said
        assert udp_probe(bed) == "443:answered 4433:answered"
        gateway_cli(bed, "up", *args, "--quic", "block")
        assert udp_probe(bed) == "443:silent 4433:answered"
        gateway_cli(bed, "down")
        assert udp_probe(bed) == "443:answered 4433:answered"
        assert rule_set(bed) == before
    finally:
        bed.stop(server)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

"""The namespace test bed itself: routing through the gateway, TLS to the echo server from a
real client, REDIRECT with SO_ORIGINAL_DST, packet capture, and teardown that always happens.

Needs root and `ip netns` (skipped otherwise). Every check is on real traffic between the
bed's namespaces: what the echo server reports, what a gateway listener reads from the
kernel, what tcpdump saw on the server's link.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netbed import (
    NETNS_DIR,
    PREFIX,
    NetBed,
    cleanup_stale,
    list_namespaces,
    netbed_fixture,  # noqa: F401  (the `netbed` fixture)
    netbed_module_fixture,  # noqa: F401  (the `netbed_module` fixture)
)

pytestmark = pytest.mark.root

# A cleartext HTTP/1.1 GET to the echo server over a socket whose IP TTL / hop limit is
# argv[3] ("default" = the namespace's own); prints the echo's JSON report.
PLAIN_GET = r"""
import http.client, socket, sys
host, port, ttl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
if ttl != "default":
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(ttl))
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, int(ttl))
sock.settimeout(5)
sock.connect((host, port))
conn = http.client.HTTPConnection(host, port, timeout=5)
conn.sock = sock
conn.request("GET", "/", headers={"Connection": "close"})
print(conn.getresponse().read().decode())
"""

# curl_cffi impersonating Chrome, resolving echo.test to the server, trusting the echo's CA.
CHROME_FETCH = r"""
import sys
from curl_cffi import requests
from curl_cffi.const import CurlOpt
response = requests.get("https://echo.test/", impersonate="chrome", verify=sys.argv[2],
                        timeout=10, curl_options={CurlOpt.RESOLVE: [f"echo.test:443:{sys.argv[1]}"]})
print(response.text)
"""

# A listener in the gateway answering every connection with its original destination
# (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST, both option 80) and the peer's address.
ORIGINAL_DST_SERVER = r"""
import socket, struct, sys
listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
listener.bind(("::", int(sys.argv[1])))
listener.listen(16)
while True:
    conn, peer = listener.accept()
    with conn:
        mapped = peer[0].startswith("::ffff:")
        if mapped:
            raw = conn.getsockopt(socket.SOL_IP, 80, 16)
            port, addr = struct.unpack_from("!H4s", raw, 2)
            dst = f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
            src = peer[0][7:]
        else:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)
            port, addr = struct.unpack_from("!H", raw, 2)[0], raw[8:24]
            dst = f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"
            src = peer[0]
        conn.sendall(f"{dst} {src}\n".encode())
"""

# Connect, print the first line the other side sends (or the error's name).
FIRST_LINE = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        print(data.split(b"\n")[0].decode().strip())
except OSError as error:
    print(type(error).__name__)
"""


def plain_get(bed: NetBed, host: str, port: int = 443, ttl: int | str = "default") -> dict:
    return json.loads(bed.check_python("client", ["-c", PLAIN_GET, host, port, ttl], timeout=15))


@pytest.fixture(scope="module")
def echo_bed(netbed_module):
    """The module's bed with the echo server listening on the server's port 443."""
    _, port = netbed_module.start_echo(port=443)
    assert port == 443
    return netbed_module


@pytest.fixture(scope="module")
def chrome_fetch(echo_bed):
    """One curl_cffi Chrome fetch of https://echo.test/, captured on the server's link."""
    ca = echo_bed.workdir / "echo-ca" / "ca.pem"
    with echo_bed.capture("server", NetBed.SERVER_IFACE, "tcp port 443") as pcap:
        out = echo_bed.check_python("client", ["-c", CHROME_FETCH, NetBed.SERVER_IP, ca], timeout=20)
    return json.loads(out), pcap


def test_client_reaches_server_through_the_gateway(echo_bed):
    default_ttl = int(echo_bed.sysctl("client", "net.ipv4.ip_default_ttl"))
    seen = plain_get(echo_bed, NetBed.SERVER_IP)
    assert seen["client"]["address"] == NetBed.CLIENT_IP
    assert (seen["tcp"]["src"], seen["tcp"]["dst"]) == (NetBed.CLIENT_IP, NetBed.SERVER_IP)
    assert seen["tcp"]["ttl"] == default_ttl - 1
    assert seen["tcp"]["mss"] == 1460  # a real 1500-byte link, not loopback's 65495
    # The TTL is the client's, decremented once: set on the socket, it moves with it.
    assert plain_get(echo_bed, NetBed.SERVER_IP, ttl=77)["tcp"]["ttl"] == 76
    # Both ends are in different subnets: without the gateway forwarding there is no path.
    echo_bed.sysctl("gateway", "net.ipv4.ip_forward", 0)
    try:
        assert connect(echo_bed, NetBed.SERVER_IP, 443) != "connected"
    finally:
        echo_bed.sysctl("gateway", "net.ipv4.ip_forward", 1)
    assert connect(echo_bed, NetBed.SERVER_IP, 443) == "connected"


def connect(bed: NetBed, host: str, port: int) -> str:
    """"connected", or the name of the error a client connection got."""
    code = ("import socket, sys\n"
            "try:\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()\n"
            "    print('connected')\n"
            "except OSError as error:\n"
            "    print(type(error).__name__)\n")
    return bed.check_python("client", ["-c", code, host, port], timeout=10).strip()


def test_ipv6_is_routed_too(echo_bed):
    proc, _ = echo_bed.start_echo(host=NetBed.SERVER_IP6, port=443)
    try:
        seen = plain_get(echo_bed, NetBed.SERVER_IP6, ttl=50)
    finally:
        assert echo_bed.stop(proc) == 0
    assert seen["tcp"]["ip_version"] == 6
    assert seen["tcp"]["src"] == NetBed.CLIENT_IP6
    assert seen["tcp"]["ttl"] == 49  # hop limit, decremented by the gateway


def test_chrome_over_tls_to_the_echo(chrome_fetch):
    seen, _ = chrome_fetch
    assert seen["client"]["address"] == NetBed.CLIENT_IP
    assert seen["tls"]["sni"] == "echo.test"
    assert re.fullmatch(r"t13d\d{4}h2_[0-9a-f]{12}_[0-9a-f]{12}", seen["tls"]["ja4"])
    assert seen["tls"]["negotiated"]["alpn"] == "h2"
    assert seen["http_version"] == "HTTP/2"
    assert seen["tcp"]["ttl"] == 63


def test_capture_on_the_server_link_matches_the_echo(chrome_fetch):
    seen, pcap = chrome_fetch
    done = subprocess.run([sys.executable, "-m", "mirror", "fingerprint", str(pcap), "--json"],
                          capture_output=True, text=True, timeout=60, check=True)
    flows = [f for f in json.loads(done.stdout) if f["sport"] == seen["client"]["port"]]
    assert len(flows) == 1, done.stdout
    flow = flows[0]
    assert (flow["src"], flow["dst"], flow["dport"]) == (NetBed.CLIENT_IP, NetBed.SERVER_IP, 443)
    assert flow["ja4"] == seen["tls"]["ja4"]
    assert flow["ja3"] == seen["tls"]["ja3"]
    assert flow["ja4t"] == seen["tcp"]["ja4t"]  # the SYN on the wire is the one the kernel saved


def test_redirect_sends_the_client_to_the_gateway(echo_bed):
    port = 15001
    listener = echo_bed.python("gateway", ["-c", ORIGINAL_DST_SERVER, port],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        echo_bed.wait_listening("gateway", port, proc=listener, timeout=10)
        echo_bed.redirect(ports=(443, 80), to_port=port)
        try:
            first = echo_bed.check_python("client", ["-c", FIRST_LINE, NetBed.SERVER_IP, 443])
            assert first.strip() == f"{NetBed.SERVER_IP}:443 {NetBed.CLIENT_IP}"
            first = echo_bed.check_python("client", ["-c", FIRST_LINE, NetBed.SERVER_IP, 80])
            assert first.strip() == f"{NetBed.SERVER_IP}:80 {NetBed.CLIENT_IP}"
            first = echo_bed.check_python("client", ["-c", FIRST_LINE, NetBed.SERVER_IP6, 443])
            assert first.strip() == f"[{NetBed.SERVER_IP6}]:443 {NetBed.CLIENT_IP6}"
            # Ports not listed pass through to the server (nothing listens there: refused).
            first = echo_bed.check_python("client", ["-c", FIRST_LINE, NetBed.SERVER_IP, 8443])
            assert first.strip() == "ConnectionRefusedError"
        finally:
            echo_bed.unredirect()
        # Without the rules the same connection reaches the echo server again.
        first = echo_bed.check_python("client", ["-c", FIRST_LINE, NetBed.SERVER_IP, 443])
        assert first.strip() == "HTTP/1.1 200 OK"
        rules = echo_bed.check_output("gateway", ["iptables", "-w", "5", "-t", "nat", "-S", "PREROUTING"])
        assert "REDIRECT" not in rules
    finally:
        echo_bed.stop(listener)


def test_wait_listening_is_bounded(echo_bed):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        echo_bed.wait_listening("server", 9, timeout=0.3)
    assert time.monotonic() - start < 2
    assert 443 in echo_bed.listening_ports("server")


def netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return [int(p) for p in out.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except FileNotFoundError:
        return ""


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_teardown_happens_even_when_the_body_raises(netbed, tmp_path, error):
    # netbed: proves two beds coexist (distinct names, same addresses) and unique naming.
    other = NetBed(workdir=tmp_path / "other")
    with pytest.raises(error), other as bed:
        assert set(bed.ns.values()).isdisjoint(netbed.ns.values())
        assert set(bed.ns.values()) <= set(list_namespaces())
        bed.run("server", ["sleep", "300"])
        # A process that left the bed's session: only the namespace still ties it to us.
        bed.run("server", ["sh", "-c", "setsid sleep 301 & wait"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            inside = {pid: cmdline(pid) for pid in netns_pids(bed.ns["server"])}
            if {"sleep 300", "sleep 301"} <= set(inside.values()):
                break
            time.sleep(0.02)
        assert {"sleep 300", "sleep 301"} <= set(inside.values())
        raise error("boom")
    assert not any(name.startswith(other.name) for name in list_namespaces())
    assert all(is_gone(pid) for pid in inside)
    # The fixture's bed is untouched by the other's teardown.
    assert set(netbed.ns.values()) <= set(list_namespaces())


def test_cleanup_stale_removes_only_dead_runs(netbed):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}-0dead0-client"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        removed = cleanup_stale()
        assert stale in removed
        assert not (NETNS_DIR / stale).exists()
        assert set(netbed.ns.values()) <= set(list_namespaces())  # ours: alive, kept
        with pytest.raises(ValueError):
            cleanup_stale(prefix="")
    finally:
        if (NETNS_DIR / stale).exists():
            subprocess.run(["ip", "netns", "delete", stale], check=False, timeout=10)


def test_no_host_side_leftovers(netbed):
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
    assert "gw-client" not in host_links and "gw-server" not in host_links
    assert os.path.exists(NETNS_DIR / netbed.ns["gateway"])

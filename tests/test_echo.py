"""The echo server against real clients, judged by tshark reading the same connections.

Clients: curl_cffi impersonating chrome, firefox and safari (h2 and HTTP/1.1), the system
curl, and Debian's headless Chromium. For every connection, what the echo server reports (JA3
string, extension order, ALPN, SNI) must equal what tshark decodes from a loopback capture of
that connection, matched by the client's port.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import running_echo

from mirror.check.clients import CHROMIUM_FLAGS

NAME = "echo.test"


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    with running_echo(tmp_path_factory.mktemp("echo-ca")) as server:
        yield server


class Capture:
    """tcpdump on loopback for one port, stopped and decoded by tshark on demand."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-s", "0", "-w", str(path), f"tcp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line or not line:
                break
        time.sleep(0.2)

    def stop(self) -> None:
        time.sleep(0.5)  # let the last packets reach the file before tcpdump exits
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)

    def hellos(self) -> dict[int, list[dict]]:
        """Per client port, in capture order: tshark's JA3 string, extension types in order,
        ALPN list, SNI. (A list: the kernel may give a later client a port that an earlier
        connection, now in TIME_WAIT, used.)"""
        out = subprocess.run(
            ["tshark", "-r", str(self.path), "-Y", "tls.handshake.type == 1", "-T", "json",
             "-e", "tcp.srcport", "-e", "tls.handshake.ja3_full", "-e", "tls.handshake.extension.type",
             "-e", "tls.handshake.extensions_alpn_str", "-e", "tls.handshake.extensions_server_name"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
        seen = {}
        for packet in json.loads(out or "[]"):
            layers = packet["_source"]["layers"]
            port = int(layers["tcp.srcport"][0])
            seen.setdefault(port, []).append({
                "ja3_full": layers["tls.handshake.ja3_full"][0],
                "extensions": [int(t) for t in layers.get("tls.handshake.extension.type", [])],
                "alpn": layers.get("tls.handshake.extensions_alpn_str", []),
                "sni": layers.get("tls.handshake.extensions_server_name", [None])[0],
            })
        return seen

    def p0f_syns(self) -> dict[int, list[str]]:
        """Per client port: the raw_sigs the p0f binary prints for its SYNs."""
        out = subprocess.run(["p0f", "-r", str(self.path)], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        seen, port = {}, None
        for line in out.splitlines():
            header = re.match(r"\.-\[ \S+/(\d+) -> \S+ \(syn\) \]-", line)
            if header:
                port = int(header.group(1))
            elif port is not None and "raw_sig" in line:
                seen.setdefault(port, []).append(line.split("=", 1)[1].strip())
                port = None
        return seen

    def syn_options(self) -> dict[int, list[tuple[int, list[int]]]]:
        """Per client port: tshark's window and option kinds (in order) of its SYNs."""
        out = subprocess.run(
            ["tshark", "-r", str(self.path), "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0",
             "-T", "fields", "-E", "aggregator=-", "-e", "tcp.srcport", "-e", "tcp.window_size_value",
             "-e", "tcp.option_kind"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        seen = {}
        for line in out.splitlines():
            port, window, kinds = line.split("\t")
            seen.setdefault(int(port), []).append(
                (int(window), [int(k) for k in kinds.split("-") if k]))
        return seen


def curl_cffi_get(port: int, family: str, http1: bool) -> dict:
    from curl_cffi import CurlHttpVersion, CurlOpt, requests

    options = {CurlOpt.RESOLVE: [f"{NAME}:{port}:127.0.0.1"]}
    with requests.Session(impersonate=family, verify=False, timeout=20, curl_options=options) as session:
        kwargs = {"http_version": CurlHttpVersion.V1_1} if http1 else {}
        response = session.get(f"https://{NAME}:{port}/path?q=1", **kwargs)
    assert response.status_code == 200
    return response.json()


def system_curl_get(port: int) -> dict:
    out = subprocess.run(
        ["curl", "-sS", "-k", "--http2", "--resolve", f"{NAME}:{port}:127.0.0.1",
         "-H", "X-Mixed-Case: 1", f"https://{NAME}:{port}/curl"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    return json.loads(out)


def chromium_get(port: int, profile: Path) -> dict:
    out = subprocess.run(
        [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         f"--host-resolver-rules=MAP {NAME} 127.0.0.1", "--dump-dom", f"https://{NAME}:{port}/chromium"],
        capture_output=True, text=True, timeout=90,
    ).stdout
    match = re.search(r"<pre[^>]*>(.*)</pre>", out, re.S)
    assert match, f"chromium printed no JSON page: {out[:300]!r}"
    return json.loads(html.unescape(match.group(1)))


CLIENTS = [
    ("chrome", "h2"), ("chrome", "http/1.1"), ("firefox", "h2"), ("firefox", "http/1.1"),
    ("safari", "h2"), ("safari", "http/1.1"), ("curl", "h2"), ("chromium", "h2"),
]


@pytest.fixture(scope="module")
def observed(echo, tmp_path_factory):
    """Every client once through the echo server, with tshark's view of the same connections."""
    if os.geteuid() != 0:
        pytest.skip("capturing on loopback with tcpdump needs root (CI runs as root)")
    for tool in ("tcpdump", "tshark", "curl"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed; .ci/run installs it")
    port, _ = echo
    workdir = tmp_path_factory.mktemp("echo-capture")
    capture = Capture(port, workdir / "echo.pcap")
    reports = {}
    try:
        for client, protocol in CLIENTS:
            if client == "curl":
                reports[(client, protocol)] = system_curl_get(port)
            elif client == "chromium":
                if not shutil.which("chromium"):
                    pytest.fail("chromium is not installed; .ci/run installs it")
                reports[(client, protocol)] = chromium_get(port, workdir / "chromium-profile")
            else:
                reports[(client, protocol)] = curl_cffi_get(port, client, protocol == "http/1.1")
    finally:
        capture.stop()
    return reports, {"hellos": capture.hellos(), "p0f": capture.p0f_syns(), "syn": capture.syn_options()}


@pytest.mark.parametrize("client, protocol", CLIENTS)
def test_echo_matches_tshark(observed, client, protocol):
    reports, observers = observed
    report = reports[(client, protocol)]
    port = report["client"]["port"]
    assert port in observers["hellos"], f"tshark saw no ClientHello from port {port}"
    tls = report["tls"]
    mine = {"ja3_full": tls["ja3_full"], "extensions": tls["extension_types"],
            "alpn": tls["alpn"], "sni": tls["sni"]}
    assert tls["sni"] == NAME
    assert mine in observers["hellos"][port], (mine, observers["hellos"][port])
    assert tls["negotiated"]["alpn"] == protocol
    assert report["http_version"] == ("HTTP/2" if protocol == "h2" else "HTTP/1.1")


@pytest.mark.parametrize("client, protocol", CLIENTS)
def test_echo_syn_matches_p0f_and_tshark(observed, client, protocol):
    """The SYN read with TCP_SAVED_SYN equals what p0f and tshark see in the capture."""
    if not shutil.which("p0f"):
        pytest.fail("p0f is not installed; .ci/run installs it")
    reports, observers = observed
    report = reports[(client, protocol)]
    port = report["client"]["port"]
    assert report["tcp"]["p0f"] in observers["p0f"][port], observers["p0f"][port]
    syn = (report["tcp"]["window"], report["tcp"]["option_kinds"])
    assert syn in observers["syn"][port], (syn, observers["syn"][port])


@pytest.mark.parametrize("client, protocol", CLIENTS)
def test_echo_reports_every_layer(observed, client, protocol):
    reports, _ = observed
    report = reports[(client, protocol)]
    tcp = report["tcp"]
    assert "error" not in tcp, tcp
    assert tcp["sport"] == report["client"]["port"] and tcp["dst"] == "127.0.0.1"
    assert tcp["ja4t"].startswith(f"{tcp['window']}_")
    assert tcp["p0f"].startswith("4:")
    assert report["tls"]["ja4"].startswith("t13d")
    if protocol == "h2":
        h2 = report["http2"]
        assert h2["akamai"].count("|") == 3
        assert h2["request"]["pseudo_header_order"][0].startswith(":")
        assert h2["request"]["ja4h"].startswith("ge20")
        assert h2["settings"] == [list(map(int, kv.split(":"))) for kv in h2["akamai"].split("|")[0].split(";")]
    else:
        h1 = report["http1"]
        assert h1["ja4h"].startswith("ge11")
        assert "Host" in h1["header_order"]
        assert [n for n, _ in h1["headers"]] == h1["header_order"]


def test_browser_families_differ(observed):
    """Different TLS stacks give different fingerprints: the echo does not flatten them."""
    reports, _ = observed
    ja4s = {reports[(c, "h2")]["tls"]["ja4"] for c in ("chrome", "firefox", "safari", "curl")}
    assert len(ja4s) == 4
    akamai = {reports[(c, "h2")]["http2"]["akamai"] for c in ("chrome", "firefox", "safari", "curl")}
    assert len(akamai) == 4


def test_header_case_and_order_kept_over_http1(echo):
    import socket
    import ssl

    port, ca = echo
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    raw = (b"GET /case HTTP/1.1\r\nhost: echo.test\r\nX-UPPER: 1\r\nx-lower: 2\r\n"
           b"X-Dup: a\r\nX-Dup: b\r\nCookie: b=2; a=1\r\nConnection: close\r\n\r\n")
    with (socket.create_connection(("127.0.0.1", port), timeout=10) as plain,
          context.wrap_socket(plain, server_hostname=NAME) as tls):
        tls.sendall(raw)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    report = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert report["http1"]["headers"] == [["host", "echo.test"], ["X-UPPER", "1"], ["x-lower", "2"],
                                          ["X-Dup", "a"], ["X-Dup", "b"], ["Cookie", "b=2; a=1"],
                                          ["Connection", "close"]]
    assert report["http1"]["raw"].encode("latin-1") == raw


def test_cleartext_h1_and_h2_prior_knowledge(echo):
    port, _ = echo
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/h2c"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    report = json.loads(out)
    assert report["tls"] is None and report["http_version"] == "HTTP/2"
    assert report["http2"]["request"]["path"] == "/h2c"
    out = subprocess.run(["curl", "-sS", "-d", "x" * 5000, f"http://127.0.0.1:{port}/h1"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    report = json.loads(out)
    assert report["http1"]["method"] == "POST" and report["http1"]["body_length"] == 5000


def test_garbage_closes_only_that_connection(echo):
    import socket

    port, _ = echo
    with socket.create_connection(("127.0.0.1", port), timeout=10) as bad:
        bad.sendall(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")  # a ServerHello, not a hello
        assert bad.recv(100) == b""  # closed by the server
    out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/after"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert json.loads(out)["http1"]["target"] == "/after"

"""`mirror captures export`: real captures from a real proxy, read back by other tools —
a HAR reader (haralyzer), `mirror fingerprint` and tshark on the pcap-lite file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import running_echo
from fidelity_helpers import NAME, last_id, newest_capture
from haralyzer import HarParser
from proxyrun import running_proxy

from mirror.proxy.observe import Http1Observer
from mirror.wire.tcp import parse_syn


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """Three connections through a real proxy: Chrome over h2, Firefox over HTTP/1.1, and a
    plain-HTTP request; yields the proxy and the three capture records."""
    import httpx
    from curl_cffi import CurlHttpVersion, requests

    workdir = tmp_path_factory.mktemp("export")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(workdir / "proxy", modes=("http",), extra=extra) as proxy:
            records = []
            sizes = []            # body bytes each client received, in request order
            for family, version in (("chrome", None), ("firefox", CurlHttpVersion.V1_1)):
                before = last_id(proxy.store)
                with requests.Session(impersonate=family, verify=str(proxy.ca_cert), timeout=20,
                                      proxy=proxy.url("http")) as session:
                    kwargs = {"http_version": version} if version else {}
                    for query in ("one=1", "two=2"):
                        got = session.get(f"https://{NAME}:{port}/export?{query}", **kwargs)
                        sizes.append(len(got.content))
                records.append(newest_capture(proxy.store, before))
            before = last_id(proxy.store)
            with httpx.Client(proxy=proxy.url("http"), timeout=20) as client:
                sizes.append(len(client.get(f"http://{NAME}:{port}/plain").content))
            records.append(newest_capture(proxy.store, before, sni=None))
            yield {"proxy": proxy, "records": records, "workdir": workdir, "sizes": sizes}


def export(proxy, *args: str) -> bytes:
    result = subprocess.run([sys.executable, "-m", "mirror", "captures", "export", "--store",
                             str(proxy.store), *args], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_json_export_is_the_records(captured):
    ids = [str(r["id"]) for r in captured["records"]]
    data = json.loads(export(captured["proxy"], "--format", "json", *ids))
    assert [r["id"] for r in data] == [r["id"] for r in captured["records"]]
    assert data[0]["tls"]["ja4"] == captured["records"][0]["tls"]["ja4"]


def test_har_export_loads_in_a_har_reader(captured):
    ids = [str(r["id"]) for r in captured["records"]]
    har = json.loads(export(captured["proxy"], "--format", "har", *ids))
    entries = HarParser(har).har_data["entries"]
    assert len(entries) == 5                          # 2 + 2 requests over TLS, 1 plain
    urls = [e["request"]["url"] for e in entries]
    assert sum("/export?one=1" in u for u in urls) == 2 and any(u.startswith("http://")
                                                                for u in urls)
    for entry in entries:
        assert entry["response"]["status"] == 200, entry
        assert any(h["name"].lower() == "content-type" for h in entry["response"]["headers"])
    chrome = captured["records"][0]
    first = next(e for e in entries if e["connection"] == str(chrome["id"]))
    assert first["request"]["httpVersion"] == "HTTP/2"
    assert first["_mirror"]["ja4"] == chrome["tls"]["ja4"]
    assert first["_mirror"]["akamai"] == chrome["http"]["h2"]["akamai"]
    # the engine that made the upstream connection and the hello measured going out
    assert first["_mirror"]["tls_engine"] == chrome["upstream"]["engine"]
    assert first["_mirror"]["tls_engine"] in ("replay", "boringssl")
    sent = chrome["emitted"]["tls"]["hello"]
    assert first["_mirror"]["sent_hello"]["measured"] is sent["measured"] is True
    assert first["_mirror"]["sent_hello"]["exact"] is sent["exact"]
    assert first["_mirror"]["sent_hello"]["ja4"] == sent["ja4"] == chrome["tls"]["ja4"]
    plain = next(e for e in entries if e["request"]["url"].startswith("http://"))
    assert plain["_mirror"]["sent_hello"] is None
    assert first["request"]["queryString"] == [{"name": "one", "value": "1"}]
    # HAR 1.2: content.size is the body's length (the echo's bodies are not encoded, so equal
    # to bodySize); serverIPAddress is an IP address or left out (here: a host name)
    assert [e["response"]["content"]["size"] for e in entries] == captured["sizes"]
    assert [e["response"]["bodySize"] for e in entries] == captured["sizes"]
    assert all(size > 100 for size in captured["sizes"])
    assert all("serverIPAddress" not in e for e in entries)


def test_har_server_ip_address_is_an_address_or_absent():
    from mirror.record.capture import CaptureRecord
    from mirror.store.export import har

    def entry_for(host):
        record = {"id": 1, "started": 1.0, "protocol": "http",
                  "destination": {"host": host, "port": 80},
                  "http": {"version": "HTTP/1.1", "requests": [
                      {"method": "GET", "target": "/", "headers": [["Host", "x"]],
                       "response": {"status": 204, "reason": "", "headers": [],
                                    "body_size": 0}}]}}
        return har([CaptureRecord.from_stored(record)])["log"]["entries"][0]

    assert entry_for("198.18.0.2")["serverIPAddress"] == "198.18.0.2"
    assert entry_for("2001:db8::7")["serverIPAddress"] == "2001:db8::7"
    assert "serverIPAddress" not in entry_for("origin.example")
    unfollowed = entry_for("198.18.0.2")
    assert unfollowed["response"]["content"]["size"] == 0


def test_pcap_lite_gives_other_tools_the_same_fingerprints(captured):
    path = captured["workdir"] / "lite.pcap"
    ids = [str(r["id"]) for r in captured["records"][:2]]
    export(captured["proxy"], "--format", "pcap-lite", "--out", str(path), *ids)
    report = json.loads(subprocess.run([sys.executable, "-m", "mirror", "fingerprint", str(path),
                                        "--json"], capture_output=True, text=True, timeout=60,
                                       check=True).stdout)
    assert [c["ja4"] for c in report] == [r["tls"]["ja4"] for r in captured["records"][:2]]
    assert [c["ja4t"] for c in report] == [r["tcp"]["ja4t"] for r in captured["records"][:2]]
    # The export keeps each connection's real ports, and tshark picks a TCP dissector by port
    # first: an ephemeral port that happens to be registered to another protocol would hide
    # the hello, so both ports of every exported connection are decoded as TLS.
    ports = {port for r in captured["records"][:2]
             for syn in [parse_syn(bytes.fromhex(r["tcp"]["raw"]))] for port in (syn.sport, syn.dport)}
    decode_as = [arg for port in sorted(ports) for arg in ("-d", f"tcp.port=={port},tls")]
    assert shutil.which("tshark"), "tshark is needed (apt-get install tshark)"
    out = subprocess.run(["tshark", "-r", str(path), *decode_as, "-Y", "tls.handshake.type == 1",
                          "-T", "fields", "-e", "tls.handshake.ja3_full"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == [r["tls"]["ja3_full"] for r in captured["records"][:2]]


def test_http1_observer_follows_pipelined_responses():
    observer = Http1Observer()
    observer.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    responses = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"           # HEAD: no body
                 b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
    for i in range(0, len(responses), 7):
        observer.server_bytes(responses[i:i + 7])
    assert [r["response"]["status"] for r in observer.requests] == [200, 200, 404]
    assert observer.requests[2]["response"]["reason"] == "Not Found"
    assert [r["response"]["body_size"] for r in observer.requests] == [3, 0, 2]

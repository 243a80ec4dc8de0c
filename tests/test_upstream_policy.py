"""The upstream is never weaker than the client: broken servers behind `mirror run`.

One process (tests/policy_servers.py) serves a good server and one broken server per way a
server can be refused: its certificate (wrong name, untrusted CA, self-signed, expired, not yet
valid, client-auth-only EKU, a non-CA issuer — ordinary verification), the TLS policy (RSA-1024
leaf, SHA-1-signed leaf or intermediate, a P-224 intermediate, TLS 1.0 only, a ServerHello
picking a cipher suite or a version the client did not offer, or a TLS 1.3 suite the client left
out and BoringSSL offered anyway).
System curl asks for each through the proxy, explicit mode on loopback
and transparent mode in namespaces: each broken one is a 502 with its stage in X-Mirror-Error
and the reason in the body, recorded in the capture; no byte of the request reaches it (its
server logs what it reads), while the good server keeps being served in the same proxy run.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from badcerts import DAY, NOW, ca_pem, make_ca, make_leaf, rsa_key, write_pems
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from fidelity_helpers import last_id
from netbed import NetBed, netbed_fixture  # noqa: F401  (the `netbed` fixture)
from proxyrun import running_proxy, transparent_proxy_in

HERE = Path(__file__).resolve().parent
CERT, POLICY = "upstream-certificate", "upstream-tls-policy"

# name -> (server kind, stage expected, words the body must hold); None: served (200).
# curl offers TLS 1.0 to 1.3 by default; with --tlsv1.2 (CURL_ARGS) only 1.2 and 1.3.
CASES = {
    "good": ("python", None, "served"),
    "wrongname": ("python", CERT, "subject name"),
    "untrusted": ("python", CERT, "self signed certificate in certificate chain"),
    "selfsigned": ("python", CERT, "SSL certificate problem: self signed certificate"),
    "expired": ("python", CERT, "certificate has expired"),
    "notyet": ("python", CERT, "certificate is not yet valid"),
    "clientauth": ("python", CERT, "unsupported certificate purpose"),
    "nonca": ("python", CERT, "unable to get local issuer certificate"),
    "rsa1024": ("python", POLICY, "leaf (CN=rsa1024.test) has an RSA key of 1024 bits"),
    "sha1": ("python", POLICY, "leaf (CN=sha1.test) is signed with SHA1"),
    "sha1inter": ("python", POLICY, ("chain certificate 1 (CN=SHA-1 Intermediate) is signed "
                                    "with SHA1")),
    "p224inter": ("python", POLICY, ("chain certificate 1 (CN=P-224 Intermediate) has an EC "
                                     "key on secp224r1")),
    "tls1": ("openssl-tls1", POLICY, ("the server signed the handshake with RSA with MD5+SHA-1 "
                                     "(TLS 1.0)")),
    "tls1only": ("openssl-tls1", "upstream-tls", "TLSV1_ALERT_PROTOCOL_VERSION"),
    # a client that offers no TLS 1.3 (curl --tls-max 1.2) gets no TLS 1.3 upstream either
    "tls13only": ("openssl-tls13", "upstream-tls", "TLSV1_ALERT_PROTOCOL_VERSION"),
    # BoringSSL always offers the three TLS 1.3 suites: the server picks one the client left out
    "tls13cipher": ("openssl-tls13-aes128", POLICY, ("the server chose cipher suite 0x1301, "
                                                     "which the client did not offer")),
    "badcipher": ("crafted-cipher", POLICY, ("the server chose a cipher suite the client did "
                                            "not offer")),
    "badversion": ("crafted-version", POLICY, ("the server chose a TLS version the client did "
                                              "not offer (TLS 1.2 to TLS 1.3)")),
}
# The replay engine (--tls-engine replay) sends curl's own hello and verifies chains with
# cryptography's WebPKI verifier: the same servers are refused, some at another stage or in
# other words. It offers no TLS 1.3 suite curl left out, so tls13cipher's server finds none it
# takes; a self-signed leaf without an authority key identifier fails the WebPKI profile; SHA-1
# and P-224 certificates fail verification before the policy sees them. "tls1" (TLS 1.0) is
# made by the BoringSSL engine after a retry, so it is refused as there.
REPLAY_CASES = {**CASES,
    "wrongname": ("python", CERT, "leaf certificate has no matching subjectAltName"),
    "untrusted": ("python", CERT, "chain for untrusted.test does not verify"),
    "selfsigned": ("python", CERT, "Certificate is missing required extension"),
    "expired": ("python", CERT, "cert is not valid at validation time"),
    "notyet": ("python", CERT, "cert is not valid at validation time"),
    "clientauth": ("python", CERT, "required EKU not found"),
    "nonca": ("python", CERT, "basicConstraints.cA must be asserted in a CA certificate"),
    "sha1": ("python", CERT, "Forbidden signature algorithm"),
    "sha1inter": ("python", CERT, "Forbidden signature algorithm"),
    "p224inter": ("python", CERT, "Forbidden public key algorithm"),
    "tls1only": ("openssl-tls1", "upstream-tls", "the server sent alert protocol_version"),
    "tls13only": ("openssl-tls13", "upstream-tls", "the server sent alert protocol_version"),
    "tls13cipher": ("openssl-tls13-aes128", "upstream-tls",
                    "the server sent alert handshake_failure"),
    "badcipher": ("crafted-cipher", POLICY, ("the server chose cipher suite 0x000a, which the "
                                            "client did not offer")),
    "badversion": ("crafted-version", POLICY, "the server chose version 0x0302, not offered"),
}
ENGINE_CASES = {"boringssl": CASES, "replay": REPLAY_CASES}
CURL_ARGS = {"badversion": ["--tlsv1.2"], "tls1only": ["--tlsv1.2"],
             "tls13only": ["--tls-max", "1.2"],
             "tls13cipher": ["--tls13-ciphers", "TLS_AES_256_GCM_SHA384"]}


def build_servers(workdir: Path, host: str, base_port: int, names=tuple(CASES)) -> dict:
    """Certificates and the server spec; returns {"spec", "root", "ports", "log"}."""
    certs = workdir / "certs"
    root = make_ca("Policy Root", key=rsa_key(2048))
    other_root = make_ca("Some Other Root")
    not_a_ca = make_ca("Not A CA", issuer=root, ca=False)
    leaves = {
        "good": lambda: make_leaf(root, "good.test"),
        "wrongname": lambda: make_leaf(root, "other.test"),
        "untrusted": lambda: make_leaf(other_root, "untrusted.test"),
        "selfsigned": lambda: make_leaf(None, "selfsigned.test"),
        "expired": lambda: make_leaf(root, "expired.test", not_before=NOW - 30 * DAY,
                                     not_after=NOW - DAY),
        "notyet": lambda: make_leaf(root, "notyet.test", not_before=NOW + DAY,
                                    not_after=NOW + 30 * DAY),
        "clientauth": lambda: make_leaf(root, "clientauth.test",
                                        usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        "nonca": lambda: make_leaf(not_a_ca, "nonca.test"),
        "rsa1024": lambda: make_leaf(root, "rsa1024.test", key=rsa_key(1024)),
        "sha1": lambda: make_leaf(root, "sha1.test", digest=hashes.SHA1()),
        "sha1inter": lambda: make_leaf(make_ca("SHA-1 Intermediate", issuer=root,
                                               digest=hashes.SHA1()), "sha1inter.test"),
        "p224inter": lambda: make_leaf(make_ca("P-224 Intermediate", issuer=root,
                                               key=ec.generate_private_key(ec.SECP224R1())),
                                       "p224inter.test"),
        "tls1": lambda: make_leaf(root, "tls1.test", key=rsa_key(2048)),
        "tls1only": lambda: make_leaf(root, "tls1only.test", key=rsa_key(2048)),
        "tls13cipher": lambda: make_leaf(root, "tls13cipher.test"),
        "tls13only": lambda: make_leaf(root, "tls13only.test"),
    }
    servers, ports = [], {}
    for i, name in enumerate(names):
        kind = CASES[name][0]
        ports[name] = base_port + i
        entry = {"name": name, "port": ports[name], "kind": kind}
        if name in leaves:
            entry["cert"], entry["key"] = map(str, write_pems(leaves[name](), certs, name))
        servers.append(entry)
    log = workdir / "servers.log"
    spec = workdir / "servers.json"
    spec.write_text(json.dumps({"host": host, "log": str(log), "servers": servers}))
    return {"spec": spec, "root": ca_pem(root, workdir / "root.pem"), "ports": ports, "log": log}


def server_lines(log: Path, name: str) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split(" ", 1)[0] == name]


def parse_curl(out: str) -> tuple[int, dict, str]:
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    return status, headers, body


def check_answer(name: str, out: str, cases=CASES) -> None:
    _, stage, words = cases[name]
    status, headers, body = parse_curl(out)
    if stage is None:
        assert (status, body) == (200, words), out
        return
    assert status == 502, f"{name}: {out}"
    assert headers.get("x-mirror-error") == stage, f"{name}: {out}"
    assert body.startswith(f"mirror: Bad Gateway ({stage}): "), f"{name}: {out}"
    assert words in body, f"{name}: {body!r}"


def check_servers_saw_nothing(log: Path, names) -> None:
    """The refused servers read no request byte; the good one read its requests."""
    for name in names:
        got = [line for line in server_lines(log, name) if " GOT " in line]
        if CASES[name][1] is None:
            assert any("474554" in line for line in got), f"{name} saw no request"  # "GET"
        else:
            assert got == [], f"{name} read bytes it must not have: {got}"
        openssl_out = Path(f"{log}.{name}")
        if openssl_out.exists():
            assert b"GET" not in openssl_out.read_bytes(), openssl_out.read_text()


def probe_tls1(host: str, port: int) -> None:
    """A TLS 1.0 client that sends a request straight to the openssl server: shows its log
    would have shown a request that reached it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    with socket.create_connection((host, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="tls1.test") as tls:
        tls.sendall(b"GET /probe HTTP/1.1\r\nHost: tls1.test\r\n\r\n")
        time.sleep(0.3)


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


def curl_argv(name: str, port: int, ca: Path, proxy_url: str | None = None) -> list[str]:
    via = ["--proxy", proxy_url, "--suppress-connect-headers"] if proxy_url else []
    return ["curl", *CURL_ARGS.get(name, ()), "-sS", "-i", "-m", "20", *via, "--cacert", str(ca),
            f"https://{name}.test:{port}/"]


def curl_via(proxy, name: str, port: int) -> str:
    done = subprocess.run(curl_argv(name, port, proxy.ca_cert, proxy.url("http")),
                          check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def records_by_sni(store: Path, after: int, wanted: int) -> dict:
    """Capture records (id > after) by SNI, once ``wanted`` connections were recorded."""
    import sqlite3

    deadline = time.monotonic() + 10
    found: dict = {}
    while time.monotonic() < deadline:
        with sqlite3.connect(store) as db:
            rows = db.execute("SELECT record FROM captures WHERE id > ?", (after,)).fetchall()
        if len(rows) >= wanted:
            for (raw,) in rows:
                record = json.loads(raw)
                found.setdefault(record.get("sni"), []).append(record)
            return found
        time.sleep(0.1)
    raise AssertionError(f"only {len(rows)} of {wanted} connections were recorded")


def check_records(records: dict, names, cases=CASES) -> None:
    """Every connection's capture says how it ended: no error, or the refusal and why."""
    for name in names:
        _, stage, words = cases[name]
        assert records.get(f"{name}.test"), f"no capture for {name}"
        for record in records[f"{name}.test"]:
            if stage is None:
                assert record["error"] is None, record["error"]
            else:
                assert record["error"]["stage"] == stage, record["error"]
                assert words in record["error"]["message"]
                assert record["upstream"]["error"] == record["error"]["message"]


ORDER = ["good", *[n for n in CASES if n != "good"], "good"]     # good before and after


@pytest.mark.timeout(240)
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("engine", ["boringssl", "replay"])
def test_broken_servers_are_refused_with_their_reason_explicit_mode(tmp_path, engine):
    cases = ENGINE_CASES[engine]
    bed = build_servers(tmp_path, "127.0.0.1", _free_base_port())
    servers = subprocess.Popen([sys.executable, str(HERE / "policy_servers.py"),
                                str(bed["spec"])], stdout=subprocess.PIPE, text=True)
    try:
        for port in bed["ports"].values():
            wait_port("127.0.0.1", port)
        resolves = [arg for name, port in bed["ports"].items()
                    for arg in ("--resolve", f"{name}.test:{port}:127.0.0.1")]
        with running_proxy(tmp_path / "proxy", modes=("http",),
                           extra=["--upstream-ca", str(bed["root"]), "--tls-engine", engine,
                                  *resolves]) as proxy:
            before = last_id(proxy.store)
            for name in ORDER:
                check_answer(name, curl_via(proxy, name, bed["ports"][name]), cases)
            found = records_by_sni(proxy.store, before, len(ORDER))
            check_records(found, CASES, cases)
        # TLS 1.0 is BoringSSL's to make, whatever the engine asked for; the rest is the engine's
        assert {name: {r["upstream"]["engine"] for r in found[f"{name}.test"]}
                for name in CASES} == {name: {"boringssl" if name == "tls1" else engine}
                                       for name in CASES}
        check_servers_saw_nothing(bed["log"], CASES)
        probe_tls1("127.0.0.1", bed["ports"]["tls1"])
        time.sleep(0.3)
        assert b"GET /probe" in Path(f"{bed['log']}.tls1").read_bytes()   # the log would tell
    finally:
        servers.terminate()
        servers.wait(10)


@pytest.mark.timeout(120)
def test_insecure_upstream_says_so_and_turns_certificate_checks_off(tmp_path):
    names = ("good", "selfsigned", "expired", "rsa1024", "sha1", "tls1")
    bed = build_servers(tmp_path, "127.0.0.1", _free_base_port(), names)
    servers = subprocess.Popen([sys.executable, str(HERE / "policy_servers.py"),
                                str(bed["spec"])], stdout=subprocess.PIPE, text=True)
    try:
        for port in bed["ports"].values():
            wait_port("127.0.0.1", port)
        resolves = [arg for name, port in bed["ports"].items()
                    for arg in ("--resolve", f"{name}.test:{port}:127.0.0.1")]
        with running_proxy(tmp_path / "proxy", modes=("http",),
                           extra=["--insecure-upstream", *resolves]) as proxy:
            assert ("warning: --insecure-upstream: servers' certificates are NOT verified (any "
                    "certificate is accepted; the TLS version and cipher suite rules still "
                    "hold)\n") in proxy.lines
            for name in names[:-1]:               # no CA given, and yet every one is served
                status, _, body = parse_curl(curl_via(proxy, name, bed["ports"][name]))
                assert (status, body) == (200, "served"), name
            check_answer("tls1", curl_via(proxy, "tls1", bed["ports"]["tls1"]))
    finally:
        servers.terminate()
        servers.wait(10)


@pytest.mark.timeout(120)
def test_an_https_upstream_proxy_is_held_to_the_same_rules(tmp_path):
    """TLS to an https:// upstream proxy with an RSA-1024 or a SHA-1 certificate is refused,
    for mirrored TLS (libcurl's tunnel) and for plain HTTP (the proxy's own tunnel), before the
    CONNECT request: the proxy (a TLS server that logs what it reads) reads nothing."""
    port = _free_base_port(4)
    root = make_ca("Proxy Root", key=rsa_key(2048))
    servers = []
    for i, (name, leaf) in enumerate([
            ("weakproxy", make_leaf(root, "127.0.0.1", key=rsa_key(1024))),
            ("sha1proxy", make_leaf(root, "127.0.0.1", digest=hashes.SHA1()))]):
        cert, key = write_pems(leaf, tmp_path / "certs", name)
        servers.append({"name": name, "port": port + i, "kind": "python", "cert": str(cert),
                        "key": str(key)})
    log = tmp_path / "servers.log"
    spec = tmp_path / "servers.json"
    spec.write_text(json.dumps({"host": "127.0.0.1", "log": str(log), "servers": servers}))
    process = subprocess.Popen([sys.executable, str(HERE / "policy_servers.py"), str(spec)],
                               stdout=subprocess.PIPE, text=True)
    expected = {"weakproxy": ("upstream proxy: leaf (CN=127.0.0.1) has an RSA key of 1024 bits",
                              "EE certificate key too weak"),
                "sha1proxy": ("upstream proxy: leaf (CN=127.0.0.1) is signed with SHA1",
                              "digest algorithm too weak")}
    try:
        for server in servers:
            wait_port("127.0.0.1", server["port"])
            url = f"https://127.0.0.1:{server['port']}"
            with running_proxy(tmp_path / server["name"], modes=("http",),
                               extra=["--upstream-ca", str(ca_pem(root, tmp_path / "root.pem")),
                                      "--upstream-proxy", url]) as proxy:
                tls_words, plain_words = expected[server["name"]]
                status, headers, body = parse_curl(curl_via(proxy, "any", 443))
                assert (status, headers["x-mirror-error"]) == (502, POLICY), body
                assert f"refused by TLS policy: {tls_words}" in body and f"(via {url})" in body
                plain = subprocess.run(["curl", "-sS", "-i", "-m", "20", "--proxy",
                                        proxy.url("http"), "http://any.test/"], check=False,
                                       capture_output=True, text=True, timeout=30)
                status, headers, body = parse_curl(plain.stdout)
                assert status == 502 and plain_words in body, plain.stdout
        assert not [line for name in expected for line in server_lines(log, name)
                    if " GOT " in line]
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.root
@pytest.mark.timeout(300)
def test_broken_servers_are_refused_with_their_reason_transparent_mode(netbed):
    """The same servers in the server namespace, the client unaware of the proxy: the gateway
    redirects their ports to `mirror run --mode transparent`."""
    bed = netbed
    servers = build_servers(bed.workdir / "policy", NetBed.SERVER_IP, 10001)
    for name in CASES:
        bed.add_host(f"{name}.test", NetBed.SERVER_IP)
    bed.python("server", [str(HERE / "policy_servers.py"), str(servers["spec"])],
               stdout=subprocess.DEVNULL)
    for port in servers["ports"].values():
        bed.wait_listening("server", port)
    _, store, proxy_ca = transparent_proxy_in(bed, 8081, ["--upstream-ca", str(servers["root"]),
                                                          "--tls-engine", "boringssl"])
    bed.redirect(tuple(servers["ports"].values()), to_port=8081)
    before = last_id(store)
    for name in ORDER:
        check_answer(name, bed.check_output(
            "client", curl_argv(name, servers["ports"][name], proxy_ca), timeout=40))
    check_records(records_by_sni(store, before, len(ORDER)), CASES)
    check_servers_saw_nothing(servers["log"], CASES)


def _free_base_port(count: int = len(CASES)) -> int:
    """A run of ``count`` free loopback ports (probed, then released), below the kernel's
    ephemeral range, where no outgoing connection takes one meanwhile. Probed with
    SO_REUSEADDR as the servers bind (``socket.create_server``, ``openssl s_server``), so
    the TIME_WAIT of an earlier run's connections does not count as taken."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    bottom, top = (10000, low - count) if low - count > 10000 else (1024, 65535 - count)
    for _ in range(200):
        base = random.randrange(bottom, top)
        taken = []
        try:
            for port in range(base, base + count):
                probe = socket.socket()
                taken.append(probe)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in taken:
                probe.close()
    raise AssertionError("no run of free ports")

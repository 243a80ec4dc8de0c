"""Launchers for real clients of other TLS stacks, for the proxy's fidelity tests.

Each client fetches one URL from the echo server and prints the echo's JSON report, as an
ordinary user of that stack would run it: trust in a CA certificate (PEM), and optionally an
explicit HTTP proxy (CONNECT tunnel), each through the stack's own mechanism:

- Python requests (urllib3 on Python's ssl, i.e. OpenSSL): ``verify=``, ``HTTPS_PROXY``;
- Go net/http (crypto/tls, HTTP/2): ``SSL_CERT_FILE``, ``HTTPS_PROXY``;
- wget (GnuTLS): ``--ca-certificate``, ``https_proxy``;
- Node https (OpenSSL): ``NODE_EXTRA_CA_CERTS``; the CONNECT tunnel is opened by the script,
  since Node's https reads no proxy variables;
- Java java.net.http.HttpClient (SunJSSE, HTTP/2): a PKCS#12 truststore made by ``keytool``,
  a ``ProxySelector``.

The Go and Java clients (sources in ``tests/stack_client_sources/``) are compiled once by
:func:`build_clients`. A missing tool is an error that names it (``pytest.fail``), never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCES = Path(__file__).resolve().parent / "stack_client_sources"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
TRUSTSTORE_PASSWORD = "changeit"
REQUESTS_FETCH = """
import json, sys
import requests
url, ca = sys.argv[1:3]
response = requests.get(url, verify=ca, timeout=20)
response.raise_for_status()
print(json.dumps(response.json()))
"""


@dataclass(frozen=True)
class Builds:
    """What :func:`build_clients` compiled: the Go binary and the Java classes directory."""

    go_binary: Path
    java_classes: Path
    workdir: Path


@dataclass(frozen=True)
class Fetch:
    """One fetch: the URL, the CA certificate (PEM) to trust, the explicit proxy's URL
    (``http://host:port``) or None for a direct connection."""

    url: str
    ca: Path
    proxy: str | None


Command = tuple[list[str], dict[str, str]]


def require(tool: str) -> str:
    """The path of ``tool``; the test fails (not skips) when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; .ci/run installs it")
    return path


def base_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any proxy variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env.update(extra or {})
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> None:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def build_clients(workdir: Path) -> Builds:
    """Compile the Go and Java clients into ``workdir`` (Go's caches there too)."""
    workdir.mkdir(parents=True, exist_ok=True)
    go_binary = workdir / "go-client"
    env = base_environment({"GOCACHE": str(workdir / "gocache"), "GOPATH": str(workdir / "gopath"),
                            "GO111MODULE": "off"})
    _run([require("go"), "build", "-o", str(go_binary), str(SOURCES / "client.go")], env, workdir)
    classes = workdir / "java-classes"
    _run([require("javac"), "-d", str(classes), str(SOURCES / "Client.java")],
         base_environment(), workdir)
    return Builds(go_binary, classes, workdir)


def java_truststore(ca: Path, workdir: Path) -> Path:
    """A PKCS#12 truststore holding ``ca`` (made once per CA by keytool)."""
    store = workdir / f"truststore-{abs(hash(str(ca)))}.p12"
    if not store.exists():
        _run([require("keytool"), "-importcert", "-noprompt", "-alias", "ca", "-file", str(ca),
              "-keystore", str(store), "-storetype", "PKCS12", "-storepass", TRUSTSTORE_PASSWORD],
             base_environment(), workdir, timeout=60)
    return store


def requests_command(fetch: Fetch, builds: Builds) -> Command:
    proxy = {"HTTPS_PROXY": fetch.proxy} if fetch.proxy else {}
    return ([sys.executable, "-c", REQUESTS_FETCH, fetch.url, str(fetch.ca)],
            base_environment(proxy))


def go_command(fetch: Fetch, builds: Builds) -> Command:
    env = {"SSL_CERT_FILE": str(fetch.ca), "SSL_CERT_DIR": str(builds.workdir / "no-cert-dir")}
    if fetch.proxy:
        env["HTTPS_PROXY"] = fetch.proxy
    return [str(builds.go_binary), fetch.url], base_environment(env)


def wget_command(fetch: Fetch, builds: Builds) -> Command:
    proxy = {"https_proxy": fetch.proxy} if fetch.proxy else {}
    return ([require("wget"), "-q", "-O", "-", "--no-hsts", "--no-config",
             f"--ca-certificate={fetch.ca}", fetch.url], base_environment(proxy))


def node_command(fetch: Fetch, builds: Builds) -> Command:
    argv = [require("node"), str(SOURCES / "client.js"), fetch.url]
    return argv + ([fetch.proxy] if fetch.proxy else []), \
        base_environment({"NODE_EXTRA_CA_CERTS": str(fetch.ca)})


def java_command(fetch: Fetch, builds: Builds) -> Command:
    store = java_truststore(fetch.ca, builds.workdir)
    # a quick start (C1 only, serial GC): nothing of it reaches the TLS handshake's bytes
    argv = [require("java"), "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
            f"-Djavax.net.ssl.trustStore={store}",
            f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}",
            "-Djavax.net.ssl.trustStoreType=PKCS12", "-cp", str(builds.java_classes), "Client",
            fetch.url]
    if fetch.proxy:
        argv.append(fetch.proxy.removeprefix("http://"))
    return argv, base_environment()


@dataclass(frozen=True)
class StackClient:
    """A client as the fidelity table names it, and how to launch it."""

    key: str
    label: str
    command: Callable[[Fetch, Builds], Command]


STACK_CLIENTS = [
    StackClient("requests", "Python requests (OpenSSL)", requests_command),
    StackClient("go", "Go net/http (crypto/tls)", go_command),
    StackClient("wget", "wget (GnuTLS)", wget_command),
    StackClient("node", "Node https (OpenSSL)", node_command),
    StackClient("java", "Java HttpClient (SunJSSE)", java_command),
]


def fetch_report(bed, client: StackClient, fetch: Fetch, builds: Builds) -> dict:
    """Run ``client`` in the bed's client namespace; the echo server's JSON report."""
    argv, env = client.command(fetch, builds)
    out = bed.check_output("client", argv, env=env, timeout=60)
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"{client.label} printed no JSON report: {out[:300]!r}")

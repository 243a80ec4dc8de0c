"""The clients `mirror check` can drive, each fetching one URL from the echo server — directly
(the name pinned to 127.0.0.1) or through the proxy — and returning the echo's JSON report.

curl_cffi targets by family name (chrome, firefox, safari, edge, tor, chrome_android,
safari_ios...), headless Chromium, system curl, and Python httpx when installed.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--ignore-certificate-errors"]


class ClientError(RuntimeError):
    """The client could not run or did not get the echo's report (the message does not repeat
    the client's name: whoever shows it puts the name first)."""


OWN_CLIENTS = ("chromium", "curl", "httpx")
_INSTALL = {
    "chromium": "install Chromium (Debian: apt-get install chromium)",
    "curl": "install curl (Debian: apt-get install curl)",
    "httpx": "install it with `pip install httpx`",
}


def curl_cffi_names() -> tuple[list[str], list[str]]:
    """(families such as chrome or safari_ios, exact targets such as chrome152) of curl_cffi."""
    from curl_cffi.requests import impersonate

    families = sorted(name[len("DEFAULT_"):].lower() for name in dir(impersonate)
                      if name.startswith("DEFAULT_"))
    targets = sorted(impersonate.BrowserType.__members__)
    return families, targets


def unknown_clients(names: list[str]) -> list[str]:
    """The names that are neither a client of ours nor a curl_cffi family or target."""
    families, targets = curl_cffi_names()
    known = {*OWN_CLIENTS, *families, *targets}
    return [name for name in names if name not in known]


def missing_requirement(client: str) -> str | None:
    """What ``client`` needs that this machine lacks, and how to install it (None: all there)."""
    if client == "chromium":
        found = bool(shutil.which("chromium") or shutil.which("chromium-browser"))
    elif client == "curl":
        found = shutil.which("curl") is not None
    elif client == "httpx":
        import importlib.util

        try:
            found = (importlib.util.find_spec("httpx") is not None
                     and importlib.util.find_spec("httpcore") is not None)
        except ValueError:         # a module entry without a spec: not importable here
            found = False
    else:
        return None
    return None if found else f"{client} is not installed: {_INSTALL[client]}"


@dataclass(frozen=True, slots=True)
class Target:
    name: str          # the echo's host name, pinned to 127.0.0.1
    port: int
    echo_ca: str       # the echo's CA (direct)
    proxy_url: str     # http://127.0.0.1:PORT
    proxy_ca: str      # the proxy's CA (through the proxy)

    def url(self, client: str) -> str:
        return f"https://{self.name}:{self.port}/check?client={client}"


def fetch(client: str, target: Target, via_proxy: bool) -> dict:
    try:
        if client == "chromium":
            return _chromium(target, via_proxy)
        if client == "curl":
            return _curl(target, via_proxy)
        if client == "httpx":
            return _httpx(target, via_proxy)
        return _curl_cffi(client, target, via_proxy)
    except ClientError:
        raise
    except Exception as error:   # a client's own failure, reported per client
        raise ClientError(str(error)) from error


def _curl_cffi(family: str, target: Target, via_proxy: bool) -> dict:
    from curl_cffi import CurlOpt, requests

    session: requests.Session[requests.Response]
    if via_proxy:
        session = requests.Session(impersonate=family, timeout=30, proxy=target.proxy_url,
                                   trust_env=False)
        ca_file = target.proxy_ca
    else:
        session = requests.Session(impersonate=family, timeout=30, trust_env=False, curl_options={
            CurlOpt.RESOLVE: [f"{target.name}:{target.port}:127.0.0.1"]})
        ca_file = target.echo_ca
    with session:
        # curl_cffi's signature says bool, but its request code takes a CA file path (CAINFO)
        response = session.get(target.url(family), verify=ca_file)  # type: ignore[arg-type]
    if response.status_code != 200:
        raise ClientError(f"HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


def _chromium(target: Target, via_proxy: bool) -> dict:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise ClientError("not installed (apt-get install chromium)")
    route = ([f"--proxy-server={target.proxy_url}"] if via_proxy
             else [f"--host-resolver-rules=MAP {target.name} 127.0.0.1"])
    with tempfile.TemporaryDirectory(prefix="mirror-check-chromium-") as profile:
        out = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *route,
                              "--dump-dom", target.url("chromium")],
                             capture_output=True, text=True, timeout=120).stdout
    match = re.search(r"<pre[^>]*>(.*)</pre>", out, re.S)
    if not match:
        raise ClientError(f"no report in the page: {out[:200]!r}")
    return json.loads(html.unescape(match.group(1)))


def _curl(target: Target, via_proxy: bool) -> dict:
    if shutil.which("curl") is None:
        raise ClientError("not installed (apt-get install curl)")
    route = (["-x", target.proxy_url, "--cacert", target.proxy_ca] if via_proxy else
             ["--resolve", f"{target.name}:{target.port}:127.0.0.1", "--cacert", target.echo_ca])
    result = subprocess.run(["curl", "-sS", "--http2", *route, target.url("curl")],
                            capture_output=True, text=True, timeout=60)
    if result.returncode:
        message = result.stderr.strip()
        raise ClientError(message.removeprefix("curl: ") or f"exit status {result.returncode}")
    return json.loads(result.stdout)


def _httpx(target: Target, via_proxy: bool) -> dict:
    try:
        import httpcore
        import httpx
    except ImportError:
        raise ClientError("not installed (pip install httpx)") from None
    if via_proxy:
        client = httpx.Client(verify=ssl.create_default_context(cafile=target.proxy_ca),
                              proxy=target.proxy_url, timeout=30, trust_env=False)
    else:
        context = ssl.create_default_context(cafile=target.echo_ca)

        class Loopback(httpcore.SyncBackend):
            def connect_tcp(self, host, port, timeout=None, local_address=None,
                            socket_options=None):
                return super().connect_tcp("127.0.0.1", port, timeout, local_address,
                                           socket_options)

        transport = httpx.HTTPTransport(verify=context)
        transport._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=Loopback())
        client = httpx.Client(transport=transport, timeout=30, trust_env=False)
    with client:
        response = client.get(target.url("httpx"))
    if response.status_code != 200:
        raise ClientError(f"HTTP {response.status_code}")
    return response.json()

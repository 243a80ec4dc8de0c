"""Capture reference fingerprints of real clients into fingerprints/NAME.json.

What it does
------------
Starts its own ``python -m mirror echo`` on a free 127.0.0.1 port (a throw-away CA in a
temporary directory), drives each real client against it, and writes one JSON file per client
with what the echo server saw: the raw ClientHello and its parsed fields, JA3 / JA3N / JA4
variants, the HTTP/2 connection start (SETTINGS, WINDOW_UPDATE, Akamai string, header order,
JA4H) and the HTTP/1.1 header order and JA4H, plus provenance (client version, date, command,
how the client was driven, host platform).

Clients
-------
* ``chromium``: Debian's headless Chromium (h2; a second run with ``--disable-http2`` for the
  HTTP/1.1 section), the page's JSON read back with ``--dump-dom``.
* ``chrome``, ``edge``, ``safari``, ``safari_ios``, ``firefox``, ``tor``, ``chrome_android``:
  curl_cffi's newest native target of each family (``curl_cffi.requests.impersonate.DEFAULT_*``),
  one request over h2 and one over HTTP/1.1.
* ``curl``: the system curl, ``--http2`` and ``--http1.1``.
* ``requests``: Python requests (HTTP/1.1 only). It cannot send a mapped SNI, so it connects to
  ``https://localhost:PORT`` (the echo listens on 127.0.0.1; SNI is ``localhost``).
* ``httpx``: httpx with ``http2=True`` when the h2 extra is importable (else HTTP/1.1 only), and
  a second request with ``http2=False`` for the HTTP/1.1 section; connects to ``localhost`` too.

The TLS section always comes from the client's first (preferred-protocol) connection; an
HTTP/1.1-only connection may offer a different ALPN, so its JA4 is kept as ``http1.tls_ja4``.

Usage::

    python tools/capture_references.py [--out fingerprints/] [--only chrome,curl]

Progress lines go to stderr; nothing is printed on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "echo.test"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--ignore-certificate-errors",
]
CURL_CFFI_FAMILIES = ["chrome", "edge", "safari", "safari_ios", "firefox", "tor", "chrome_android"]
ALL_CLIENTS = ["chromium", *CURL_CFFI_FAMILIES, "curl", "requests", "httpx"]

TLS_KEYS = [
    "raw", "record_version", "legacy_version", "cipher_suites", "compression_methods",
    "extension_types", "sni", "alpn", "supported_groups", "ec_point_formats",
    "signature_algorithms", "supported_versions", "key_shares", "psk_key_exchange_modes",
    "compress_certificate", "record_size_limit", "delegated_credentials", "alps", "padding",
    "ja3", "ja3_full", "ja3n", "ja4", "ja4_r", "ja4_o", "ja4_ro",
]


def log(message: str) -> None:
    print(f"[capture] {message}", file=sys.stderr, flush=True)


class Echo:
    """A `python -m mirror echo` subprocess on a free loopback port."""

    def __init__(self, ca_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "echo", "--listen", "127.0.0.1:0", "--ca-dir", str(ca_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        line = self.proc.stdout.readline()
        match = re.search(r":(\d+)/", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"mirror echo did not start: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ---------------------------------------------------------------- the clients

def curl_cffi_get(port: int, target: str, http1: bool) -> dict:
    from curl_cffi import CurlHttpVersion, CurlOpt, requests

    options = {CurlOpt.RESOLVE: [f"{NAME}:{port}:127.0.0.1"]}
    with requests.Session(impersonate=target, verify=False, timeout=20, curl_options=options) as session:
        kwargs = {"http_version": CurlHttpVersion.V1_1} if http1 else {}
        response = session.get(f"https://{NAME}:{port}/reference", **kwargs)
    response.raise_for_status()
    return response.json()


def system_curl_get(port: int, http1: bool) -> dict:
    out = subprocess.run(
        ["curl", "-sS", "-k", "--http1.1" if http1 else "--http2", "--resolve", f"{NAME}:{port}:127.0.0.1",
         f"https://{NAME}:{port}/reference"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    return json.loads(out)


def chromium_get(port: int, http1: bool) -> dict:
    flags = [*CHROMIUM_FLAGS, *(["--disable-http2"] if http1 else [])]
    with tempfile.TemporaryDirectory(prefix="mirror-chromium-") as profile:
        out = subprocess.run(
            [shutil.which("chromium") or "chromium", *flags, f"--user-data-dir={profile}",
             f"--host-resolver-rules=MAP {NAME} 127.0.0.1", "--dump-dom", f"https://{NAME}:{port}/reference"],
            capture_output=True, text=True, timeout=90,
        ).stdout
    match = re.search(r"<pre[^>]*>(.*)</pre>", out, re.S)
    if not match:
        raise RuntimeError(f"chromium printed no JSON page: {out[:300]!r}")
    return json.loads(html.unescape(match.group(1)))


def requests_get(port: int) -> dict:
    import requests
    import urllib3

    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    response = requests.get(f"https://localhost:{port}/reference", verify=False, timeout=20)
    response.raise_for_status()
    return response.json()


def httpx_has_h2() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def httpx_get(port: int, http2: bool) -> dict:
    import httpx

    with httpx.Client(http2=http2, verify=False, timeout=20) as client:
        response = client.get(f"https://localhost:{port}/reference")
    response.raise_for_status()
    return response.json()


# ---------------------------------------------------------------- versions

def first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def native_target(family: str) -> str:
    import curl_cffi.requests.impersonate as impersonate

    return getattr(impersonate, f"DEFAULT_{family.upper()}")


def curl_cffi_version() -> str:
    import curl_cffi

    return curl_cffi.__version__


# ---------------------------------------------------------------- one client

def tls_section(echo: dict) -> dict:
    tls = echo["tls"]
    section = {key: tls.get(key) for key in TLS_KEYS}
    section["raw_client_hello"] = section.pop("raw")
    return section


def http2_section(echo: dict) -> dict:
    if echo.get("http_version") != "HTTP/2" or "http2" not in echo:
        raise RuntimeError(f"expected an HTTP/2 answer, got {echo.get('http_version')!r}")
    conn = echo["http2"]
    request = conn["request"]
    return {
        "akamai": conn["akamai"],
        "settings": conn["settings"],
        "window_update": conn["window_update"],
        "priority_frames": conn.get("priority_frames", []),
        "headers_priority": conn.get("headers_priority"),
        "pseudo_header_order": request["pseudo_header_order"],
        "header_order": request["header_order"],
        "headers": request["headers"],
        "ja4h": request["ja4h"],
        "ja4h_r": request.get("ja4h_r"),
    }


def http1_section(echo: dict) -> dict:
    if "http1" not in echo:
        raise RuntimeError(f"expected an HTTP/1.1 answer, got {echo.get('http_version')!r}")
    request = echo["http1"]
    return {
        "version": request["version"],
        "header_order": request["header_order"],
        "headers": request["headers"],
        "ja4h": request["ja4h"],
        "ja4h_r": request.get("ja4h_r"),
        "tls_ja4": echo["tls"]["ja4"],
        "tls_alpn": echo["tls"]["alpn"],
    }


class Plan:
    """How to capture one client: its version, how it is driven, its h2 and HTTP/1.1 requests."""

    def __init__(self, name: str, version: dict, how: str,
                 h2: Callable[[int], dict] | None, http1: Callable[[int], dict] | None) -> None:
        self.name, self.version, self.how, self.h2, self.http1 = name, version, how, h2, http1


def plan_for(name: str) -> Plan:
    if name == "chromium":
        return Plan(name, {"name": "chromium", "version": first_line(["chromium", "--version"])},
                    f"headless Debian chromium ({' '.join(CHROMIUM_FLAGS)}) with --host-resolver-rules "
                    f"mapping {NAME} to 127.0.0.1 and --dump-dom; a fresh profile per run; the "
                    "HTTP/1.1 section from a second run adding --disable-http2",
                    lambda port: chromium_get(port, False), lambda port: chromium_get(port, True))
    if name in CURL_CFFI_FAMILIES:
        target = native_target(name)
        return Plan(name, {"name": name, "impersonate": target, "curl_cffi": curl_cffi_version()},
                    f"curl_cffi requests.Session(impersonate={target!r}, verify=False) with "
                    f"CURLOPT_RESOLVE {NAME}:PORT:127.0.0.1; one GET with the target's default "
                    "HTTP version (h2) and one with http_version=CurlHttpVersion.V1_1",
                    lambda port: curl_cffi_get(port, target, False),
                    lambda port: curl_cffi_get(port, target, True))
    if name == "curl":
        return Plan(name, {"name": "curl", "version": first_line(["curl", "--version"])},
                    f"system curl -sS -k --resolve {NAME}:PORT:127.0.0.1, once with --http2 and "
                    "once with --http1.1",
                    lambda port: system_curl_get(port, False), lambda port: system_curl_get(port, True))
    if name == "requests":
        import requests
        import urllib3

        return Plan(name, {"name": "requests", "version": requests.__version__,
                           "urllib3": urllib3.__version__},
                    "requests.get('https://localhost:PORT/reference', verify=False): requests cannot "
                    "send a mapped SNI, so it connects to localhost (the echo listens on 127.0.0.1) "
                    "and its SNI is 'localhost'; HTTP/1.1 only",
                    None, requests_get)
    if name == "httpx":
        import httpx

        h2 = httpx_has_h2()
        version = {"name": "httpx", "version": httpx.__version__}
        if h2:
            import h2 as h2_module

            version["h2"] = h2_module.__version__
        return Plan(name, version,
                    f"httpx.Client(http2={h2}, verify=False).get('https://localhost:PORT/reference') "
                    "(SNI 'localhost', the echo listens on 127.0.0.1)"
                    + ("; the HTTP/1.1 section from a second client with http2=False" if h2 else ""),
                    (lambda port: httpx_get(port, True)) if h2 else None,
                    lambda port: httpx_get(port, False))
    raise SystemExit(f"unknown client {name!r}; known: {', '.join(ALL_CLIENTS)}")


def capture(plan: Plan, port: int, command: str) -> dict:
    h2_echo = plan.h2(port) if plan.h2 else None
    http1_echo = plan.http1(port) if plan.http1 else None
    primary = h2_echo or http1_echo
    return {
        "name": plan.name,
        "client": plan.version,
        "provenance": {
            "captured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": command,
            "how": plan.how,
            "host": platform.platform(),
            "python": platform.python_version(),
            "echo": "python -m mirror echo --listen 127.0.0.1:0 (mirror "
                    + __import__("mirror").__version__ + ")",
        },
        "tls": tls_section(primary),
        "http2": http2_section(h2_echo) if h2_echo else None,
        "http1": http1_section(http1_echo) if http1_echo else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "fingerprints", help="output directory")
    parser.add_argument("--only", default="", help="comma-separated client names (default: all)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or ALL_CLIENTS
    for name in names:
        if name not in ALL_CLIENTS:
            parser.error(f"unknown client {name!r}; known: {', '.join(ALL_CLIENTS)}")
    command = shlex.join(["python", "tools/capture_references.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mirror-ref-ca-") as ca_dir:
        echo = Echo(Path(ca_dir))
        log(f"echo server on 127.0.0.1:{echo.port}")
        try:
            for name in names:
                log(f"{name}: capturing")
                try:
                    plan = plan_for(name)
                    record = capture(plan, echo.port, command)
                except Exception as error:  # noqa: BLE001 - one broken client must not lose the others
                    failures += 1
                    log(f"{name}: FAILED: {type(error).__name__}: {error}")
                    continue
                path = args.out / f"{name}.json"
                path.write_text(json.dumps(record, indent=2) + "\n")
                akamai = record["http2"]["akamai"] if record["http2"] else "-"
                log(f"{name}: ja4={record['tls']['ja4']} akamai={akamai} -> {path}")
        finally:
            echo.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

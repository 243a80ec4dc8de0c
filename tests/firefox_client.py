"""Real Firefox (ESR), headless, fetching one page and handing back its text.

``firefox_get(url, workdir=..., trust=[ca.pem], proxy="http://HOST:PORT" | "socks5://HOST:PORT"
| None, local_names=["echo.test"])`` starts the installed firefox-esr with a fresh profile in a
temporary directory under ``workdir`` and drives it over Marionette, Firefox's own remote protocol (a TCP
socket on loopback, length-prefixed JSON; the port is chosen by Firefox and written to the
profile). The CAs in ``trust`` go into that profile's certificate database only (NSS's
``nsIX509CertDB``, from a privileged script), nothing on the system changes. Then it navigates
to ``url`` and returns the page's text.

The profile's ``user.js`` sends every connection through ``proxy`` (an explicit HTTP proxy, used
with CONNECT for https, or SOCKS5 with the names resolved by the proxy) or, without one,
resolves ``local_names`` to loopback, and switches off what Firefox would fetch by itself
(telemetry, updates, captive-portal and connectivity checks, Safe Browsing, remote settings,
push, DoH, speculative connections, the favicon), so the server sees the page's own connection.
Every wait is bounded; Firefox and its child processes (its own process group) are killed on the
way out, failure or not.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 60.0       # Firefox up and Marionette listening
COMMAND_TIMEOUT = 60.0     # one Marionette command (a page load included)
QUIT_TIMEOUT = 20.0

# What Firefox would otherwise fetch by itself, switched off; how it routes and what it shows.
QUIET_PREFS: dict[str, object] = {
    "marionette.port": 0,                              # any free port, written to the profile
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "browser.aboutwelcome.enabled": False,
    "browser.chrome.site_icons": False,                # no favicon request
    "browser.discovery.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.system.topstories": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    "browser.ping-centre.telemetry": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.provider.google.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.search.geoip.url": "",
    "browser.search.suggest.enabled": False,
    "browser.search.update": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.urlbar.suggest.quicksuggest.sponsored": False,
    "browser.urlbar.suggest.quicksuggest.nonsponsored": False,
    "browser.urlbar.speculativeConnect.enabled": False,
    "captivedetect.canonicalURL": "",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "devtools.jsonview.enabled": False,                # JSON shown as plain text
    "dom.push.connection.enabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.update.enabled": False,
    "geo.provider.network.url": "",
    "identity.fxaccounts.enabled": False,
    "media.gmp-manager.url": "",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
    "network.predictor.enabled": False,
    "network.prefetch-next": False,
    "network.trr.mode": 5,                             # no DNS over HTTPS
    "security.certerrors.mitm.priming.enabled": False,
    "security.OCSP.enabled": 0,
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "services.settings.server": "data:,#remote-settings-off",
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.unified": False,
}


class FirefoxError(RuntimeError):
    """Firefox could not be started, driven, or did not load the page."""


def firefox_binary() -> str | None:
    return shutil.which("firefox-esr") or shutil.which("firefox")


def _user_js(prefs: dict[str, object]) -> str:
    return "".join(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n"
                   for name, value in prefs.items())


def route_prefs(proxy: str | None, local_names: list[str]) -> dict[str, object]:
    """Every connection through ``proxy`` (http://HOST:PORT or socks5://HOST:PORT), or, without
    one, ``local_names`` resolved to loopback."""
    if proxy is None:
        return {"network.proxy.type": 0, "network.dns.localDomains": ",".join(local_names),
                "network.dns.disableIPv6": True}
    scheme, _, address = proxy.partition("://")
    host, _, port = address.rpartition(":")
    common = {"network.proxy.type": 1, "network.proxy.no_proxies_on": "",
              "network.proxy.allow_hijacking_localhost": True, "network.dns.disableIPv6": True}
    if scheme == "http":
        return {**common, "network.proxy.http": host, "network.proxy.http_port": int(port),
                "network.proxy.ssl": host, "network.proxy.ssl_port": int(port)}
    if scheme == "socks5":
        return {**common, "network.proxy.socks": host, "network.proxy.socks_port": int(port),
                "network.proxy.socks_version": 5, "network.proxy.socks_remote_dns": True}
    raise ValueError(f"proxy must be http://HOST:PORT or socks5://HOST:PORT, not {proxy!r}")


class Marionette:
    """One Marionette connection: ``command(name, params)`` returns the result or raises."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=COMMAND_TIMEOUT)
        self.reader = self.sock.makefile("rb")
        self.next_id = 0
        hello = self._read()
        if not isinstance(hello, dict) or hello.get("applicationType") != "gecko":
            raise FirefoxError(f"not a Marionette server: {hello!r}")

    def _read(self) -> object:
        length = b""
        while not length.endswith(b":"):
            byte = self.reader.read(1)
            if not byte or len(length) > 12:
                raise FirefoxError("Marionette closed the connection")
            length += byte
        body = self.reader.read(int(length[:-1]))
        return json.loads(body)

    def command(self, name: str, params: dict) -> dict:
        self.next_id += 1
        message = json.dumps([0, self.next_id, name, params]).encode()
        try:
            self.sock.sendall(str(len(message)).encode() + b":" + message)
            while True:
                reply = self._read()
                if isinstance(reply, list) and len(reply) == 4 and reply[1] == self.next_id:
                    break
        except (OSError, ValueError) as error:      # a timeout, a reset, a garbled reply
            raise FirefoxError(f"{name}: no answer from Marionette: {error!r}") from error
        _, _, error, result = reply
        if error:
            raise FirefoxError(f"{name}: {error.get('error')}: {error.get('message')}")
        return result

    def script(self, source: str, args: list, chrome: bool = False) -> object:
        self.command("Marionette:SetContext", {"value": "chrome" if chrome else "content"})
        return self.command("WebDriver:ExecuteScript", {"script": source, "args": args})["value"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


TRUST_SCRIPT = """
const db = Cc["@mozilla.org/security/x509certdb;1"].getService(Ci.nsIX509CertDB);
for (const der of arguments[0]) { db.addCertFromBase64(der, "C,,"); }
return arguments[0].length;
"""


def _der_base64(pem: Path) -> str:
    return base64.b64encode(ssl.PEM_cert_to_DER_cert(pem.read_text())).decode()


def _wait_for_port(profile: Path, proc: subprocess.Popen, log: Path) -> int:
    marker = profile / "MarionetteActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FirefoxError(f"firefox exited with {proc.returncode} at start: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            return int(marker.read_text().strip())
        time.sleep(0.1)
    raise FirefoxError(f"Marionette not listening after {START_TIMEOUT:.0f}s: "
                       f"{log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Kill Firefox's process group (it and its content processes), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(QUIT_TIMEOUT)


@contextlib.contextmanager
def running_firefox(workdir: Path, prefs: dict[str, object]) -> Iterator[Marionette]:
    """Firefox headless on a fresh profile under ``workdir`` with ``prefs``, a Marionette
    session open; killed (with its children) at the end whatever happened."""
    binary = firefox_binary()
    if binary is None:
        raise FirefoxError("firefox-esr is not installed (Debian: apt-get install firefox-esr)")
    workdir.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="firefox-profile-", dir=workdir))
    (profile / "user.js").write_text(_user_js({**QUIET_PREFS, **prefs}))
    log = profile.parent / f"{profile.name}.log"
    # MOZ_REMOTE_SETTINGS_DEVTOOLS: release builds honour services.settings.server only with it
    # (without, a dozen remote-settings connections leave at start-up)
    env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1",
               MOZ_REMOTE_SETTINGS_DEVTOOLS="1")
    env.pop("SSLKEYLOGFILE", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "--headless", "--marionette", "--remote-allow-system-access", "--no-remote",
             "--profile", str(profile), "about:blank"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    marionette = None
    try:
        port = _wait_for_port(profile, proc, log)
        try:
            marionette = Marionette(port)
        except (OSError, ValueError) as error:
            raise FirefoxError(f"cannot talk to Marionette on port {port}: {error!r}") from error
        marionette.command("WebDriver:NewSession", {})
        yield marionette
    finally:
        if marionette is not None:
            marionette.close()
        _stop(proc)


def firefox_get(url: str, *, workdir: Path, trust: list[Path], proxy: str | None,
                local_names: list[str]) -> str:
    """The text of the page at ``url`` as headless Firefox shows it (see the module)."""
    with running_firefox(workdir, route_prefs(proxy, local_names)) as marionette:
        marionette.script(TRUST_SCRIPT, [[_der_base64(path) for path in trust]], chrome=True)
        marionette.command("Marionette:SetContext", {"value": "content"})
        marionette.command("WebDriver:Navigate", {"url": url})
        text = marionette.script("return document.body ? document.body.textContent : ''", [])
    return str(text)


def main(argv: list[str] | None = None) -> int:
    """``python tests/firefox_client.py URL --workdir DIR --trust CA.pem [--proxy URL]
    [--local-name NAME]``: print the page's text (for a client run inside a namespace)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("url")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--trust", type=Path, action="append", default=[])
    parser.add_argument("--proxy", help="http://HOST:PORT or socks5://HOST:PORT")
    parser.add_argument("--local-name", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        text = firefox_get(args.url, workdir=args.workdir, trust=args.trust, proxy=args.proxy,
                           local_names=args.local_name)
    except FirefoxError as error:
        print(f"firefox: {error}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Firefox ESR through the proxy, judged by the server: every TLS field as in the direct run.

A real headless firefox-esr (tests/firefox_client.py: fresh profile, background fetches off, the
CA trusted in that profile only) loads a page of a real `mirror echo` server directly and
through `mirror run` with its default TLS engine: as an explicit proxy on loopback (HTTP
CONNECT, and SOCKS5 with the name resolved by the proxy), and, as root, as a transparent gateway
in network namespaces. The echo server reports the ClientHello and HTTP/2 frames it received;
the comparison is the other fidelity tests' (JA4, JA4_o, the JA3 string, ALPN, the lists, the
Akamai HTTP/2 fingerprint, the header order), and each field must be exactly the same: no
"declared" difference is accepted. On top, the raw hello is compared extension by extension
(``mirror.fingerprint.hello_diff``, which masks only what a client makes fresh per connection:
random, session id, key share material, the GREASE ECH payload):

- the hello the server saw against the hello Firefox sent on that very connection (the proxy's
  capture record): no difference at all;
- the hello the server saw against the direct run's: no difference except the GREASE ECH
  AEAD id, which NSS draws per hello from one random bit (AES-128-GCM or ChaCha20-Poly1305, so
  two direct runs differ there half the time), and which the first comparison holds to the
  client's own.

The page URL carries a fresh token (the same both ways, as the header comparison includes the
path), and the proxied connection judged is the one whose request carried it (Firefox opens
others on its own, to other hosts), so the choice is deterministic. Rows go to the README's
fidelity table with MIRROR_FIDELITY_TABLE=path.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
from conftest import running_echo
from fidelity_helpers import NAME, RESULTS, compare, last_id, newest_capture
from firefox_client import FirefoxError, firefox_binary, firefox_get
from netbed import NetBed, netbed_module_fixture  # noqa: F401
from proxyrun import running_proxy, transparent_proxy_in

from mirror.fingerprint.hello_diff import HelloDifference, hello_differences_of_bytes

LABEL = "Firefox ESR (headless)"
TRANSPARENT_PORT = 8081
# NSS's GREASE ECH: the AEAD id is drawn per hello; kdf and lengths are fixed
ECH_FIELD = "extension:encrypted_client_hello"
ECH_AEAD = re.compile(r"aead 000[13] ")


def require_firefox() -> None:
    if firefox_binary() is None:
        pytest.fail("firefox-esr is not installed (Debian: apt-get install firefox-esr); "
                    ".ci/run installs it")


def page_report(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        raise AssertionError(f"Firefox did not show the echo's JSON: {text[:300]!r}") from None


def drawn_per_connection(difference: HelloDifference) -> bool:
    """Only the GREASE ECH AEAD differs (see the module docstring)."""
    return (difference.field == ECH_FIELD
            and ECH_AEAD.sub("aead * ", difference.client)
            == ECH_AEAD.sub("aead * ", difference.sent))


def judge_firefox(via: str, direct: dict, proxied: dict, capture: dict) -> None:
    """Every field exactly the same (module docstring); the row lands in the fidelity table."""
    assert capture["tls"] and capture["tls"].get("raw"), "the capture holds no ClientHello"
    engine = (capture.get("upstream") or {}).get("engine")
    compare(LABEL, via, direct, proxied, capture)
    inexact = {field: value for field, value in RESULTS[(LABEL, via)].items() if value != "same"}
    assert not inexact, f"{LABEL} via {via} (engine {engine}): not exact: {inexact}"
    same_connection = hello_differences_of_bytes(bytes.fromhex(capture["tls"]["raw"]),
                                                 bytes.fromhex(proxied["tls"]["raw"]))
    assert same_connection == [], (f"engine {engine}: the server saw another hello than Firefox "
                                   f"sent: {[str(d) for d in same_connection]}")
    against_direct = [d for d in hello_differences_of_bytes(bytes.fromhex(direct["tls"]["raw"]),
                                                            bytes.fromhex(proxied["tls"]["raw"]))
                      if not drawn_per_connection(d)]
    assert against_direct == [], (f"engine {engine}: the proxied hello differs from the direct "
                                  f"run's: {[str(d) for d in against_direct]}")
    assert direct["tls"]["negotiated"] == proxied["tls"]["negotiated"]


# ------------------------------------------------------------------ explicit proxy, loopback
@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fidelity-firefox")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(workdir / "proxy", extra=extra) as proxy:
            yield {"port": port, "echo_ca": echo_ca, "proxy": proxy, "workdir": workdir}


def page_path(token: str) -> str:
    return f"/fidelity?client=firefox&token={token}"


def firefox_fetch(bed, via: str | None, token: str) -> dict:
    url = f"https://{NAME}:{bed['port']}{page_path(token)}"
    try:
        if via is None:
            text = firefox_get(url, workdir=bed["workdir"], trust=[bed["echo_ca"]], proxy=None,
                               local_names=[NAME])
        else:
            text = firefox_get(url, workdir=bed["workdir"], trust=[bed["proxy"].ca_cert],
                               proxy=f"{via}://127.0.0.1:{bed['proxy'].ports[via]}",
                               local_names=[])
    except FirefoxError as error:
        pytest.fail(f"firefox could not fetch {url} ({'direct' if via is None else via}): {error}")
    return page_report(text)


@pytest.mark.browser
@pytest.mark.parametrize("via", ["http", "socks5"])
def test_firefox_looks_the_same_through_the_explicit_proxy(bed, via):
    require_firefox()
    token = secrets.token_hex(8)    # one page, so the same :path both ways
    direct = firefox_fetch(bed, None, token)
    before = last_id(bed["proxy"].store)
    proxied = firefox_fetch(bed, via, token)
    capture = newest_capture(bed["proxy"].store, before, request=page_path(token))
    assert capture["mode"] == via
    assert capture["destination"]["host"] == NAME and capture["destination"]["port"] == bed["port"]
    assert proxied["http_version"] == direct["http_version"] == "HTTP/2"
    judge_firefox(via, direct, proxied, capture)


# ------------------------------------------------------------------ transparent gateway
@pytest.fixture(scope="module")
def gateway(netbed_module):
    bed = netbed_module
    bed.add_host(NAME, NetBed.SERVER_IP)
    bed.start_echo()
    _, store, proxy_ca = transparent_proxy_in(bed, TRANSPARENT_PORT)
    return {"bed": bed, "echo_ca": bed.workdir / "echo-ca" / "ca.pem", "proxy_ca": proxy_ca,
            "store": store}


def transparent_path(token: str) -> str:
    return f"/transparent?client=firefox&token={token}"


def firefox_in_client_namespace(gateway, ca: Path, token: str) -> dict:
    bed = gateway["bed"]
    script = Path(__file__).with_name("firefox_client.py")
    text = bed.check_python("client", [script, f"https://{NAME}{transparent_path(token)}",
                                       "--workdir", bed.workdir, "--trust", ca], timeout=150)
    return page_report(text)


@pytest.mark.root
@pytest.mark.browser
def test_firefox_looks_the_same_through_the_transparent_gateway(gateway):
    require_firefox()
    token = secrets.token_hex(8)    # one page, so the same :path both ways
    direct = firefox_in_client_namespace(gateway, gateway["echo_ca"], token)
    before = last_id(gateway["store"])
    gateway["bed"].redirect((443,), to_port=TRANSPARENT_PORT)
    try:
        proxied = firefox_in_client_namespace(gateway, gateway["proxy_ca"], token)
    finally:
        gateway["bed"].unredirect()
    capture = newest_capture(gateway["store"], before, request=transparent_path(token))
    assert capture["mode"] == "transparent"
    assert capture["destination"] == {"host": NetBed.SERVER_IP, "port": 443,
                                      "source": "so_original_dst"}
    judge_firefox("transparent", direct, proxied, capture)

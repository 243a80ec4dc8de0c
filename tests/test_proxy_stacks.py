"""Clients of other TLS stacks through the proxy, judged by the server: exact, field by field.

Python requests (OpenSSL), Go net/http (crypto/tls), wget (GnuTLS), Node https (OpenSSL) and
Java's HttpClient (SunJSSE) each fetch from a real `mirror echo` in the server namespace of a
test bed (tests/netbed.py): directly (the gateway only routing), through `mirror run`'s explicit
HTTP proxy in the gateway namespace (CONNECT), and through its transparent mode (iptables
REDIRECT), with the default TLS engine. None of these stacks varies its hello per connection,
so the server must see through the proxy exactly what it saw directly: every column of the
fidelity table "same", JA4 / JA4_o / the JA3 string equal, and the raw hello equal to the
direct run's and to the client's own (extension list, order and bytes; masked only: random,
session id, key share material, GREASE ECH payload). Rows land in the fidelity table.
"""

from __future__ import annotations

import pytest
from fidelity_helpers import NAME, compare_exactly, last_id, newest_capture
from netbed import NetBed, netbed_module_fixture  # noqa: F401
from proxyrun import transparent_proxy_in
from stack_clients import STACK_CLIENTS, Fetch, build_clients, fetch_report

pytestmark = pytest.mark.root

TRANSPARENT_PORT = 8082
EXPLICIT_PORT = 8083
EXPLICIT_PROXY = f"http://{NetBed.GATEWAY_CLIENT_IP}:{EXPLICIT_PORT}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return build_clients(tmp_path_factory.mktemp("stack-clients"))


@pytest.fixture(scope="module")
def gateway(netbed_module):
    bed = netbed_module
    bed.start_echo()
    explicit = ["--mode", "http", "--listen", f"{NetBed.GATEWAY_CLIENT_IP}:{EXPLICIT_PORT}"]
    _, store, proxy_ca = transparent_proxy_in(bed, TRANSPARENT_PORT, extra=explicit)
    bed.wait_listening("gateway", EXPLICIT_PORT)
    return {"bed": bed, "echo_ca": bed.workdir / "echo-ca" / "ca.pem", "proxy_ca": proxy_ca,
            "store": store}


def request_path(client) -> str:
    return f"/stacks?client={client.key}"


def fetch(gateway, builds, client, via: str | None) -> dict:
    """The echo's report of one fetch: direct (None), "http" (explicit) or "transparent"."""
    bed = gateway["bed"]
    url = f"https://{NAME}{request_path(client)}"
    if via is None:
        return fetch_report(bed, client, Fetch(url, gateway["echo_ca"], None), builds)
    proxy = EXPLICIT_PROXY if via == "http" else None
    if via == "transparent":
        bed.redirect((443,), to_port=TRANSPARENT_PORT)
    try:
        return fetch_report(bed, client, Fetch(url, gateway["proxy_ca"], proxy), builds)
    finally:
        bed.unredirect()


@pytest.mark.parametrize("via", ["http", "transparent"])
@pytest.mark.parametrize("client", STACK_CLIENTS, ids=[c.key for c in STACK_CLIENTS])
def test_client_of_another_stack_looks_exactly_the_same_through_the_proxy(gateway, builds,
                                                                          client, via):
    direct = fetch(gateway, builds, client, None)
    before = last_id(gateway["store"])
    proxied = fetch(gateway, builds, client, via)
    capture = newest_capture(gateway["store"], before, request=request_path(client))
    assert capture["mode"] == via
    assert capture["client"]["addr"] == NetBed.CLIENT_IP
    compare_exactly(client.label, via, direct, proxied, capture)

"""The capture record's TLS fidelity is what was measured on the wire, through a real `mirror run`.

System curl (OpenSSL) fetches from ``openssl s_server`` through the proxy. Under the default
engine its hello goes upstream by replay: the stored record's TLS verdicts are all exact and
say they were measured, and it holds no curl_cffi fingerprint (curl was not used). Under
``--tls-engine boringssl`` BoringSSL changes that hello: the plan's non-exact verdicts stay, each
with the measured difference it predicted. ``mirror captures show``, run as a user would, prints
the engine and the measured hello (the client's own, or the fields that differ) with the JA4
sent next to the client's; ``captures list --fidelity-below`` counts the measured verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from replay_servers import openssl_server
from test_tls_engine import curl, last_id, pki, proxy_for, records  # noqa: F401 (fixture)

TCP_OR_HTTP = ("tcp.", "http")
REPLAY_EXACT = "measured: the hello written upstream is the client's own"


def captures(store, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mirror", "captures", *args, "--store",
                           str(store)], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def one_connection(tmp_path, pki, engine: str | None) -> tuple[dict, object, int]:  # noqa: F811
    cert, key = pki["good"]
    with openssl_server(cert, key) as port, proxy_for(tmp_path, pki, engine) as proxy:
        before = last_id(proxy.store)
        assert curl(proxy, port)[0] == 200
        [record] = records(proxy.store, before, 1)
        record_id = last_id(proxy.store)
    return record, proxy, record_id


def tls_verdicts(record: dict) -> dict:
    return {name: verdict for name, verdict in record["emitted"]["fidelity"].items()
            if not name.startswith(TCP_OR_HTTP)}


@pytest.mark.timeout(120)
def test_a_replay_connection_records_measured_exact_verdicts_and_no_curl_fingerprint(
        tmp_path, pki):  # noqa: F811
    record, proxy, record_id = one_connection(tmp_path, pki, None)
    assert record["error"] is None, record["error"]
    assert record["upstream"]["engine"] == "replay"
    emitted = record["emitted"]
    assert emitted["tls"]["fingerprint"] is None
    hello = emitted["tls"]["hello"]
    assert hello["measured"] and hello["exact"] and hello["differences"] == []
    assert hello["predicted_exact"] is False           # BoringSSL would have changed it
    assert hello["ja4"] == record["tls"]["ja4"] and hello["ja3"] == record["tls"]["ja3_full"]
    verdicts = tls_verdicts(record)
    assert len(verdicts) > 10
    assert all(v == {"status": "exact", "detail": REPLAY_EXACT} for v in verdicts.values()), \
        verdicts
    assert any(name.startswith("tcp.") for name in emitted["fidelity"])

    shown = captures(proxy.store, "show", str(record_id))
    assert "engine" in shown and "replay (BoringSSL would change " in shown
    assert "hello" in shown and "the client's own (measured)" in shown
    assert f"ja4 sent    {record['tls']['ja4']} (same as the client)" in shown
    assert "ja3 sent" in shown
    assert "0 approximated  0 impossible  (100% exact)" in shown

    below = json.loads(captures(proxy.store, "list", "--json", "--fidelity-below", "100%"))
    assert record_id not in [row["id"] for row in below]


@pytest.mark.timeout(120)
def test_a_boringssl_connection_keeps_the_plans_verdicts_with_the_measured_differences(
        tmp_path, pki):  # noqa: F811
    record, proxy, record_id = one_connection(tmp_path, pki, "boringssl")
    assert record["error"] is None, record["error"]
    assert record["upstream"]["engine"] == "boringssl"
    emitted = record["emitted"]
    assert emitted["tls"]["fingerprint"]["tls_ciphers"]       # curl_cffi's, as before
    hello = emitted["tls"]["hello"]
    assert hello["measured"] and not hello["exact"]
    differing = {d["field"] for d in hello["differences"]}
    assert "cipher_suites" in differing
    verdicts = tls_verdicts(record)
    ciphers = verdicts["ciphers"]
    assert ciphers["status"] == "impossible"                  # the plan's, kept
    assert ciphers["detail"].startswith("the emitter cannot offer cipher(s)")
    assert "(measured: cipher_suites: client " in ciphers["detail"]
    # padding: predicted exact, measured different (BoringSSL's hello is shorter)
    assert verdicts["padding"]["status"] == "approximated"
    assert verdicts["padding"]["detail"].startswith(
        "measured, not predicted: extension:padding: client ")
    assert verdicts["padding"]["detail"].endswith(" bytes")
    assert verdicts["key_share_groups"] == {"status": "exact", "detail": ""}   # not different
    assert all(verdict["status"] != "exact" for name, verdict in verdicts.items()
               if "measured: " in (verdict["detail"] or ""))
    assert record["emitted"]["fidelity"]["http"]["status"] == "exact"

    shown = captures(proxy.store, "show", str(record_id))
    assert "engine" in shown and "boringssl (--tls-engine boringssl)" in shown
    assert "differs from the client's (measured) in" in shown
    assert "cipher_suites" in shown and "client 0,11,10,16,22,23,49," in shown
    assert f"(client: {record['tls']['ja4']})" in shown

    below = json.loads(captures(proxy.store, "list", "--json", "--fidelity-below", "100%"))
    assert record_id in [row["id"] for row in below]

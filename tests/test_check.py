"""`mirror check` end to end: it starts its own echo server and proxy, drives real clients
and scores what the server saw."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def check(*args: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "mirror", "check", "--json", *args],
                            capture_output=True, text=True, timeout=300)
    return result.returncode, json.loads(result.stdout)


@pytest.mark.browser
def test_check_passes_with_chrome_firefox_safari_and_chromium():
    code, report = check("--clients", "chrome,firefox,safari,chromium")
    assert code == 0, report
    assert report["score"] >= 0.9 and report["failed"] == []
    clients = {c["client"]: c for c in report["clients"]}
    assert set(clients) == {"chrome", "firefox", "safari", "chromium"}
    for name in ("chrome", "firefox", "safari"):
        fields = clients[name]["fields"]
        assert all(f["status"] == "same" for f in fields.values()), (name, fields)
        assert {"ja4", "ja4_o", "akamai", "h2_headers"} <= set(fields)


def test_declared_differences_lower_the_score_below_a_high_threshold():
    code, report = check("--clients", "curl", "--threshold", "0.99")
    assert code == 1
    fields = report["clients"][0]["fields"]
    assert fields["ja4"]["status"] == "declared" and "ciphers impossible" in fields["ja4"]["detail"]
    assert fields["akamai"]["status"] == "same"          # its HTTP/2 is relayed as sent
    assert report["failed"] == []                        # declared is not a failure


def test_a_client_that_cannot_run_fails_the_check():
    code, report = check("--clients", "firefox,no-such-client")
    assert code == 1
    assert report["failed"] == ["no-such-client"]
    assert "no-such-client" in report["clients"][1]["error"]

"""`mirror check` end to end: it starts its own echo server and proxy, drives real clients
and scores what the server saw."""

from __future__ import annotations

import json
import os
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
    # BoringSSL cannot send an OpenSSL hello: the proxy declares what differs, beforehand
    code, report = check("--clients", "curl", "--threshold", "0.99", "--tls-engine", "boringssl")
    assert code == 1
    fields = report["clients"][0]["fields"]
    assert fields["ja4"]["status"] == "declared" and "ciphers impossible" in fields["ja4"]["detail"]
    assert fields["akamai"]["status"] == "same"          # its HTTP/2 is relayed as sent
    assert report["failed"] == []                        # declared is not a failure


def test_an_openssl_client_comes_out_the_same_with_the_default_engine():
    """With --tls-engine auto the replay engine sends curl's own hello: the server sees
    curl's JA4 and JA3 string, not BoringSSL's approximation of them."""
    code, report = check("--clients", "curl", "--threshold", "0.99")
    fields = report["clients"][0]["fields"]
    assert code == 0, report
    assert fields["ja4"]["status"] == "same" and fields["ja3_string"]["status"] == "same"
    assert report["failed"] == []


def test_the_readme_example_passes_after_a_plain_install():
    """The README's `mirror check --clients ...` line, run as written: only clients a plain
    install has (curl_cffi's), and it passes its own threshold."""
    from conftest import REPO

    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("mirror check --clients"))
    args = line.split()[2:]
    assert "httpx" not in line and "chromium" not in line
    code, report = check(*[a for a in args if a != "--json"])
    assert code == 0, report
    assert report["failed"] == [] and report["score"] >= float(args[args.index("--threshold") + 1])


def run_check(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror", "check", *args], capture_output=True,
                          text=True, timeout=300, env=env, check=False)


def test_unknown_clients_are_refused_up_front_with_the_valid_names():
    done = run_check("--clients", "firefox,no-such-client")
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("mirror check: error: unknown client "
                                                "'no-such-client'; valid: chromium, curl, httpx, chrome")
    assert "firefox" in line and "tor" in line


def test_a_missing_python_client_says_how_to_install_it():
    # httpx made unimportable, as in an environment where it was never installed
    code = ("import sys; sys.modules['httpx'] = None; sys.argv[0] = 'mirror'; "
            "from mirror.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, "check", "--clients", "chrome,httpx"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("mirror check: error: httpx is not installed: install it with "
                                   "`pip install httpx`")


def test_a_client_that_fails_is_named_once_and_fails_the_check(tmp_path):
    (tmp_path / ".curlrc").write_text("proxy = http://127.0.0.1:1\n")   # nothing listens there
    done = run_check("--clients", "curl", env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "curl: curl:" not in done.stdout
    failure = next(line for line in done.stdout.splitlines() if line.startswith("curl: "))
    assert "Failed to connect to 127.0.0.1 port 1" in failure


def test_the_capture_judged_is_the_connection_the_server_reported_on(tmp_path):
    """Chromium may open two connections through the proxy, each with its own extension order,
    and captures are written as connections end: the capture whose hello went upstream with the
    JA4_o the server saw is the one judged, not the first one written."""
    from store_records import full_record

    from mirror.check.runner import NAME, capture_after
    from mirror.store import CaptureStore

    path = tmp_path / "captures.sqlite3"
    with CaptureStore(path) as store:
        for port, order in ((50001, "t13d1517h2_8daaf6152771_aaaaaaaaaaaa"),
                            (50002, "t13d1517h2_8daaf6152771_bbbbbbbbbbbb")):
            store.add(full_record(sni=NAME, client={"addr": "127.0.0.1", "port": port},
                                  emitted={"tls": {"hello": {"measured": True, "exact": True,
                                                             "ja4_o": order}}}))
        store.flush(timeout=10)

    def port_of(*args, **kwargs) -> int | None:
        client = capture_after(path, 0, *args, **kwargs).client
        return client.port if client is not None else None

    assert port_of("t13d1517h2_8daaf6152771_bbbbbbbbbbbb") == 50002
    assert port_of("t13d1517h2_8daaf6152771_aaaaaaaaaaaa") == 50001
    assert port_of(None) == 50001                           # nothing to pair on: the first
    assert port_of("t13d1517h2_8daaf6152771_cccccccccccc", grace=0.2) == 50001   # none pairs

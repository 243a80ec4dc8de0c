"""`mirror identify` and `mirror captures diff`: real connections against the reference fingerprints.

Real clients (curl_cffi's browser targets) talk to a real `mirror echo`, directly, through a
real `mirror run` proxy (its capture store) and under tcpdump (a pcap, with the TLS secrets
from SSLKEYLOGFILE). Each must be identified as the reference of its own family; a reference
changed in one field must no longer match exactly and must name that field; the CLI commands
must give the documented exit codes, also for bad input. Expected values are read from the
reference files and the records themselves, never from the code under test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import running_echo
from fidelity_helpers import last_id
from proxyrun import running_proxy

from mirror.echo.report_view import view_from_echo
from mirror.fingerprint.report import tls_report
from mirror.identify.command import identify_command
from mirror.identify.diff_command import diff_command
from mirror.identify.matching import identify
from mirror.identify.reference_view import view_from_reference
from mirror.identify.references import Reference, load_references
from mirror.pcapfile.analyze import analyze_capture
from mirror.pcapfile.connection_view import view_from_pcap_connection
from mirror.pcapfile.report import analysis_json
from mirror.store.record_view import view_from_record
from mirror.store.sqlite_store import CaptureStore
from mirror.wire.tls import is_grease, parse_client_hello

NAME = "echo.test"
FAMILIES = ["chrome", "firefox", "safari", "edge", "tor", "safari_ios", "chrome_android"]


@click.group()
def cli() -> None:
    """The two commands as the lead wires them: `identify` and `captures diff`."""


@cli.group("captures")
def captures() -> None:
    """captures group"""


captures.add_command(diff_command)
cli.add_command(identify_command)


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def references() -> list[Reference]:
    return load_references()


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("identify")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(workdir / "proxy", extra=extra) as proxy:
            yield {"port": port, "echo_ca": echo_ca, "proxy": proxy, "workdir": workdir}


def fetch(bed, family: str, *, proxied: bool = False, http1: bool = False) -> dict:
    from curl_cffi import CurlHttpVersion, CurlOpt, requests

    port = bed["port"]
    if proxied:
        session = requests.Session(impersonate=family, verify=str(bed["proxy"].ca_cert), timeout=20,
                                   proxy=bed["proxy"].url("http"))
    else:
        session = requests.Session(impersonate=family, verify=str(bed["echo_ca"]), timeout=20,
                                   curl_options={CurlOpt.RESOLVE: [f"{NAME}:{port}:127.0.0.1"]})
    kwargs = {"http_version": CurlHttpVersion.V1_1} if http1 else {}
    with session:
        response = session.get(f"https://{NAME}:{port}/identify?client={family}", **kwargs)
    assert response.status_code == 200, response.text[:300]
    return response.json()


# ------------------------------------------------------------------ independent expectations
def shared_order(a: list[str], b: list[str]) -> bool:
    """The header names both lists carry come in the same order (and there is one at least)."""
    common = set(a) & set(b)
    return bool(common) and [n for n in a if n in common] == [n for n in b if n in common]


def same_key_fields(x: Reference, y: Reference) -> bool:
    """Equal JA4, Akamai and shared HTTP/2 header order, read straight from the two files."""
    if x.ja4 != y.ja4:
        return False
    if x.data["http2"] and y.data["http2"]:
        return x.akamai == y.akamai and shared_order(x.http2_header_order, y.http2_header_order)
    if x.data["http2"] or y.data["http2"]:
        return False
    return shared_order(x.http1_header_order, y.http1_header_order)


# ------------------------------------------------------------------ (1) every reference is itself
def test_every_reference_identifies_as_itself_and_ties_are_stated(references):
    assert len(references) >= 2
    for ref in references:
        ident = identify(view_from_reference(ref), references)
        assert ident.complete, ref.name
        assert ident.exact is not None and ident.exact.name == ref.name
        best = ident.nearest[0]
        assert (best.name, best.score, best.differing) == (ref.name, 100.0, ())
        tied = {r.name for r in ident.tied}
        expected = {other.name for other in references if same_key_fields(ref, other)}
        assert tied == expected, ref.name
    names = {r.name for r in references}
    if {"chrome", "chromium"} <= names:  # curl_cffi's Chrome and Debian's Chromium: one key
        chrome = next(r for r in references if r.name == "chrome")
        assert {r.name for r in identify(view_from_reference(chrome), references).tied} >= {"chrome", "chromium"}


@pytest.mark.parametrize("family", FAMILIES)
def test_real_client_identifies_as_its_reference(bed, references, family):
    report = fetch(bed, family)
    ident = identify(view_from_echo(report, family), references)
    assert report["http_version"] == "HTTP/2"
    assert ident.key_fields == ("ja4", "akamai", "h2_header_order") and ident.complete
    tied = [r.name for r in ident.tied]
    assert ident.exact is not None, [(c.name, c.score, c.differing) for c in ident.nearest[:3]]
    assert ident.exact.name == family or (family in tied and len(tied) > 1), tied


@pytest.mark.parametrize("family", ["chrome", "firefox"])
def test_real_http1_client_identifies_through_the_http1_variant(bed, references, family):
    report = fetch(bed, family, http1=True)
    assert report["http_version"] == "HTTP/1.1" and report["tls"]["alpn"] == ["http/1.1"]
    ident = identify(view_from_echo(report, family), references)
    assert ident.key_fields == ("ja4", "h1_header_order")
    assert ident.exact is not None and family in [r.name for r in ident.tied]


# ------------------------------------------------------------------ (2) one field changed
def drop_cipher(raw: bytes, cipher: int) -> bytes:
    """The handshake message with one cipher suite removed (lengths fixed up)."""
    sid_len = raw[4 + 34]
    at = 4 + 34 + 1 + sid_len
    count = int.from_bytes(raw[at:at + 2], "big")
    ciphers = [raw[at + 2 + i:at + 4 + i] for i in range(0, count, 2)]
    kept = b"".join(c for c in ciphers if int.from_bytes(c, "big") != cipher)
    assert len(kept) == count - 2
    body = raw[4:at] + len(kept).to_bytes(2, "big") + kept + raw[at + 2 + count:]
    return b"\x01" + len(body).to_bytes(3, "big") + body


def perturbed(ref: Reference, **sections) -> Reference:
    data = copy.deepcopy(ref.data)
    data.update(sections)
    return Reference(ref.name + "-changed", ref.path, data)


def assert_only(ident, ref: Reference, field: str) -> None:
    assert ident.exact is None or ident.exact.name != ref.name
    assert not any(r.name == ref.name for r in ident.tied)
    best = ident.nearest[0]
    assert best.name == ref.name, [(c.name, c.score, c.differing) for c in ident.nearest[:3]]
    assert best.differing == (field,)
    assert best.score < 100


def test_one_changed_field_is_named_and_breaks_the_exact_match(references):
    for ref in references:
        raw = ref.raw_client_hello
        hello = parse_client_hello(raw)
        cipher = [c for c in hello.cipher_suites if not is_grease(c)][-1]
        changed = parse_client_hello(drop_cipher(raw, cipher))
        assert cipher not in changed.cipher_suites
        view = view_from_reference(perturbed(ref, tls=tls_report(changed)))
        ident = identify(view, references)
        assert_only(ident, ref, "ciphers")
        assert ident.exact is None  # no other reference has this JA4 either

        http2 = ref.data["http2"]
        if not http2 or len(http2["settings"]) < 2:
            continue
        settings = [list(s) for s in http2["settings"]]
        settings[0], settings[1] = settings[1], settings[0]
        akamai = ";".join(f"{k}:{v}" for k, v in settings) + ref.akamai[ref.akamai.index("|"):]
        assert akamai != ref.akamai
        swapped = dict(http2, settings=settings, akamai=akamai)
        assert_only(identify(view_from_reference(perturbed(ref, http2=swapped)), references), ref, "h2_settings")

        order = list(http2["header_order"])
        order[0], order[1] = order[1], order[0]
        reordered = dict(http2, header_order=order)
        assert_only(identify(view_from_reference(perturbed(ref, http2=reordered)), references), ref,
                    "h2_header_order")


# ------------------------------------------------------------------ (3) captures diff on a real store
def wait_for_records(store: Path, after: int, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists():
            with CaptureStore(store, create=False) as reader:
                found = [reader.get(s.id) for s in reader.list(limit=None, after_id=after, newest_first=False)]
            found = [r for r in found if r.get("sni") == NAME and r.get("http")]
            if len(found) >= count:
                return found
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} captures after id {after}")


def user_agent(record: dict) -> str:
    headers = record["http"]["requests"][0]["headers"]
    return next(v for n, v in headers if n.lower() == "user-agent")


def test_captures_diff_of_real_captures_and_references(bed, references):
    store = bed["proxy"].store
    before = last_id(store)
    fetch(bed, "chrome", proxied=True)
    fetch(bed, "firefox", proxied=True)
    records = wait_for_records(store, before, 2)
    chrome = next(r for r in records if "Chrome/" in user_agent(r))
    firefox = next(r for r in records if "Firefox/" in user_agent(r))

    result = run("captures", "diff", chrome["id"], firefox["id"], "--json", "--store", store)
    assert result.exit_code == 1, result.output
    out = json.loads(result.output)
    fields = {f["field"]: f for f in out["fields"]}
    assert out["equal"] is False
    # equal or not exactly as the two records say
    tls_a, tls_b = chrome["tls"], firefox["tls"]
    assert tls_a["ja4"] != tls_b["ja4"] and fields["ja4"]["equal"] is False
    assert fields["legacy_version"]["equal"] == (tls_a["legacy_version"] == tls_b["legacy_version"])
    assert fields["alpn"]["equal"] == (tls_a["alpn"] == tls_b["alpn"])
    assert fields["record_size_limit"]["equal"] == (tls_a["record_size_limit"] == tls_b["record_size_limit"])
    assert chrome["http"]["h2"]["akamai"] != firefox["http"]["h2"]["akamai"]
    assert fields["akamai"]["equal"] is False
    assert fields["http_version"]["equal"] is True
    a_order = chrome["http"]["requests"][0]["header_order"]
    b_order = firefox["http"]["requests"][0]["header_order"]
    assert fields["h2_header_order"]["equal"] == shared_order(a_order, b_order)
    assert fields["h2_header_order"]["a"] == a_order and fields["h2_header_order"]["b"] == b_order
    assert set(fields["h2_header_names"]["a"]) == set(a_order) - set(b_order)
    assert set(fields["h2_header_names"]["b"]) == set(b_order) - set(a_order)
    assert "akamai" not in out["differing"] and "akamai" in out["differing_all"]  # follows from its parts
    settings_differ = chrome["http"]["h2"]["settings"] != firefox["http"]["h2"]["settings"]
    assert ("h2_settings" in out["differing"]) == settings_differ
    ciphers_differ = ([is_grease(c) or c for c in tls_a["cipher_suites"]]
                      != [is_grease(c) or c for c in tls_b["cipher_suites"]])  # GREASE: place only
    assert ("ciphers" in out["differing"]) == ciphers_differ

    result = run("captures", "diff", chrome["id"], chrome["id"], "--store", store)
    assert result.exit_code == 0, result.output
    assert "equal on every field" in result.output

    # the capture against its reference: only Chrome's per-connection extension order differs
    result = run("captures", "diff", chrome["id"], "ref:chrome", "--json", "--store", store)
    out = json.loads(result.output)
    fields = {f["field"]: f for f in out["fields"]}
    assert all(fields[k]["equal"] for k in ("ja4", "akamai", "h2_header_order", "ciphers", "h2_settings"))
    assert out["differing"] == ["extension_order"]
    assert result.exit_code == 1
    assert fields["extension_order"]["a"] != fields["extension_order"]["b"]
    assert sorted(map(str, fields["extension_order"]["a"])) == sorted(map(str, fields["extension_order"]["b"]))

    # Firefox does not permute: its capture equals its reference on every field
    result = run("captures", "diff", "ref:firefox", firefox["id"], "--json", "--store", store)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["differing_all"] == []
    result = run("captures", "diff", "ref:firefox", firefox["id"], "--store", store)
    assert result.exit_code == 0 and "ref:firefox" in result.output and "equal on every field" in result.output
    assert run("captures", "diff", "ref:chrome", "ref:chrome").exit_code == 0
    text = run("captures", "diff", "ref:firefox", "ref:tor")
    assert text.exit_code == 1 and "differ" in text.output and "cert_compression" in text.output

    # identify on the same store: the chrome capture is chrome (or tied with chromium)
    result = run("identify", chrome["id"], "--store", store, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["identified"] and "chrome" in out["tied"] and out["exact"] in ("chrome", "chromium")
    result = run("identify", firefox["id"], "--store", store)
    assert result.exit_code == 0 and "exact match: firefox" in result.output
    assert view_from_record(firefox).get("ja4") == tls_b["ja4"]


# ------------------------------------------------------------------ (4) a real pcap
CLIENT = textwrap.dedent("""
    import sys
    from curl_cffi import CurlOpt, requests
    port, ca = sys.argv[1], sys.argv[2]
    with requests.Session(impersonate="firefox", verify=ca, timeout=20,
                          curl_options={CurlOpt.RESOLVE: [f"echo.test:{port}:127.0.0.1"]}) as s:
        assert s.get(f"https://echo.test:{port}/pcap").status_code == 200
""")


def test_identify_every_connection_of_a_real_pcap(tmp_path, references):
    if os.geteuid() != 0:
        pytest.skip("capturing on loopback with tcpdump needs root (CI runs as root)")
    if not shutil.which("tcpdump"):
        pytest.fail("tcpdump is needed (Debian package tcpdump)")
    pcap, keylog = tmp_path / "firefox.pcap", tmp_path / "keys.log"
    with running_echo(tmp_path / "echo-ca") as (port, ca):
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-s", "0", "-w", str(pcap),
                                 f"tcp port {port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "listening on" not in (dump.stderr.readline() or "listening on"):
                pass
            time.sleep(0.2)
            env = dict(os.environ, SSLKEYLOGFILE=str(keylog))
            subprocess.run([sys.executable, "-c", CLIENT, str(port), str(ca)], env=env, check=True, timeout=60)
            time.sleep(0.5)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
    assert keylog.read_text().strip(), "curl_cffi wrote no TLS secrets"

    result = run("identify", "--pcap", pcap, "--keylog", keylog, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    seen = [c for c in out if c["nearest"]]
    assert len(seen) == 1
    firefox = seen[0]
    assert firefox["connection"]["dport"] == port and firefox["connection"]["sni"] == NAME
    assert firefox["identified"] and firefox["exact"] == "firefox" and firefox["tied"] == ["firefox"]
    assert firefox["key_fields"] == ["ja4", "akamai", "h2_header_order"]
    assert firefox["nearest"][0]["reference"] == "firefox"

    # without the secrets only the ClientHello is visible: exact on TLS only, exit 1
    result = run("identify", "--pcap", pcap, "--json")
    assert result.exit_code == 1, result.output
    tls_only = next(c for c in json.loads(result.output) if c["nearest"])
    assert tls_only["exact"] == "firefox" and not tls_only["complete"] and tls_only["unobserved"] == ["http"]
    text = run("identify", "--pcap", pcap, "--keylog", keylog)
    assert text.exit_code == 0 and "exact match: firefox" in text.output

    # the same from `mirror fingerprint --json`'s objects (fingerprint strings and header names only)
    objects = analysis_json(analyze_capture(pcap, keylog=keylog.read_bytes()))
    views = [view_from_pcap_connection(o) for o in objects if o["ja4"]]
    assert len(views) == 1
    ident = identify(views[0], references)
    assert ident.complete and ident.exact is not None and ident.exact.name == "firefox"


# ------------------------------------------------------------------ (5) bad input
def test_bad_input_exits_2(bed, tmp_path):
    store = bed["proxy"].store
    assert store.exists()
    not_a_pcap = tmp_path / "notes.txt"
    not_a_pcap.write_text("hello, not a capture\n")
    bad_refs = tmp_path / "refs"
    bad_refs.mkdir()
    (bad_refs / "broken.json").write_text('{"name": "broken"}')
    empty_refs = tmp_path / "empty"
    empty_refs.mkdir()
    cases = [
        ("identify",),
        ("identify", "1", "--pcap", not_a_pcap, "--store", store),
        ("identify", "999999", "--store", store),
        ("identify", "1", "--store", tmp_path / "missing.sqlite3"),
        ("identify", "abc", "--store", store),
        ("identify", "--pcap", not_a_pcap),
        ("identify", "--pcap", tmp_path / "missing.pcap"),
        ("identify", "1", "--keylog", not_a_pcap, "--store", store),
        ("identify", "1", "--store", store, "--references", bad_refs),
        ("identify", "1", "--store", store, "--references", empty_refs),
        ("captures", "diff", "ref:chrome", "ref:no-such-client"),
        ("captures", "diff", "ref:", "ref:chrome"),
        ("captures", "diff", "first", "ref:chrome"),
        ("captures", "diff", "999999", "ref:chrome", "--store", store),
        ("captures", "diff", "1", "2", "--store", tmp_path / "missing.sqlite3"),
        ("captures", "diff", "ref:chrome", "ref:firefox", "--references", bad_refs),
    ]
    for args in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
    missing = run("identify", "999999", "--store", store)
    assert "no capture with id 999999" in missing.output
    assert "broken.json" in run("identify", "1", "--store", store, "--references", bad_refs).output


def test_damaged_and_partial_records(bed, tmp_path):
    """A failed connection (no TLS, no HTTP) is never identified nor equal to anything; one
    whose HTTP was not seen is exact on TLS only (exit 1, HTTP listed as unobserved)."""
    before = last_id(bed["proxy"].store)
    fetch(bed, "tor", proxied=True)
    tor = wait_for_records(bed["proxy"].store, before, 1)[0]
    store = tmp_path / "damaged.sqlite3"
    with CaptureStore(store) as writer:
        writer.add({"mode": "http", "tls": None, "http": None,
                    "error": {"stage": "client-tls", "message": "reset"}})
        writer.add(dict(tor, http=None, protocol="passthrough"))
        writer.flush()
        damaged, tls_only = (s.id for s in writer.list(limit=None, newest_first=False))

    result = run("identify", damaged, "--store", store)
    assert result.exit_code == 1 and "nothing to identify" in result.output
    result = run("captures", "diff", damaged, "ref:tor", "--store", store, "--json")
    assert result.exit_code == 1 and json.loads(result.output)["equal"] is False
    assert run("captures", "diff", damaged, damaged, "--store", store).exit_code == 1

    result = run("identify", tls_only, "--store", store, "--json")
    out = json.loads(result.output)
    assert result.exit_code == 1, result.output
    assert out["exact"] == "tor" and out["complete"] is False and out["unobserved"] == ["http"]
    result = run("captures", "diff", tls_only, "ref:tor", "--store", store, "--json")
    out = json.loads(result.output)
    assert result.exit_code == 0 and out["equal"] and out["differing_all"] == []  # ref's HTTP: not shown
    result = run("captures", "diff", "ref:tor", tls_only, "--store", store, "--json")
    assert result.exit_code == 0

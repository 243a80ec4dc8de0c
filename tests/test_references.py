"""The reference fingerprints in fingerprints/: they load, they validate, corruption is caught,
and they still describe what the clients send today (a live curl_cffi chrome run against a fresh
`mirror echo`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, native_target, running_echo

from mirror.identify.references import (
    Reference,
    ReferenceFileError,
    default_directory,
    load_references,
)

FINGERPRINTS = REPO / "fingerprints"
REQUIRED = {"chromium", "chrome", "edge", "safari", "safari_ios", "firefox", "tor",
            "chrome_android", "curl", "requests", "httpx"}
NAME = "echo.test"


@pytest.fixture(scope="module")
def references() -> dict[str, Reference]:
    return {ref.name: ref for ref in load_references(FINGERPRINTS)}


def test_the_shipped_references_are_the_repositorys():
    """Editable or from the wheel, the default references are fingerprints/'s files."""
    shipped = sorted(path.name for path in default_directory().glob("*.json"))
    assert shipped == sorted(path.name for path in FINGERPRINTS.glob("*.json"))
    for name in shipped:
        assert (default_directory() / name).read_bytes() == (FINGERPRINTS / name).read_bytes()
    assert [r.name for r in load_references()] == [r.name for r in load_references(FINGERPRINTS)]


def test_every_file_loads(references):
    files = sorted(FINGERPRINTS.glob("*.json"))
    assert files
    assert sorted(ref.path for ref in references.values()) == files


def test_the_set_covers_the_required_clients(references):
    assert set(references) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_reference_shape(references, name):
    ref = references[name]
    assert ref.path.stem == name
    assert ref.ja4.startswith("t1") and ref.ja4.count("_") == 2
    assert ref.raw_client_hello[0] == 0x01
    assert ref.data["provenance"]["command"].startswith("python tools/capture_references.py")
    if ref.http1_header_order is not None:
        assert any(h.lower() == "host" for h in ref.http1_header_order)
    if ref.akamai is not None:
        assert ref.akamai.count("|") == 3
        assert ref.http2_pseudo_header_order and all(p.startswith(":") for p in ref.http2_pseudo_header_order)
        assert all(not h.startswith(":") and h == h.lower() for h in ref.http2_header_order)


def test_clients_that_speak_h2_have_an_http2_section(references):
    for name in REQUIRED - {"requests"}:
        assert references[name].akamai is not None, name
    assert references["requests"].akamai is None
    assert references["requests"].http1_header_order is not None


# ------------------------------------------------------------------ corruption

def corrupt(tmp_path: Path, name: str, change) -> Path:
    """A copy of the directory holding one good file and one mutated copy of NAME."""
    source = FINGERPRINTS / f"{name}.json"
    shutil.copy(FINGERPRINTS / "curl.json", tmp_path / "curl.json")
    data = json.loads(source.read_text())
    change(data)
    bad = tmp_path / f"{name}.json"
    bad.write_text(json.dumps(data))
    return bad


def _drop(section: str, key: str):
    def change(data):
        del (data[section] if section else data)[key]
    return change


def _set(section: str, key: str, value):
    def change(data):
        data[section][key] = value
    return change


def _flip_ja4(data):
    a, b, c = data["tls"]["ja4"].split("_")
    data["tls"]["ja4"] = f"{a}_{b}_{'0' * len(c) if c != '0' * len(c) else '1' * len(c)}"


def _alter_raw(data):
    # Change the first cipher suite of the hello: still parses, but the fingerprints differ.
    raw = bytearray.fromhex(data["tls"]["raw_client_hello"])
    offset = 4 + 2 + 32
    offset += 1 + raw[offset]          # session id
    offset += 2                        # cipher list length
    raw[offset:offset + 2] = b"\x00\x0a" if raw[offset:offset + 2] != b"\x00\x0a" else b"\x00\x05"
    data["tls"]["raw_client_hello"] = raw.hex()


def _truncate_raw(data):
    data["tls"]["raw_client_hello"] = data["tls"]["raw_client_hello"][:200]


CORRUPTIONS = {
    "missing tls.ja4": (_drop("tls", "ja4"), "tls.ja4"),
    "missing provenance": (_drop("", "provenance"), "provenance"),
    "missing http2.akamai": (_drop("http2", "akamai"), "http2.akamai"),
    "missing http1": (_drop("", "http1"), "http1"),
    "ja4 altered": (_flip_ja4, "tls.ja4"),
    "ja4_o altered": (_set("tls", "ja4_o", "t13d0000h2_000000000000_000000000000"), "tls.ja4_o"),
    "ja3_full altered": (_set("tls", "ja3_full", "771,1,2,3,4"), "tls.ja3_full"),
    "raw hex altered": (_alter_raw, "tls."),
    "raw hex truncated": (_truncate_raw, "tls.raw_client_hello"),
    "raw not hex": (_set("tls", "raw_client_hello", "zz01"), "tls.raw_client_hello"),
    "cipher list wrong type": (_set("tls", "cipher_suites", "4865"), "tls.cipher_suites"),
    "header order wrong type": (_set("http1", "header_order", [1, 2]), "http1.header_order"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_copy_is_rejected_naming_file_and_field(tmp_path, case):
    change, field = CORRUPTIONS[case]
    bad = corrupt(tmp_path, "chrome", change)
    with pytest.raises(ReferenceFileError) as caught:
        load_references(tmp_path)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.path == bad
    assert "chrome.json" in str(error)
    assert error.field.startswith(field)
    assert error.field in str(error)


def test_altered_raw_hello_is_caught_by_the_recomputed_fingerprint(tmp_path):
    corrupt(tmp_path, "chrome", _alter_raw)
    with pytest.raises(ReferenceFileError) as caught:
        load_references(tmp_path)
    assert caught.value.field in {"tls.ja4", "tls.ja4_o", "tls.ja3_full"}


def test_invalid_json_is_rejected(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ReferenceFileError, match="broken.json"):
        load_references(tmp_path)


def test_unchanged_copy_loads(tmp_path):
    corrupt(tmp_path, "safari", lambda data: None)
    assert [r.name for r in load_references(tmp_path)] == ["curl", "safari"]


# ------------------------------------------------------------------ live

def test_live_chrome_matches_the_stored_reference(references, tmp_path):
    """curl_cffi's chrome target today gives the stored JA4 and Akamai string.

    JA4 (sorted) rather than JA4_o: Chrome shuffles its extension order per connection.
    """
    from curl_cffi import CurlOpt, requests

    stored = references["chrome"]
    target = native_target("chrome")
    assert stored.data["client"]["impersonate"] == target
    with running_echo(tmp_path / "ca") as (port, _ca):
        options = {CurlOpt.RESOLVE: [f"{NAME}:{port}:127.0.0.1"]}
        with requests.Session(impersonate=target, verify=False, timeout=20,
                              curl_options=options) as session:
            echo = session.get(f"https://{NAME}:{port}/live").json()
    assert echo["tls"]["ja4"] == stored.ja4
    assert echo["http2"]["akamai"] == stored.akamai
    assert echo["http2"]["request"]["header_order"] == stored.http2_header_order

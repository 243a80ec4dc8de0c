"""fingerprint_from_hello against real clients: what a curl_cffi target sends, re-sent through
the plan, must look the same to the echo server — field by field — except exactly where the plan
said it would not (GREASE values are random by design and compared as "a GREASE value here")."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from conftest import running_echo
from curl_cffi import requests
from curl_cffi.const import CurlOpt

from mirror.emit.tls_fingerprint import EmitPlan, _trust_anchor_ids, fingerprint_from_hello
from mirror.fingerprint.tls import ja3_string, ja4, ja4_o
from mirror.wire.http2 import H2Fingerprint, Priority
from mirror.wire.tls import is_grease, read_client_hello

NAME = "echo.test"
TARGETS = ["chrome", "firefox", "safari", "safari_ios", "tor", "edge", "chrome_android"]


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    with running_echo(tmp_path_factory.mktemp("emit-ca")) as (port, _):
        yield port


def _session(port: int) -> requests.Session:
    return requests.Session(verify=False, timeout=20,
                            curl_options={CurlOpt.RESOLVE: [f"{NAME}:{port}:127.0.0.1"]})


def _record(raw_hex: str):
    raw = bytes.fromhex(raw_hex)
    hello = read_client_hello(b"\x16\x03\x01" + struct.pack(">H", len(raw)) + raw)
    assert hello is not None and hello.raw == raw
    return hello


def _prio(p: dict | None) -> Priority | None:
    return None if p is None else Priority(p["stream_id"], p["depends_on"], p["weight"], p["exclusive"])


def _h2(report: dict) -> H2Fingerprint:
    return H2Fingerprint(
        settings=[(k, v) for k, v in report["settings"]], window_update=report["window_update"],
        priority_frames=[_prio(p) for p in report["priority_frames"]],
        headers_priority=_prio(report["headers_priority"]),
        pseudo_header_order=report["pseudo_header_order"], headers_stream_id=1)


def _g(values):
    """GREASE values are random per connection: keep where they are, not which one."""
    return ["GREASE" if is_grease(v) else v for v in values]


def _tls_view(tls: dict) -> dict:
    """The fields compared, with GREASE positions kept and GREASE values blanked."""
    return {
        "ja4": tls["ja4"],
        "ja4_o": tls["ja4_o"],
        "ja3_full": tls["ja3_full"],
        "cipher_suites": _g(tls["cipher_suites"]),
        "extension_types": _g(tls["extension_types"]),
        "alpn": tls["alpn"],
        "supported_groups": _g(tls["supported_groups"]),
        "signature_algorithms": tls["signature_algorithms"],
        "supported_versions": _g(tls["supported_versions"]),
        "key_share_groups": _g([k["group"] for k in tls["key_shares"]]),
        "key_share_lengths": [k["length"] for k in tls["key_shares"]],
        "compress_certificate": tls["compress_certificate"],
        "alps": tls["alps"],
        "record_size_limit": tls["record_size_limit"],
        "delegated_credentials": tls["delegated_credentials"],
        "psk_key_exchange_modes": tls["psk_key_exchange_modes"],
        "ec_point_formats": tls["ec_point_formats"],
        "legacy_version": tls["legacy_version"],
        "session_id_length": len(tls["session_id"]) // 2,
    }


def _without_padding(tls: dict) -> dict:
    """The echo report recomputed from the raw hello with the padding extension removed."""
    hello = _record(tls["raw"])
    hello = dataclasses.replace(hello, extensions=[e for e in hello.extensions if e.type != 21])
    out = dict(tls)
    out.update(ja4=ja4(hello), ja4_o=ja4_o(hello), ja3_full=ja3_string(hello),
               extension_types=hello.extension_types,
               extensions=[e for e in tls["extensions"] if e["type"] != 21])
    return out


def _ext_data(tls: dict) -> dict[int, str]:
    return {e["type"]: e["data"] for e in tls["extensions"] if not is_grease(e["type"])}


# Extension bodies that are fresh per connection on any client (keys, random GREASE inside).
PER_CONNECTION_DATA = {51, 43, 10, 0x0A0A}


@pytest.mark.parametrize("target", TARGETS)
def test_plan_reproduces_target(echo, target):
    port = echo
    with _session(port) as s:
        direct = s.get(f"https://{NAME}:{port}/direct", impersonate=target).json()
    hello = _record(direct["tls"]["raw"])
    # The plan is fed the original hello; its JA4_o is the one to reproduce (Chrome shuffles
    # its extensions per connection, so only the fed-in order is a meaningful target).
    assert ja4(hello) == direct["tls"]["ja4"] and ja4_o(hello) == direct["tls"]["ja4_o"]
    plan = fingerprint_from_hello(hello, _h2(direct["http2"]))
    assert isinstance(plan, EmitPlan)

    headers = [(n, v) for n, v in direct["http2"]["request"]["headers"] if not n.startswith(":")]
    with _session(port) as s:
        again = s.get(f"https://{NAME}:{port}/direct", impersonate=plan.fingerprint,
                      http_version=plan.http_version, default_headers=False, headers=headers,
                      accept_encoding=None).json()

    # TLS: every compared field equal. The plan claimed exact for all of them, so it must be.
    # The one allowed exception: padding (21), which the plan reports approximated when
    # BoringSSL's size rule (moved by GREASE ECH's random length) decides it; then the hellos
    # are compared with padding taken out of both, so it is the only thing that may differ.
    direct_tls, again_tls = direct["tls"], again["tls"]
    if (21 in direct_tls["extension_types"]) != (21 in again_tls["extension_types"]):
        assert plan.status("padding") == "approximated", plan.fidelity["padding"]
        direct_tls, again_tls = _without_padding(direct_tls), _without_padding(again_tls)
    want, got = _tls_view(direct_tls), _tls_view(again_tls)
    differing = {k for k in want if want[k] != got[k]}
    assert not differing, {k: (want[k], got[k]) for k in differing}
    for name in ("ciphers", "extension_order", "supported_groups", "signature_algorithms",
                 "key_share_groups", "cert_compression", "alpn", "alps", "grease", "psk",
                 "session_ticket", "record_size_limit", "delegated_credentials",
                 "supported_versions"):
        assert plan.status(name) == "exact", (name, plan.fidelity[name])

    # Extension bodies: equal except where the plan says approximated (and per-connection keys).
    a, b = _ext_data(direct_tls), _ext_data(again_tls)
    assert set(a) == set(b)
    body_differs = {t for t in a if a[t] != b[t]} - PER_CONNECTION_DATA
    approximated_ext = set()
    if plan.status("ech") == "approximated":
        approximated_ext.add(65037)
        assert 65037 in a and direct["tls"]["ech"]["ech_type"] == again["tls"]["ech"]["ech_type"] == 0
        assert "GREASE" in plan.fidelity["ech"].detail
    else:
        assert 65037 not in a
    if plan.status("trust_anchors") == "approximated":
        approximated_ext.add(51764)
        def ids(hexdata: str) -> list[int]:
            return sorted(_trust_anchor_ids(bytes.fromhex(hexdata)))

        assert ids(a[51764]) == ids(b[51764]) == sorted(plan.fingerprint.tls_trust_anchors)
    assert body_differs <= approximated_ext, body_differs

    # HTTP/2: Akamai string, HEADERS priority flags, pseudo-header and header order.
    assert again["http2"]["akamai"] == direct["http2"]["akamai"]
    assert again["http2"]["headers_priority"] == direct["http2"]["headers_priority"]
    assert again["http2"]["request"]["headers"] == direct["http2"]["request"]["headers"]
    for name in ("h2_settings", "h2_window_update", "h2_priority", "h2_pseudo_header_order"):
        assert plan.status(name) == "exact", (name, plan.fidelity[name])


# ------------------------------------------------------------------ hand-built hellos

def _ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack(">HH", ext_type, len(body)) + body


def _u16s(values, prefix=2) -> bytes:
    data = b"".join(struct.pack(">H", v) for v in values)
    return len(data).to_bytes(prefix, "big") + data


def _hello(ciphers, extensions: bytes):
    body = (struct.pack(">H", 0x0303) + bytes(32) + b"\x20" + bytes(32) + _u16s(ciphers)
            + b"\x01\x00" + struct.pack(">H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return read_client_hello(b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake)


def _tls13_extensions(with_psk: bool) -> bytes:
    exts = (_ext(10, _u16s([29, 23])) + _ext(13, _u16s([0x0403, 0x0804]))
            + _ext(43, b"\x04\x03\x04\x03\x03")
            + _ext(51, struct.pack(">HHH", 36, 29, 32) + bytes(32)) + _ext(45, b"\x01\x01"))
    if with_psk:
        identity = struct.pack(">H", 16) + b"T" * 16 + struct.pack(">I", 1234)
        binder = b"\x20" + bytes(32)
        exts += _ext(41, struct.pack(">H", len(identity)) + identity
                     + struct.pack(">H", len(binder)) + binder)
    return exts


def test_pre_shared_key_is_impossible():
    plan = fingerprint_from_hello(_hello([0x1301, 0xC02F], _tls13_extensions(with_psk=True)))
    assert plan.status("psk") == "impossible"
    assert "pre_shared_key" in plan.fidelity["psk"].detail
    assert 41 in plan.dropped_extensions
    assert "41" not in plan.fingerprint.tls_extension_order.split("-")
    assert plan.status("extension_order") == "impossible"
    without = fingerprint_from_hello(_hello([0x1301, 0xC02F], _tls13_extensions(with_psk=False)))
    assert without.status("psk") == "exact" and without.status("extension_order") == "exact"
    assert without.fingerprint.tls_extension_order == "10-13-43-51-45"


def test_cipher_the_emitter_cannot_offer_is_flagged():
    # 0xC0AC (TLS_ECDHE_ECDSA_WITH_AES_128_CCM) is valid IANA but not in curl-impersonate.
    plan = fingerprint_from_hello(_hello([0x1301, 0xC0AC, 0xC02F], _tls13_extensions(False)))
    assert plan.status("ciphers") == "impossible"
    assert "0xc0ac" in plan.fidelity["ciphers"].detail
    assert plan.dropped_ciphers == [0xC0AC]
    assert plan.fingerprint.tls_ciphers == ["TLS_AES_128_GCM_SHA256",
                                            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]


def test_fields_follow_the_hello_not_a_profile():
    """An unusual hello: its own values come through, and what cannot is named."""
    exts = (_ext(10, _u16s([24, 0x0A0A, 23])) + _ext(13, _u16s([0x0503, 0x0808]))
            + _ext(43, b"\x04\x03\x04\x03\x03") + _ext(27, b"\x04\x00\x03\x00\x01")
            + _ext(28, b"\x10\x00") + _ext(22, b"")
            + _ext(51, struct.pack(">HHH", 38, 24, 34) + bytes(34)))
    plan = fingerprint_from_hello(_hello([0xC030], exts))
    fp = plan.fingerprint
    assert fp.tls_supported_groups == ["P-384", "P-256"]
    assert fp.tls_signature_hashes == ["ecdsa_secp384r1_sha384"]
    assert plan.status("signature_algorithms") == "impossible"  # 0x0808 ed448
    assert fp.tls_cert_compression == ["zstd", "zlib"]
    assert fp.tls_record_size_limit == 4096
    assert fp.tls_extension_order == "10-13-43-27-28-51"
    assert plan.dropped_extensions == [22]
    assert plan.status("grease") == "approximated"  # GREASE in the middle of the groups only
    assert fp.tls_key_shares_limit == 1 and plan.status("key_share_groups") == "exact"
    assert plan.status("h2_settings") == "approximated"  # no HTTP/2 start given


def test_field_fidelity_survives_pickling():
    import pickle

    from mirror.fingerprint.fidelity import FieldFidelity

    for value in (FieldFidelity("exact"), FieldFidelity("approximated", "why: ünïcode")):
        copy = pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        assert copy == value and type(copy) is FieldFidelity

"""The replayed ClientHello equals the client's own on every field but the fresh ones.

Real hellos: curl_cffi's browser targets, the hellos kept in fingerprints/, and every hello in
the vector pcaps. Each is rewritten and compared field by field, raw extension bytes included.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO, pcap_hellos, vectors_dir
from replay_hello_checks import assert_same_but_fresh

from mirror.replay.groups import natural_length
from mirror.replay.hello import retry_hello, rewrite_hello
from mirror.wire.tls import (
    EXT_COOKIE,
    EXT_EARLY_DATA,
    EXT_KEY_SHARE,
    EXT_PRE_SHARED_KEY,
    EXT_SESSION_TICKET,
    is_grease,
    parse_client_hello,
    read_client_hello,
)


def fingerprint_hellos() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted((REPO / "fingerprints").glob("*.json")):
        raw = bytes.fromhex((json.loads(path.read_text()).get("tls") or {})
                            .get("raw_client_hello", ""))
        if raw:
            out.append((path.stem, raw if raw[0] == 0x16
                        else b"\x16\x03\x01" + len(raw).to_bytes(2, "big") + raw))
    return out


def vector_hellos() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted((vectors_dir() / "foxio-ja4" / "pcap").glob("*.pcapng")):
        try:
            out.extend(pcap_hellos(path))
        except ValueError:  # a classic pcap under a .pcapng name
            continue
    return out


def assert_replayed(first_flight: bytes) -> None:
    original = read_client_hello(first_flight)
    replay = rewrite_hello(original)
    again = read_client_hello(replay.records())
    assert again.raw == replay.message
    assert replay.hello == parse_client_hello(replay.message)  # built, not re-parsed: the same
    assert_same_but_fresh(original, again)
    for new in again.key_share_entries:
        if not is_grease(new.group) and natural_length(new.group) == new.key_length:
            assert replay.share_for(new.group) is not None


@pytest.mark.parametrize("family", ["chrome", "firefox", "safari", "tor"])
def test_curl_cffi_hellos_replayed(real_hellos, family):
    assert_replayed(real_hellos[family])


def test_fingerprint_hellos_replayed():
    hellos = fingerprint_hellos()
    assert len(hellos) >= 5
    for _, flight in hellos:
        assert_replayed(flight)


def test_vector_pcap_hellos_replayed():
    hellos = vector_hellos()
    assert len(hellos) >= 5
    for _, flight in hellos:
        assert_replayed(flight)


def test_two_replays_differ_and_ech_enc_is_a_real_x25519_key(real_hellos):
    from cryptography.hazmat.primitives.asymmetric import x25519

    original = read_client_hello(real_hellos["chrome"])
    one, two = rewrite_hello(original), rewrite_hello(original)
    assert one.message != two.message and len(one.message) == len(two.message)
    ech = one.hello.ech
    assert ech is not None and ech.ech_type == 0 and len(ech.enc) == 32
    x25519.X25519PublicKey.from_public_bytes(ech.enc)  # parses as a point
    assert ech.enc != two.hello.ech.enc


def test_psk_and_early_data_dropped_everything_else_kept():
    from conftest import make_hello

    psk = (bytes.fromhex("000a0004") + b"tick" + bytes(4)
           + bytes.fromhex("0021") + b"\x20" + bytes(32))
    key_share = bytes.fromhex("0024001d0020") + bytes(32)
    raw = make_hello(extensions=[(0, b"\x00\x07\x00\x00\x04host"), (EXT_KEY_SHARE, key_share),
                                 (EXT_EARLY_DATA, b""), (45, b"\x01\x01"),
                                 (EXT_SESSION_TICKET, b"old ticket"),
                                 (EXT_PRE_SHARED_KEY, psk)], session_id=bytes(32))
    replay = rewrite_hello(raw)
    assert replay.hello.extension_types == [0, EXT_KEY_SHARE, 45, EXT_SESSION_TICKET]
    assert replay.hello.ext(EXT_SESSION_TICKET).data == b""
    assert replay.dropped == [EXT_EARLY_DATA, EXT_PRE_SHARED_KEY]


def test_retry_hello_keeps_random_and_session_id_one_share_cookie_after_key_share(real_hellos):
    first = rewrite_hello(read_client_hello(real_hellos["firefox"]))
    second = retry_hello(first, 0x0018, b"cookie!")
    hello = second.hello
    assert hello == parse_client_hello(second.message)
    cookie_only = retry_hello(first, None, b"c")
    assert cookie_only.hello == parse_client_hello(cookie_only.message)
    assert cookie_only.hello.key_shares == first.hello.key_shares
    assert (hello.random, hello.session_id) == (first.hello.random, first.hello.session_id)
    assert hello.key_shares == [(0x0018, 97)]
    types = hello.extension_types
    assert types[types.index(EXT_KEY_SHARE) + 1] == EXT_COOKIE
    assert hello.ext(EXT_COOKIE).value == b"cookie!"
    assert [t for t in types if t != EXT_COOKIE] == first.hello.extension_types
    for mine, theirs in zip([e for e in hello.extensions if e.type not in (EXT_COOKIE, EXT_KEY_SHARE)],
                            [e for e in first.hello.extensions if e.type != EXT_KEY_SHARE], strict=True):
        assert mine.data == theirs.data


def test_engine_is_sans_io():
    """No module of mirror/replay imports asyncio, socket, ssl or curl_cffi (cryptography itself
    loads socket through email.utils, so this reads the modules' own imports)."""
    import ast

    for path in (REPO / "mirror" / "replay").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"asyncio", "socket", "ssl", "curl_cffi"}, \
                    (path.name, name)

"""mirror.fingerprint.hello_diff on real hellos: what is masked compares equal, everything else
is named field by field.

Real first flights: the reference fingerprints, the vector captures and live curl_cffi clients
(two connections of the same client differ only in what the client makes fresh). Negative cases
change one field of a real hello and must name exactly that field.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import capture_client_hello

from mirror.fingerprint.hello_diff import (
    hello_differences,
    hello_differences_of_bytes,
    parse_hello_bytes,
)
from mirror.replay.hello import rewrite_hello
from mirror.wire.errors import WireError
from mirror.wire.tls import ClientHello, parse_client_hello

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = sorted((ROOT / "fingerprints").glob("*.json"))


def _reference(name: str) -> ClientHello:
    raw = bytes.fromhex(json.loads((ROOT / "fingerprints" / f"{name}.json").read_text())
                        ["tls"]["raw_client_hello"])
    return parse_client_hello(raw)


def _rebuild(hello: ClientHello, extensions: list[tuple[int, bytes]] | None = None, *,
             ciphers: list[int] | None = None, session_id: bytes | None = None,
             legacy_version: int | None = None) -> ClientHello:
    """``hello`` with some fields replaced, re-encoded."""
    sid = hello.session_id if session_id is None else session_id
    suites = hello.cipher_suites if ciphers is None else ciphers
    body = struct.pack("!H", legacy_version or hello.legacy_version) + hello.random
    body += bytes([len(sid)]) + sid
    body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", c) for c in suites)
    body += bytes([len(hello.compression_methods)]) + bytes(hello.compression_methods)
    exts = [(e.type, e.data) for e in hello.extensions] if extensions is None else extensions
    block = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in exts)
    body += struct.pack("!H", len(block)) + block
    return parse_client_hello(b"\x01" + len(body).to_bytes(3, "big") + body)


def _replace_ext(hello: ClientHello, ext_type: int, data: bytes) -> ClientHello:
    return _rebuild(hello, [(e.type, data if e.type == ext_type else e.data)
                            for e in hello.extensions])


def _fields(client: ClientHello, sent: ClientHello) -> set[str]:
    return {d.field for d in hello_differences(client, sent)}


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.stem)
def test_a_reference_hello_equals_itself_and_its_replay(path):
    hello = _reference(path.stem)
    assert hello_differences(hello, hello) == []
    # the replay engine makes fresh exactly what the client makes fresh per connection
    fresh = rewrite_hello(hello)
    assert fresh.message != hello.raw
    assert hello_differences(hello, fresh.hello) == []


@pytest.mark.parametrize("target", ["safari", "safari_ios"])
def test_two_connections_of_one_client_are_equal(target):
    """Random, session id, key shares and GREASE values differ between the two connections;
    nothing else does (these clients keep their extension order and send no ECH)."""
    first, second = (capture_client_hello(target) for _ in range(2))
    one, two = parse_hello_bytes(first), parse_hello_bytes(second)
    assert one.random != two.random
    assert hello_differences(one, two) == []
    assert hello_differences_of_bytes(first, second) == []


@pytest.mark.parametrize("target, varies", [
    ("chrome", {"extensions", "extension:encrypted_client_hello", "extension:unknown_51764"}),
    ("firefox", {"extension:encrypted_client_hello"}),
    ("tor", {"extension:encrypted_client_hello"})])
def test_what_a_client_draws_per_connection_beyond_the_masks(target, varies):
    """Chrome permutes its extensions and its trust anchor IDs (51764), and these BoringSSL
    builds draw the GREASE ECH payload
    length (128-224 bytes) per connection: the masks keep lengths, so only those fields may
    be named, and over eight connections they are."""
    hellos = [parse_hello_bytes(capture_client_hello(target)) for _ in range(8)]
    fields = {d.field for other in hellos[1:] for d in hello_differences(hellos[0], other)}
    assert fields == varies


def test_different_clients_are_told_apart():
    fields = _fields(_reference("chrome"), _reference("firefox"))
    assert {"cipher_suites", "extensions", "extension:supported_groups",
            "extension:signature_algorithms"} <= fields
    curl = _reference("curl")
    assert "extension:padding" not in _fields(curl, curl)
    assert {"cipher_suites", "extensions"} <= _fields(curl, _reference("requests")) | {"extensions"}


def test_grease_values_are_masked_but_not_their_places():
    hello = _reference("chrome")
    grease = hello.cipher_suites[0]
    assert grease & 0x0F0F == 0x0A0A
    other = 0x1A1A if grease != 0x1A1A else 0x2A2A
    assert _fields(hello, _rebuild(hello, ciphers=[other, *hello.cipher_suites[1:]])) == set()
    moved = [*hello.cipher_suites[1:], grease]
    assert _fields(hello, _rebuild(hello, ciphers=moved)) == {"cipher_suites"}
    dropped = hello.cipher_suites[1:]
    assert _fields(hello, _rebuild(hello, ciphers=dropped)) == {"cipher_suites"}


def test_cipher_order_legacy_version_and_session_id_length():
    hello = _reference("safari")
    swapped = [hello.cipher_suites[1], hello.cipher_suites[0], *hello.cipher_suites[2:]]
    assert _fields(hello, _rebuild(hello, ciphers=swapped)) == {"cipher_suites"}
    assert _fields(hello, _rebuild(hello, legacy_version=0x0301)) == {"legacy_version"}
    assert _fields(hello, _rebuild(hello, session_id=bytes(32))) == set()   # content masked
    assert _fields(hello, _rebuild(hello, session_id=b"")) == {"session_id_length"}


def test_padding_length_must_match():
    hello = _reference("curl")
    assert hello.padding_length
    shorter = _replace_ext(hello, 21, bytes(hello.padding_length - 1))
    assert _fields(hello, shorter) == {"extension:padding"}
    without = _rebuild(hello, [(e.type, e.data) for e in hello.extensions if e.type != 21])
    assert _fields(hello, without) == {"extensions"}


def test_key_share_groups_and_lengths_compared_keys_masked():
    hello = _reference("firefox")
    entries = hello.key_share_entries
    assert len(entries) >= 2

    def share(pairs) -> bytes:
        body = b"".join(struct.pack("!HH", g, len(k)) + k for g, k in pairs)
        return struct.pack("!H", len(body)) + body

    pairs = [(e.group, e.key_exchange) for e in entries]
    fresh = [(g, bytes(len(k))) for g, k in pairs]
    assert _fields(hello, _replace_ext(hello, 51, share(fresh))) == set()
    assert _fields(hello, _replace_ext(hello, 51, share(pairs[::-1]))) == {"extension:key_share"}
    longer = [(pairs[0][0], pairs[0][1] + b"\x00"), *pairs[1:]]
    assert _fields(hello, _replace_ext(hello, 51, share(longer))) == {"extension:key_share"}


def test_grease_ech_content_masked_lengths_kept():
    hello = _reference("firefox")
    ech = hello.ech
    assert ech is not None and not ech.is_inner

    def outer(enc: bytes, payload: bytes, config_id: int = 7) -> bytes:
        return (struct.pack("!BHHB", 0, ech.kdf_id, ech.aead_id, config_id)
                + struct.pack("!H", len(enc)) + enc + struct.pack("!H", len(payload)) + payload)

    same_shape = outer(bytes(len(ech.enc)), bytes(ech.payload_length))
    assert _fields(hello, _replace_ext(hello, 65037, same_shape)) == set()
    longer = outer(bytes(len(ech.enc)), bytes(ech.payload_length + 32))
    assert _fields(hello, _replace_ext(hello, 65037, longer)) == {
        "extension:encrypted_client_hello"}


def test_psk_absent_upstream_is_expected_present_upstream_is_not():
    resumed = _reference("safari")
    psk_body = (struct.pack("!H", 4 + 6) + struct.pack("!H", 4) + b"tick" + b"\x00\x00\x00\x01"
                + struct.pack("!H", 33) + b"\x20" + bytes(32))
    with_psk = _rebuild(resumed, [*((e.type, e.data) for e in resumed.extensions), (41, psk_body)])
    assert hello_differences(with_psk, resumed) == []
    assert _fields(resumed, with_psk) == {"extensions"}


def test_an_unknown_extension_body_is_compared_byte_for_byte():
    hello = _reference("safari")
    private = _rebuild(hello, [*((e.type, e.data) for e in hello.extensions), (0xFE01, b"ab")])
    changed = _rebuild(hello, [*((e.type, e.data) for e in hello.extensions), (0xFE01, b"ac")])
    assert _fields(private, changed) == {"extension:unknown_65025"}
    assert str(hello_differences(private, changed)[0]) == (
        "extension:unknown_65025: client 6162, sent 6163")


def test_not_a_hello_raises_wire_error():
    with pytest.raises(WireError):
        parse_hello_bytes(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
    with pytest.raises(WireError):
        parse_hello_bytes(b"\x16\x03\x01\x00\x50\x01")          # incomplete
    with pytest.raises(WireError):
        hello_differences_of_bytes(_reference("curl").raw, b"\x01\x00\x00\x01\x00")

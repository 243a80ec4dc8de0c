"""TLS client fingerprints over a parsed ClientHello: JA3, JA3N and JA4 (with _r, _o, _ro).

JA3 (Salesforce): ``legacy_version,ciphers,extensions,groups,point_formats`` in decimal, each
list ``-``-joined in wire order with GREASE removed; the fingerprint is its MD5. JA3N sorts the
extension numbers first, so it is stable across Chrome's extension shuffling.

JA4 (FoxIO, BSD-3-Clause): ``a_b_c`` where

* ``a`` = transport (``t`` TCP, ``q`` QUIC, ``d`` DTLS) + version (highest non-GREASE
  supported_versions entry, else legacy_version) + ``d``/``i`` (SNI present or not) + cipher count
  + extension count (GREASE excluded, capped at 99) + ALPN (first and last character of the first
  protocol; if either byte is not ASCII alphanumeric, the first and last hex digit of the
  protocol's bytes, per the current spec; ``00`` without ALPN);
* ``b`` = first 12 hex digits of SHA-256 over the sorted 4-hex-digit cipher list;
* ``c`` = the same over the sorted extension list without SNI and ALPN, then ``_`` and the
  signature algorithms in wire order (no ``_`` when there are none).

``_r`` prints the lists instead of hashing them; ``_o`` keeps wire order (SNI and ALPN kept);
``_ro`` is both. An empty list hashes to ``000000000000``.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import md5, sha256

from mirror.wire.tls import EXT_ALPN, EXT_SERVER_NAME, ClientHello

GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))

TLS_VERSION_CODES = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
EMPTY_HASH = "000000000000"


def _no_grease(values: Sequence[int]) -> list[int]:
    return [v for v in values if v not in GREASE]


def ja3_string(hello: ClientHello, *, sort_extensions: bool = False) -> str:
    extensions = _no_grease(hello.extension_types)
    if sort_extensions:
        extensions = sorted(extensions)
    return ",".join(
        [
            str(hello.legacy_version),
            "-".join(map(str, _no_grease(hello.cipher_suites))),
            "-".join(map(str, extensions)),
            "-".join(map(str, _no_grease(hello.supported_groups))),
            "-".join(map(str, hello.ec_point_formats)),
        ]
    )


def ja3(hello: ClientHello) -> str:
    return md5(ja3_string(hello).encode()).hexdigest()


def ja3n_string(hello: ClientHello) -> str:
    return ja3_string(hello, sort_extensions=True)


def ja3n(hello: ClientHello) -> str:
    return md5(ja3n_string(hello).encode()).hexdigest()


def _version_code(hello: ClientHello) -> str:
    versions = _no_grease(hello.supported_versions)
    version = max(versions) if versions else hello.legacy_version
    return TLS_VERSION_CODES.get(version, "00")


def _alnum(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def alpn_code(hello: ClientHello) -> str:
    """The two ALPN characters of JA4_a."""
    protocols = hello.alpn_raw
    if not protocols or not protocols[0]:
        return "00"
    first = protocols[0]
    if _alnum(first[0]) and _alnum(first[-1]):
        return chr(first[0]) + chr(first[-1])
    hexed = first.hex()
    return hexed[0] + hexed[-1]


def ja4_a(hello: ClientHello, transport: str = "t") -> str:
    ciphers = _no_grease(hello.cipher_suites)
    extensions = _no_grease(hello.extension_types)
    sni = "d" if hello.has(EXT_SERVER_NAME) else "i"
    return (f"{transport}{_version_code(hello)}{sni}{min(len(ciphers), 99):02d}"
            f"{min(len(extensions), 99):02d}{alpn_code(hello)}")


_HEX4 = "{:04x}".format


def _hex_list(values: list[int]) -> str:
    return ",".join(map(_HEX4, values))


def _hash(text: str) -> str:
    if not text:
        return EMPTY_HASH
    return sha256(text.encode()).hexdigest()[:12]


def _parts(hello: ClientHello, original_order: bool) -> tuple[str, str]:
    ciphers = _no_grease(hello.cipher_suites)
    extensions = _no_grease(hello.extension_types)
    if original_order:
        cipher_text = _hex_list(ciphers)
    else:
        cipher_text = _hex_list(sorted(ciphers))
        extensions = sorted(e for e in extensions if e not in (EXT_SERVER_NAME, EXT_ALPN))
    ext_text = _hex_list(extensions)
    sigalgs = _hex_list(_no_grease(hello.signature_algorithms))
    if sigalgs:
        ext_text = f"{ext_text}_{sigalgs}"
    return cipher_text, ext_text


def _ja4(head: str, parts: tuple[str, str], hashed: bool) -> str:
    ciphers, extensions = parts
    if hashed:
        return f"{head}_{_hash(ciphers)}_{_hash(extensions)}"
    return f"{head}_{ciphers}_{extensions}"


def ja4(hello: ClientHello, transport: str = "t") -> str:
    return _ja4(ja4_a(hello, transport), _parts(hello, original_order=False), hashed=True)


def ja4_o(hello: ClientHello, transport: str = "t") -> str:
    return _ja4(ja4_a(hello, transport), _parts(hello, original_order=True), hashed=True)


def ja4_r(hello: ClientHello, transport: str = "t") -> str:
    return _ja4(ja4_a(hello, transport), _parts(hello, original_order=False), hashed=False)


def ja4_ro(hello: ClientHello, transport: str = "t") -> str:
    return _ja4(ja4_a(hello, transport), _parts(hello, original_order=True), hashed=False)


def tls_fingerprints(hello: ClientHello, transport: str = "t") -> dict[str, str]:
    """Every TLS fingerprint of one hello, keyed as the CLI and the capture store print them
    (each part made once: the same values as the functions above)."""
    ja3_full = ja3_string(hello)
    head = ja4_a(hello, transport)
    sorted_parts = _parts(hello, original_order=False)
    wire_parts = _parts(hello, original_order=True)
    return {
        "ja3": md5(ja3_full.encode()).hexdigest(),
        "ja3_full": ja3_full,
        "ja3n": ja3n(hello),
        "ja4": _ja4(head, sorted_parts, hashed=True),
        "ja4_r": _ja4(head, sorted_parts, hashed=False),
        "ja4_o": _ja4(head, wire_parts, hashed=True),
        "ja4_ro": _ja4(head, wire_parts, hashed=False),
    }

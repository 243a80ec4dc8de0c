"""Build a curl_cffi ``Fingerprint`` that re-sends a parsed ClientHello (and HTTP/2 start).

``fingerprint_from_hello(hello, h2)`` mirrors the hello field by field — ciphers, extension
order, groups, signature algorithms, key shares, certificate compression, ALPN/ALPS, ECH,
GREASE, session ticket, record size limit, delegated credentials, trust anchors — and the
HTTP/2 SETTINGS, WINDOW_UPDATE, HEADERS priority and pseudo-header order. It never looks for a
known browser: an unknown client comes out as faithfully as a known one.

With curl_cffi 0.17 (curl-impersonate's BoringSSL fork) the explicit extension order is an
*allowlist*: an extension missing from it is not sent. So the order lists exactly the
extensions the emitter can produce; the others are dropped and reported.

Every field gets a :class:`FieldFidelity`: ``exact`` (the wire will carry the same value),
``approximated`` (sent, but not byte-identical; ``detail`` says how) or ``impossible`` (cannot
be sent; ``detail`` says why). Pure: no I/O; the only non-mirror import is the dataclass it
fills in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from curl_cffi.fingerprints import Fingerprint

from mirror.fingerprint.fidelity import FieldFidelity, Status
from mirror.wire.http2 import H2Fingerprint
from mirror.wire.tls import ClientHello, is_grease

# IANA cipher suite ids -> the names curl-impersonate's BoringSSL accepts in SSL_CIPHER_LIST.
CIPHER_NAMES: dict[int, str] = {
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0033: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x0039: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256",
    0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x0067: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256",
    0x006B: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
    0x008C: "TLS_PSK_WITH_AES_128_CBC_SHA",
    0x008D: "TLS_PSK_WITH_AES_256_CBC_SHA",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC008: "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC012: "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xC035: "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA",
    0xC036: "TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAC: "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
}

TLS13_CIPHER_NAMES = frozenset(CIPHER_NAMES[c] for c in (0x1301, 0x1302, 0x1303))

# Named groups -> BoringSSL curve-list names.
GROUP_NAMES: dict[int, str] = {
    21: "P-224", 23: "P-256", 24: "P-384", 25: "P-521", 29: "X25519",
    256: "ffdhe2048", 257: "ffdhe3072", 4588: "X25519MLKEM768", 25497: "X25519Kyber768Draft00",
}

# SignatureScheme -> BoringSSL sig-alg names (also used for delegated_credentials).
SIGALG_NAMES: dict[int, str] = {
    0x0201: "rsa_pkcs1_sha1", 0x0203: "ecdsa_sha1",
    0x0401: "rsa_pkcs1_sha256", 0x0403: "ecdsa_secp256r1_sha256", 0x0420: "rsa_pkcs1_sha256_legacy",
    0x0501: "rsa_pkcs1_sha384", 0x0503: "ecdsa_secp384r1_sha384",
    0x0601: "rsa_pkcs1_sha512", 0x0603: "ecdsa_secp521r1_sha512",
    0x0804: "rsa_pss_rsae_sha256", 0x0805: "rsa_pss_rsae_sha384", 0x0806: "rsa_pss_rsae_sha512",
    0x0807: "ed25519",
    0x0904: "mldsa44", 0x0905: "mldsa65", 0x0906: "mldsa87",
}

CERT_COMPRESSION_NAMES: dict[int, str] = {1: "zlib", 2: "brotli", 3: "zstd"}

TLS_VERSION_NAMES: dict[int, str] = {0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}

# Extensions the emitter can put on the wire (each enabled by the options set below).
EMITTABLE_EXTENSIONS: frozenset[int] = frozenset({
    0, 5, 10, 11, 13, 16, 18, 23, 27, 28, 34, 35, 43, 45, 51, 17513, 17613, 65037, 65281, 51764,
})
EXT_PADDING = 21

# Why an extension cannot be sent.
UNSENDABLE_REASONS: dict[int, str] = {
    1: "max_fragment_length is not implemented by BoringSSL",
    15: "heartbeat is not implemented by BoringSSL",
    17: "status_request_v2 is not implemented by BoringSSL",
    22: "encrypt_then_mac is not implemented by BoringSSL",
    41: "pre_shared_key resumes the client's own session: its identity and binder are bound to "
        "a secret only the client and its server hold",
    42: "early_data needs a resumed session (pre_shared_key), which the emitter does not have",
    44: "cookie only answers a HelloRetryRequest from the server",
    49: "post_handshake_auth is not offered by BoringSSL",
    50: "signature_algorithms_cert is not offered by BoringSSL",
    57: "quic_transport_parameters belong to QUIC, not TLS over TCP",
}

# Never sent upstream, and masked when the sent hello is compared with the client's: a PSK
# (with early_data) resumes the client's session with its own server.
RESUMPTION_EXTENSIONS = frozenset({41, 42})
# Fidelity names that are not ClientHello bytes, or whose hello part masking covers (the
# extension order is judged from ``dropped_extensions`` instead).
HELLO_MASKED_FIELDS = frozenset({"psk", "extension_order", "h2_settings", "h2_window_update",
                                 "h2_priority", "h2_pseudo_header_order"})

PSEUDO_LETTERS = {":method": "m", ":authority": "a", ":scheme": "s", ":path": "p"}
H2_SETTINGS_KNOWN = frozenset({1, 2, 3, 4, 5, 6, 8, 9})


@dataclass(slots=True)
class EmitPlan:
    """The Fingerprint to pass as ``impersonate=`` plus, per field, how faithful it is.

    ``http_version`` is the curl_cffi ``http_version`` the request must use so ALPN matches
    (curl_cffi does not apply ``Fingerprint.http_version`` by itself).
    """

    fingerprint: Fingerprint
    fidelity: dict[str, FieldFidelity]
    http_version: str
    dropped_extensions: list[int] = field(default_factory=list)
    dropped_ciphers: list[int] = field(default_factory=list)

    def status(self, name: str) -> Status:
        return self.fidelity[name].status

    def not_exact(self) -> dict[str, FieldFidelity]:
        return {k: v for k, v in self.fidelity.items() if v.status != "exact"}

    def hello_exact(self, ignore: frozenset[str] | tuple[str, ...] = ()) -> bool:
        """Whether the ClientHello sent is predicted byte-exact after masking what the client
        makes fresh per connection (``mirror.fingerprint.hello_diff``): every hello field
        exact, except what masking covers (a pre_shared_key / early_data never sent) and the
        names in ``ignore``."""
        skip = HELLO_MASKED_FIELDS.union(ignore)
        return (all(v.status == "exact" for k, v in self.fidelity.items() if k not in skip)
                and set(self.dropped_extensions) <= RESUMPTION_EXTENSIONS)


def _exact() -> FieldFidelity:
    return FieldFidelity("exact")


def _approx(detail: str) -> FieldFidelity:
    return FieldFidelity("approximated", detail)


def _impossible(detail: str) -> FieldFidelity:
    return FieldFidelity("impossible", detail)


def _names(values: Sequence[int], table: dict[int, str]) -> tuple[list[str], list[int]]:
    """Map the non-GREASE values through ``table``; return (names, values with no name)."""
    names, missing = [], []
    for value in values:
        if is_grease(value):
            continue
        if value in table:
            names.append(table[value])
        else:
            missing.append(value)
    return names, missing


def _hexes(values: list[int]) -> str:
    return ", ".join(f"{v:#06x}" for v in values)


def _trust_anchor_ids(data: bytes) -> list[str] | None:
    """Trust anchor IDs (u16 list length, then u8-length binary relative OIDs) as dotted text."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
        return None
    out, pos = [], 2
    while pos < len(data):
        n = data[pos]
        item = data[pos + 1:pos + 1 + n]
        if n == 0 or len(item) != n or item[-1] & 0x80:
            return None
        arcs, arc = [], 0
        for byte in item:
            arc = (arc << 7) | (byte & 0x7F)
            if not byte & 0x80:
                arcs.append(str(arc))
                arc = 0
        out.append(".".join(arcs))
        pos += 1 + n
    return out


def _grease_fidelity(hello: ClientHello) -> tuple[bool, FieldFidelity]:
    """BoringSSL GREASE: first cipher, first and last (before padding) extension, first group,
    first supported version, first key share. Anything else is approximated."""
    places = {
        "cipher_suites": any(is_grease(c) for c in hello.cipher_suites),
        "extensions": any(is_grease(t) for t in hello.extension_types),
        "supported_groups": any(is_grease(g) for g in hello.supported_groups),
        "supported_versions": any(is_grease(v) for v in hello.supported_versions),
        "key_share": any(is_grease(g) for g, _ in hello.key_shares),
        "signature_algorithms": any(is_grease(s) for s in hello.signature_algorithms),
        "alpn": any(len(p) == 2 and p[0] == p[1] and p[0] & 0x0F == 0x0A for p in hello.alpn_raw),
    }
    if not any(places.values()):
        return False, _exact()
    types = [t for t in hello.extension_types if t != EXT_PADDING]
    expected = {
        "cipher_suites": bool(hello.cipher_suites) and is_grease(hello.cipher_suites[0])
        and sum(map(is_grease, hello.cipher_suites)) == 1,
        "extensions": len(types) >= 2 and is_grease(types[0]) and is_grease(types[-1])
        and sum(map(is_grease, types)) == 2,
        "supported_groups": not hello.supported_groups or (
            is_grease(hello.supported_groups[0]) and sum(map(is_grease, hello.supported_groups)) == 1),
        "supported_versions": not hello.supported_versions or (
            is_grease(hello.supported_versions[0])
            and sum(map(is_grease, hello.supported_versions)) == 1),
        "key_share": not hello.key_shares or (
            is_grease(hello.key_shares[0][0]) and hello.key_shares[0][1] == 1
            and sum(is_grease(g) for g, _ in hello.key_shares) == 1),
        "signature_algorithms": not places["signature_algorithms"],
        "alpn": not places["alpn"],
    }
    off = [k for k, ok in expected.items() if not ok]
    if off:
        return True, _approx(
            "BoringSSL puts one GREASE value first in ciphers/groups/versions/key shares and "
            "GREASE extensions first and last; this hello differs in: " + ", ".join(off))
    return True, _exact()


def _tls13_first(names: list[str]) -> FieldFidelity:
    """BoringSSL lists the TLS 1.3 suites (in the configured order) before all others."""
    tls13 = [i for i, name in enumerate(names) if name in TLS13_CIPHER_NAMES]
    if tls13 == list(range(len(tls13))):
        return _exact()
    return _approx("BoringSSL sends the TLS 1.3 cipher suites first; this client lists them "
                   "after TLS 1.2 suites")


def boringssl_padding(length: int) -> int | None:
    """The padding extension body length BoringSSL adds to a ClientHello of ``length`` bytes
    (handshake header included, no pre_shared_key): RFC 7685 padding of hellos of 256-511
    bytes up to 512, at least one byte of body; ``None`` when it adds no padding."""
    if not 0xFF < length < 0x200:
        return None
    padding = 0x200 - length
    return padding - 4 if padding >= 4 + 1 else 1


def _padding_fidelity(hello: ClientHello, grease_ech: bool) -> FieldFidelity:
    """Whether BoringSSL's own padding (it never copies the client's) comes out as the
    client's: same presence, same length, last before any pre_shared_key. The hello BoringSSL
    pads is the client's without its padding, PSK, early_data and session ticket content (the
    emitter sends none of them)."""
    if grease_ech:
        return _approx("with GREASE ECH, BoringSSL's random payload length decides per "
                       "connection whether padding (21) appears and how long, which changes "
                       "JA3/JA4 extension lists")
    length = len(hello.raw)
    for ext in hello.extensions:
        if ext.type in (EXT_PADDING, 41, 42) or ext.type == 35:
            length -= len(ext.data) + (0 if ext.type == 35 else 4)
    length += 32 - len(hello.session_id)          # BoringSSL sends a 32-byte session id
    expected = boringssl_padding(length)
    sent = hello.padding_length
    types = [t for t in hello.extension_types if t not in (41, 42)]
    if sent is not None and types[-1] != EXT_PADDING:
        return _approx("BoringSSL puts padding (21) last; this client puts it elsewhere")
    if sent == expected:
        return _exact()
    if expected is None:
        return _approx(f"this client pads with {sent} bytes; BoringSSL adds no padding to a "
                       f"hello of {length} bytes")
    if sent is None:
        return _approx(f"BoringSSL pads a hello of {length} bytes with {expected} bytes "
                       "(RFC 7685, up to 512); this client does not pad")
    return _approx(f"BoringSSL pads this hello with {expected} bytes, the client with {sent}")


def fingerprint_from_hello(hello: ClientHello, h2: H2Fingerprint | None = None) -> EmitPlan:
    """Mirror ``hello`` (and ``h2``) field by field into a curl_cffi Fingerprint."""
    fid: dict[str, FieldFidelity] = {}
    fp = Fingerprint()
    types = hello.extension_types
    present = set(types)

    # --- versions: min version from supported_versions (or legacy_version); max is TLS 1.3
    versions = [v for v in hello.supported_versions if not is_grease(v)] or [hello.legacy_version]
    known = [v for v in versions if v in TLS_VERSION_NAMES]
    fp.tls_version = TLS_VERSION_NAMES[min(known)] if known else "1.2"
    if not known:
        fid["supported_versions"] = _impossible(f"no known TLS version in {_hexes(versions)}")
    elif max(known) != 0x0304:
        fid["supported_versions"] = _approx("the emitter's highest version is TLS 1.3; this "
                                            f"client's is {TLS_VERSION_NAMES[max(known)]}")
    elif 43 in present and versions != sorted(known, reverse=True) or len(known) != len(versions):
        fid["supported_versions"] = _approx("BoringSSL lists versions from 1.3 down; this client "
                                            f"lists {_hexes(versions)}")
    else:
        fid["supported_versions"] = _exact()

    # --- ciphers
    names, missing = _names(hello.cipher_suites, CIPHER_NAMES)
    fp.tls_ciphers = names
    fid["ciphers"] = (_impossible(f"the emitter cannot offer cipher(s) {_hexes(missing)}; "
                                  "they are left out") if missing else _tls13_first(names))
    dropped_ciphers = missing

    # --- GREASE
    fp.tls_grease, fid["grease"] = _grease_fidelity(hello)

    # --- supported groups and key shares
    names, missing = _names(hello.supported_groups, GROUP_NAMES)
    fp.tls_supported_groups = names
    fid["supported_groups"] = (_impossible(f"the emitter has no group(s) {_hexes(missing)}; "
                                           "they are left out") if missing else _exact())
    shares = [g for g, _ in hello.key_shares if not is_grease(g)]
    groups = [g for g in hello.supported_groups if not is_grease(g) and g in GROUP_NAMES]
    fp.tls_key_shares_limit = max(len(shares), 1)
    if 51 not in present or shares == groups[:len(shares)]:
        fid["key_share_groups"] = _exact()
    else:
        fid["key_share_groups"] = _approx(
            f"BoringSSL sends shares for the first {len(shares)} supported group(s) "
            f"({_hexes(groups[:len(shares)])}); this client sent {_hexes(shares)}")

    # --- signature algorithms
    names, missing = _names(hello.signature_algorithms, SIGALG_NAMES)
    fp.tls_signature_hashes = names
    fid["signature_algorithms"] = (_impossible(f"the emitter has no signature algorithm(s) "
                                               f"{_hexes(missing)}; they are left out")
                                   if missing else _exact())

    # --- certificate compression
    names, missing = _names(hello.compress_certificate, CERT_COMPRESSION_NAMES)
    fp.tls_cert_compression = names
    fid["cert_compression"] = (_impossible(f"unknown certificate compression algorithm(s) "
                                           f"{_hexes(missing)}") if missing else _exact())

    # --- ALPN (libcurl fills the protocol list from the HTTP version)
    alpn = hello.alpn
    fp.tls_alpn = 16 in present
    if "h2" in alpn:
        http_version = "v2"
        expected_alpn = ["h2", "http/1.1"]
    else:
        http_version = "v1"
        expected_alpn = ["http/1.1"]
    fp.http_version = http_version
    if 16 not in present or alpn == expected_alpn:
        fid["alpn"] = _exact()
    else:
        fid["alpn"] = _approx(f"libcurl offers {expected_alpn}; this client offered {alpn}")

    # --- ALPS
    if 17513 in present or 17613 in present:
        fp.tls_alps = True
        fp.tls_use_new_alps_codepoint = 17613 in present
        if 17513 in present and 17613 in present:
            fid["alps"] = _approx("both ALPS codepoints were sent; the emitter sends one (new)")
        elif hello.alps == ["h2"]:
            fid["alps"] = _exact()
        else:
            fid["alps"] = _approx(f"the emitter's ALPS protocols are ['h2']; this client sent "
                                  f"{hello.alps}")
    else:
        fid["alps"] = _exact()

    # --- ECH
    ech = hello.ech
    if 65037 not in present:
        fid["ech"] = _exact()
    elif ech is not None and ech.is_inner:
        fid["ech"] = _impossible("an inner ECH hello is never on the wire in the clear")
    else:
        fp.tls_ech = "grease"
        fid["ech"] = _approx(
            "sent as GREASE ECH: same extension and suite shape, random config id/enc/payload "
            "sized by BoringSSL; real ECH would need the origin's ECHConfig and the client's "
            "inner hello, which the proxy cannot decrypt")

    # --- session ticket, PSK, early data
    ticket = hello.session_ticket
    fp.tls_session_ticket = 35 in present
    if 35 in present and ticket:
        fid["session_ticket"] = _approx(f"sent empty: the client's {len(ticket)}-byte ticket is "
                                        "from its own server and useless to the emitter")
    else:
        fid["session_ticket"] = _exact()
    if 41 in present:
        fid["psk"] = _impossible(UNSENDABLE_REASONS[41])
    else:
        fid["psk"] = _exact()
    if 45 in present and hello.psk_key_exchange_modes != [1]:
        fid["psk_key_exchange_modes"] = _approx(
            f"BoringSSL sends [1] (psk_dhe_ke); this client sent {hello.psk_key_exchange_modes}")
    else:
        fid["psk_key_exchange_modes"] = _exact()
    if 11 in present and hello.ec_point_formats != [0]:
        fid["ec_point_formats"] = _approx(f"BoringSSL sends [0]; this client sent "
                                          f"{hello.ec_point_formats}")
    else:
        fid["ec_point_formats"] = _exact()

    # --- record size limit, delegated credentials, SCT, status_request, trust anchors
    if hello.record_size_limit is not None:
        fp.tls_record_size_limit = hello.record_size_limit
    fid["record_size_limit"] = _exact()
    names, missing = _names(hello.delegated_credentials, SIGALG_NAMES)
    fp.tls_delegated_credentials = names
    fid["delegated_credentials"] = (_impossible(f"no name for signature scheme(s) "
                                                f"{_hexes(missing)}") if missing else _exact())
    fp.tls_signed_cert_timestamps = 18 in present
    status = hello.status_request
    if 5 in present and (status is None or status.status_type != 1 or status.responder_id_list
                         or status.request_extensions):
        fid["status_request"] = _approx("the emitter sends a plain OCSP status_request")
    else:
        fid["status_request"] = _exact()
    trust_anchors = hello.ext(51764)
    if trust_anchors is not None:
        anchors = _trust_anchor_ids(trust_anchors.data)
        if anchors:
            fp.tls_trust_anchors = anchors
            fid["trust_anchors"] = _approx("same trust anchor IDs, but curl-impersonate "
                                           "shuffles their order on every connection")
        else:
            fid["trust_anchors"] = _impossible("trust anchor list empty or unparsable")
    else:
        fid["trust_anchors"] = _exact()

    # --- extension order: an allowlist of what the emitter can send
    order, dropped = [], []
    for ext_type in types:
        if is_grease(ext_type) or ext_type == EXT_PADDING:
            continue
        if ext_type in EMITTABLE_EXTENSIONS and not (
                ext_type == 51764 and fid["trust_anchors"].status == "impossible"):
            order.append(ext_type)
        else:
            dropped.append(ext_type)
    fp.tls_extension_order = "-".join(map(str, order))
    if dropped:
        reasons = "; ".join(f"{t}: {UNSENDABLE_REASONS.get(t, 'not an extension the emitter can send')}"
                            for t in dropped)
        fid["extension_order"] = _impossible(f"left out {dropped} ({reasons})")
    else:
        fid["extension_order"] = _exact()
    fid["padding"] = _padding_fidelity(hello, fp.tls_ech == "grease")
    fid["session_id"] = (_exact() if len(hello.session_id) == 32 else _approx(
        f"BoringSSL sends a 32-byte session id; this client sent {len(hello.session_id)} bytes"))

    # --- HTTP/2
    _h2_fields(fp, fid, h2)
    return EmitPlan(fp, fid, http_version, dropped, dropped_ciphers)


def _h2_fields(fp: Fingerprint, fid: dict[str, FieldFidelity], h2: H2Fingerprint | None) -> None:
    if h2 is None:
        for name in ("h2_settings", "h2_window_update", "h2_priority", "h2_pseudo_header_order"):
            fid[name] = _approx("no HTTP/2 start given; the emitter's defaults are used")
        return
    fp.http2_settings = ";".join(f"{k}:{v}" for k, v in h2.settings)
    unknown = [k for k, _ in h2.settings if k not in H2_SETTINGS_KNOWN]
    fid["h2_settings"] = (_impossible(f"curl-impersonate cannot send SETTINGS id(s) {unknown}")
                          if unknown else _exact())
    if h2.window_update is None:
        fid["h2_window_update"] = _approx("the client sent no connection WINDOW_UPDATE; the "
                                          "emitter sends its default one")
    else:
        fp.http2_window_update = h2.window_update
        fid["h2_window_update"] = _exact()
    prio = h2.headers_priority
    problems = []
    if prio is None:
        fp.http2_no_priority = True
    else:
        fp.http2_stream_weight = prio.weight + 1
        fp.http2_stream_exclusive = int(prio.exclusive)
        if prio.depends_on != 0:
            problems.append(f"HEADERS depends on stream {prio.depends_on}; the emitter sends 0")
    if h2.priority_frames:
        problems.append(f"{len(h2.priority_frames)} PRIORITY frame(s) before HEADERS: the "
                        "Fingerprint has no field for them")
    if not problems:
        fid["h2_priority"] = _exact()
    elif h2.priority_frames:
        fid["h2_priority"] = _impossible("; ".join(problems))
    else:
        fid["h2_priority"] = _approx("; ".join(problems))
    letters = [PSEUDO_LETTERS[n] for n in h2.pseudo_header_order if n in PSEUDO_LETTERS]
    fp.http2_pseudo_headers_order = "".join(letters)
    if len(letters) != len(h2.pseudo_header_order) or len(set(letters)) != len(letters):
        fid["h2_pseudo_header_order"] = _impossible(
            f"the emitter orders only :method/:authority/:scheme/:path; got {h2.pseudo_header_order}")
    else:
        fid["h2_pseudo_header_order"] = _exact()

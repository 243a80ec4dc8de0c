"""What the proxy's upstream connection will carry for one client: the curl_cffi Fingerprint for
the TLS handshake, the ALPN / ALPS it sets natively, and per field how faithful that is.

The TLS fields come from ``tls_fingerprint.fingerprint_from_hello``. The proxy then relays the
client's own HTTP bytes (HTTP/1 heads, every HTTP/2 frame) inside that TLS connection, so the
ALPN list (GREASE and odd protocols included), the ALPS protocols and everything HTTP are the
client's own, byte for byte. ``RelayPlan.hello_exact`` predicts whether BoringSSL's whole
ClientHello equals the client's after masking what varies per connection (the comparison of
``mirror.fingerprint.hello_diff``; tests/test_boringssl_hello_measured.py measures it). Pure.

``cached_relay_plan`` shares one plan between connections whose hellos can only give the same
plan: same version, ciphers, compression and extensions in the same order with the same bodies
— except the parts that change on every connection and that the plan reads only the shape of
(random, session id and ticket contents, key share keys, PSK, ECH payload, padding bytes,
which GREASE value stands where) and the server name (only its length counts: BoringSSL pads
by the hello's length). Hellos whose extension order changes per connection
(Chrome's) simply miss.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from mirror.emit.tls_fingerprint import EmitPlan, fingerprint_from_hello
from mirror.fingerprint.fidelity import FieldFidelity
from mirror.fingerprint.tls import ja4_o
from mirror.tls_policy import policy_view, version_bounds
from mirror.wire.tls import ClientHello, Extension, is_grease

EXT_ALPN = 16
EXT_ALPS_OLD = 17513
EXT_ALPS = 17613

H2_FIELDS = ("h2_settings", "h2_window_update", "h2_priority", "h2_pseudo_header_order")


@dataclass(slots=True)
class RelayPlan:
    plan: EmitPlan
    alpn_wire: bytes            # ALPN protocol_name_list body, as the client sent it
    alps: list[bytes]
    alps_new_codepoint: bool
    ja4_o: str = ""             # the hello's JA4_o (same for every hello of the same shape)
    # the TLS policy's inputs: the versions the client offered (lowest, highest), its groups,
    # and what the policy reads of the hello (the same for every hello of the same shape)
    version_bounds: tuple[int, int] = (0x0303, 0x0304)
    offered_groups: tuple[int, ...] = ()
    hello: ClientHello | None = None
    # predicted: BoringSSL's hello equals the client's after masking what varies per connection
    hello_exact: bool = False

    @property
    def fidelity(self) -> dict[str, FieldFidelity]:
        return self.plan.fidelity


def _alpn_list_body(hello: ClientHello) -> bytes:
    ext = hello.ext(EXT_ALPN)
    return ext.data[2:] if ext is not None and len(ext.data) >= 2 else b""


def relay_plan(hello: ClientHello) -> RelayPlan:
    plan = fingerprint_from_hello(hello)
    fid = plan.fidelity
    fp = plan.fingerprint
    # ALPN and ALPS are set on BoringSSL directly (see upstream/curl/native.py): libcurl must not.
    fp.tls_alpn = False
    fp.tls_alps = False
    fp.tls_use_new_alps_codepoint = False
    fid["alpn"] = FieldFidelity("exact")
    types = set(hello.extension_types)
    # the ALPS protocols and codepoint are set natively, so ALPS is exact in the hello unless
    # both codepoints were sent (its approximation below is about the settings sent later)
    hello_exact = plan.hello_exact(ignore=("alps",)) and not (
        EXT_ALPS in types and EXT_ALPS_OLD in types)
    alps_raw = [p.encode("latin-1") for p in hello.alps]
    if EXT_ALPS in types and EXT_ALPS_OLD in types:
        fid["alps"] = FieldFidelity("approximated", "both ALPS codepoints were sent; BoringSSL "
                                                    "sends one per connection (the new one)")
    elif alps_raw:
        fid["alps"] = FieldFidelity("approximated", "same protocols and codepoint; the ALPS "
                                    "settings value the client would send after the handshake "
                                    "is not known to the proxy and is sent empty")
    else:
        fid["alps"] = FieldFidelity("exact")
    for name in H2_FIELDS:
        fid.pop(name, None)
    fid["http"] = FieldFidelity("exact", "the client's HTTP/1 bytes and HTTP/2 frames are "
                                         "relayed as sent")
    return RelayPlan(plan, _alpn_list_body(hello), alps_raw,
                     EXT_ALPS in types, ja4_o(hello), version_bounds(hello),
                     tuple(g for g in hello.supported_groups if not is_grease(g)),
                     policy_view(hello), hello_exact)


# extensions whose body changes per connection: the key keeps only what the plan reads of them
_EXT_SERVER_NAME, _EXT_SESSION_TICKET, _EXT_PSK, _EXT_KEY_SHARE = 0, 35, 41, 51
_EXT_PADDING, _EXT_ECH = 21, 65037
_U16_LISTS = (10, 13, 43)             # supported groups, signature algorithms, versions
CACHE_SIZE = 512

_cache: OrderedDict[tuple[Hashable, ...], RelayPlan] = OrderedDict()
_cache_lock = threading.Lock()


# GREASE values (what ``is_grease`` accepts) are random per connection; the plan reads only
# where they are: in a hello's shape each stands as 0x0A0A
_GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))


def _shape(ext: Extension) -> Hashable:
    kind = ext.type
    if kind == _EXT_KEY_SHARE:
        if isinstance(ext.value, list):
            return tuple((0x0A0A if entry.group in _GREASE else entry.group, entry.key_length)
                         for entry in ext.value)
        return ext.data
    if kind in _U16_LISTS and isinstance(ext.value, list):
        return tuple([0x0A0A if v in _GREASE else v for v in ext.value])
    if kind in (_EXT_SESSION_TICKET, _EXT_PADDING, _EXT_SERVER_NAME):
        return len(ext.data)          # server name: not the name, but its length (BoringSSL's
    if kind == _EXT_PSK:              # padding does)
        return None                   # the plan never reads the identities
    if kind == _EXT_ECH:
        return ext.data[:1]           # outer (0) or inner (1): the plan reads nothing else
    return ext.data


def hello_shape(hello: ClientHello) -> tuple[Hashable, ...]:
    """What of ``hello`` a relay plan depends on (hashable). Called for every connection: the
    GREASE test is a set lookup, each tuple built from a list (cheaper than a generator)."""
    grease = _GREASE
    return (hello.legacy_version, len(hello.session_id),
            tuple([0x0A0A if c in grease else c for c in hello.cipher_suites]),
            tuple(hello.compression_methods),
            tuple([(0x0A0A if ext.type in grease else ext.type, _shape(ext))
                   for ext in hello.extensions]))


def cached_relay_plan(hello: ClientHello) -> RelayPlan:
    """``relay_plan(hello)``, shared with earlier hellos of the same shape (a bounded LRU).
    The plan returned is shared: read it, never change it."""
    key = hello_shape(hello)
    with _cache_lock:
        plan = _cache.get(key)
        if plan is not None:
            _cache.move_to_end(key)
            return plan
    plan = relay_plan(hello)
    with _cache_lock:
        _cache[key] = plan
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return plan

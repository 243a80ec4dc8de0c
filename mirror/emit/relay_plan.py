"""What the proxy's upstream connection will carry for one client: the curl_cffi Fingerprint for
the TLS handshake, the ALPN / ALPS it sets natively, and per field how faithful that is.

The TLS fields come from ``tls_fingerprint.fingerprint_from_hello``. The proxy then relays the
client's own HTTP bytes (HTTP/1 heads, every HTTP/2 frame) inside that TLS connection, so the
ALPN list (GREASE and odd protocols included), the ALPS protocols and everything HTTP are the
client's own, byte for byte. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirror.emit.tls_fingerprint import EmitPlan, FieldFidelity, fingerprint_from_hello
from mirror.wire.tls import ClientHello

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
    # ALPN and ALPS are set on BoringSSL directly (see emit/native.py): libcurl must not.
    fp.tls_alpn = False
    fp.tls_alps = False
    fp.tls_use_new_alps_codepoint = False
    fid["alpn"] = FieldFidelity("exact")
    types = set(hello.extension_types)
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
                     EXT_ALPS in types)

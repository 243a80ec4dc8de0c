"""Judge one client's fidelity: what the server saw directly vs through the proxy.

Inputs are the echo server's reports (direct and proxied) and the proxy's capture record of the
proxied connection. Order-free fields compare direct with proxied; the fields that depend on
this connection's own extension order (Chrome permutes it per connection) compare the hello the
proxy received with the hello the server received. A difference is acceptable only where the
capture declared, before connecting, that the field could not be sent exactly. A connection the
replay engine made declares nothing (the relay plan's verdicts are BoringSSL's): it sends the
client's own hello, so a field the server saw differently from the direct run passes only as
the client's own variation between connections, i.e. when the client's hello on that very
connection (the capture) shows the same value as the server saw, and the difference from the
direct run is padding or GREASE alone ("same but padding", "same but GREASE"). A verdict the
record's measurement alone made non-exact (the plan predicted "exact") excuses nothing: it was
not declared before connecting, and such a difference is what ``mirror check`` is for. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mirror.fingerprint.normalise import mark_grease
from mirror.fingerprint.report import tls_report
from mirror.fingerprint.tls import ja3_string, ja4, ja4_o
from mirror.record.capture import CaptureRecord, FieldVerdict, TlsPart
from mirror.record.measured_fidelity import declared_before_connecting
from mirror.upstream.engine import REPLAY
from mirror.wire.tls import ClientHello, parse_client_hello

FIELDS = ["ja4", "ja4_o", "ja3_string", "alpn", "signature_algorithms", "supported_groups",
          "key_share_groups", "cert_compression", "akamai", "h2_headers", "h1_head"]
PADDING_SENSITIVE = {"ja4", "ja4_o", "ja3_string"}
GREASE_LISTS = {"signature_algorithms", "supported_groups", "key_share_groups"}
HELLO_SHAPE = ("ciphers", "extension_order", "supported_groups", "signature_algorithms",
               "ec_point_formats", "supported_versions", "alpn", "grease", "padding")
DEPENDS = {"ja4": HELLO_SHAPE, "ja4_o": HELLO_SHAPE, "ja3_string": HELLO_SHAPE,
           "signature_algorithms": ("signature_algorithms", "grease"),
           "supported_groups": ("supported_groups", "grease"),
           "key_share_groups": ("key_share_groups", "supported_groups", "grease"),
           "cert_compression": ("cert_compression",), "alpn": ("alpn",)}
NO_VERDICT = FieldVerdict()


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str        # "same" | "same but padding" | "same but GREASE" | "declared" | "DIFFERENT"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "DIFFERENT"

    @property
    def exact(self) -> bool:
        return self.status == "same"

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}" if self.detail else self.status


def _tls_fields(tls: dict) -> dict:
    return {
        "ja4": tls["ja4"],
        "alpn": tls["alpn"],
        "signature_algorithms": mark_grease(tls["signature_algorithms"]),
        "supported_groups": mark_grease(tls["supported_groups"]),
        "key_share_groups": mark_grease([share["group"] if isinstance(share, dict) else share[0]
                                          for share in tls["key_shares"]]),
        "cert_compression": tls["compress_certificate"],
    }


def _own_order_fields(tls: dict) -> dict:
    return {"ja4_o": tls["ja4_o"], "ja3_string": tls["ja3_full"]}


def _captured_order_fields(tls: TlsPart) -> dict:
    """The same fields of the hello the proxy received (its capture record)."""
    return {"ja4_o": tls.ja4_o, "ja3_string": tls.ja3_full}


def _http_fields(report: dict) -> dict:
    out = {}
    if report.get("http2"):
        out["akamai"] = report["http2"]["akamai"]
        out["h2_headers"] = report["http2"]["request"]["headers"]
    if report.get("http1"):
        out["h1_head"] = report["http1"]["raw"]
    return out


def _without_padding(raw_hex: str) -> ClientHello:
    hello = parse_client_hello(bytes.fromhex(raw_hex))
    return dataclasses.replace(hello, extensions=[e for e in hello.extensions if e.type != 21])


def _padding_only(captured_raw: str, proxied: dict, field: str) -> bool:
    mine, theirs = _without_padding(captured_raw), _without_padding(proxied["tls"]["raw"])
    fingerprints: dict[str, Callable[[ClientHello], str]] = {
        "ja4": ja4, "ja4_o": ja4_o, "ja3_string": ja3_string}
    compute = fingerprints[field]
    return compute(mine) == compute(theirs)


def _grease_only(want: list, got: list) -> bool:
    return [v for v in want if v != "GREASE"] == [v for v in got if v != "GREASE"]


def judge(direct: dict, proxied: dict, capture: CaptureRecord) -> dict[str, Verdict]:
    """A verdict per field present on either side (see the module docstring). ``capture``
    must hold the client's hello (``capture.tls.raw``): ``KeyError`` otherwise."""
    captured = capture.tls
    if captured is None or captured.raw is None:
        raise KeyError("the capture record holds no ClientHello")
    captured_raw = captured.raw
    fidelity: Mapping[str, FieldVerdict] = (capture.emitted and capture.emitted.fidelity) or {}
    replay = capture.upstream is not None and capture.upstream.engine == REPLAY
    sent_here: dict = {}
    if replay:
        fidelity = {}       # the plan's verdicts are BoringSSL's; replay sent the client's hello
        sent_here = _tls_fields(tls_report(parse_client_hello(bytes.fromhex(captured_raw))))
    want, got = _tls_fields(direct["tls"]), _tls_fields(proxied["tls"])
    want.update(_captured_order_fields(captured))
    got.update(_own_order_fields(proxied["tls"]))
    want.update(_http_fields(direct))
    got.update(_http_fields(proxied))
    verdicts: dict[str, Verdict] = {}
    for field in FIELDS:
        if field not in want and field not in got:
            continue
        if want.get(field) == got.get(field):
            verdicts[field] = Verdict("same")
            continue
        padding = fidelity.get("padding", NO_VERDICT)
        grease = fidelity.get("grease", NO_VERDICT)
        padding_may_vary = (padding.status == "approximated"
                            and declared_before_connecting(padding.status, padding.detail))
        grease_may_vary = (grease.status == "approximated" and field in (grease.detail or "")
                           and declared_before_connecting(grease.status, grease.detail))
        if replay:          # only as this connection's client hello varied from the direct run's
            padding_may_vary = grease_may_vary = (field in sent_here
                                                  and sent_here[field] == got.get(field))
        if (field in PADDING_SENSITIVE and padding_may_vary
                and _padding_only(captured_raw, proxied, field)):
            # BoringSSL pads a hello of 256-511 bytes; with GREASE ECH (random payload size,
            # drawn per connection by the client and the emitter alike) padding comes and goes
            verdicts[field] = Verdict("same but padding")
            continue
        if (field in GREASE_LISTS and grease_may_vary
                and _grease_only(want[field], got[field])):
            verdicts[field] = Verdict("same but GREASE")    # e.g. Chromium's GREASE sigalg
            continue
        declared = {name: f for name, f in fidelity.items()
                    if name in DEPENDS.get(field, ())
                    and declared_before_connecting(f.status, f.detail)}
        if declared:
            verdicts[field] = Verdict("declared", "; ".join(f"{n} {f.status}"
                                                             for n, f in declared.items()))
            continue
        verdicts[field] = Verdict("DIFFERENT", f"client {want.get(field)!r} != server saw "
                                               f"{got.get(field)!r}")
    return verdicts

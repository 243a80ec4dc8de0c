"""The record's TLS verdicts from the hello measured on the wire, not from the plan's prediction.

Once the hello written upstream is known (the replay engine's own bytes, or what libcurl's
callback saw BoringSSL write), :func:`measured_fidelity_of` compares it with the client's
(:func:`mirror.fingerprint.hello_diff.hello_differences`) and rewrites the relay plan's TLS
verdicts accordingly:

- no difference after masking: every TLS field of the plan is ``exact``, its detail saying it
  was measured (the plan's predictions, e.g. "ech approximated ... sized by BoringSSL", are
  about BoringSSL and say nothing of a hello that was not BoringSSL's);
- differences: the plan's verdicts stay (they are checked against such measurements by
  tests/test_boringssl_hello_measured.py), and each field a measured difference falls under
  gets it appended to its detail; a field the plan called ``exact`` that the measurement shows
  different becomes ``approximated``, its detail starting :data:`UNPREDICTED` (the plan did not
  declare it before connecting: :func:`declared_before_connecting`). A difference under no
  plan field is the verdict ``hello``.

``http`` (the client's bytes relayed as sent) and the TCP verdicts (``tcp.*``) are not about
the hello and stay as they are. Pure; made by the store's writer (a ``Deferred``).
"""

from __future__ import annotations

from mirror.fingerprint.hello_diff import HelloDifference, hello_differences_of_bytes
from mirror.record.plan_views import plan_views
from mirror.record.values import fidelity_report

EXACT_DETAIL = {
    "replay": "measured: the hello written upstream is the client's own",
    "boringssl": "measured: the hello BoringSSL wrote upstream equals the client's",
}
DEFAULT_EXACT_DETAIL = "measured: the hello written upstream equals the client's"
NOT_ABOUT_THE_HELLO = frozenset({"http"})
UNPLACED = "hello"       # the verdict of a measured difference under no plan field
UNPREDICTED = "measured, not predicted: "

# a measured difference's field (hello_diff) -> the plan's verdict it falls under
_PLAN_FIELD = {
    "record_version": "supported_versions", "legacy_version": "supported_versions",
    "session_id_length": "session_id", "cipher_suites": "ciphers",
    "extensions": "extension_order",
    "extension:supported_versions": "supported_versions",
    "extension:supported_groups": "supported_groups",
    "extension:signature_algorithms": "signature_algorithms",
    "extension:key_share": "key_share_groups",
    "extension:compress_certificate": "cert_compression",
    "extension:application_layer_protocol_negotiation": "alpn",
    "extension:application_settings": "alps", "extension:application_settings_old": "alps",
    "extension:encrypted_client_hello": "ech", "extension:session_ticket": "session_ticket",
    "extension:pre_shared_key": "psk", "extension:early_data": "psk",
    "extension:psk_key_exchange_modes": "psk_key_exchange_modes",
    "extension:ec_point_formats": "ec_point_formats",
    "extension:record_size_limit": "record_size_limit",
    "extension:delegated_credentials": "delegated_credentials",
    "extension:status_request": "status_request", "extension:unknown_51764": "trust_anchors",
    "extension:padding": "padding",
}


PADDING = "extension:padding"


def difference_text(field: str, client: str, sent: str) -> str:
    """One measured difference as a line of text; padding (its body is zeros in hex) by its
    lengths."""
    if field == PADDING:
        return f"{field}: client {len(client) // 2} bytes, sent {len(sent) // 2} bytes"
    return f"{field}: client {client}, sent {sent}"


def plan_field_of(difference: HelloDifference) -> str:
    """The plan verdict a measured difference falls under (:data:`UNPLACED` for none)."""
    if difference.field.startswith("extension:grease#"):
        return "grease"
    return _PLAN_FIELD.get(difference.field, UNPLACED)


def declared_before_connecting(status: str | None, detail: str | None) -> bool:
    """True for a verdict that says, from the plan, that a field may differ (not ``exact``,
    and not a difference only the measurement found)."""
    return status not in ("exact", None) and not (detail or "").startswith(UNPREDICTED)


def measured_verdicts(plan: dict, differences: list[HelloDifference],
                      engine: str | None) -> dict:
    """``plan`` (field -> ``{"status", "detail"}``, TLS fields only) rewritten by what was
    measured (see the module docstring); ``plan`` is not changed."""
    out = dict(plan)
    if not differences:
        detail = EXACT_DETAIL.get(engine or "", DEFAULT_EXACT_DETAIL)
        for name in plan:
            if name not in NOT_ABOUT_THE_HELLO:
                out[name] = {"status": "exact", "detail": detail}
        return out
    found: dict[str, list[str]] = {}
    for difference in differences:
        found.setdefault(plan_field_of(difference), []).append(
            difference_text(difference.field, difference.client, difference.sent))
    for name, texts in found.items():
        verdict = out.get(name) or {}
        status, plan_detail = verdict.get("status"), verdict.get("detail")
        if status in ("exact", None):       # a difference the plan did not predict
            out[name] = {"status": "approximated", "detail": UNPREDICTED + "; ".join(texts)}
        else:
            measured = "measured: " + "; ".join(texts)
            out[name] = {"status": status,
                         "detail": f"{plan_detail} ({measured})" if plan_detail else measured}
    return out


def measured_fidelity_of(views_json: bytes, tcp: dict, first: bytes, sent: bytes,
                         engine: str | None) -> dict:
    """The record's ``emitted.fidelity``: the plan's TLS verdicts (from ``views_json``, see
    :mod:`mirror.record.plan_views`) rewritten by the measured hello ``sent`` (the hello
    message written upstream) against the client's first bytes ``first``, then what our SYN
    carried (``tcp``)."""
    differences = hello_differences_of_bytes(first, sent)
    report = measured_verdicts(plan_views(views_json)[1], differences, engine)
    report.update(fidelity_report({}, tcp))
    return report

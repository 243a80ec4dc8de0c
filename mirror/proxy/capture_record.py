"""The capture record one proxied connection fills in (a dict, as the store reads it).

What goes in it at each step: the record at accept (:func:`new_record`), at the end
(:func:`finish_record`), the destination (:func:`record_destination`), the TLS hello's
values (:func:`record_hello`), the relay plan's emitted fingerprint and verdicts
(:func:`record_plan`, encoded once per plan by :func:`plan_views_json`), what the upstream SYN
carried (:func:`record_tcp`), the upstream route (:func:`record_route`), errors
(:func:`record_error`) and the 504 the proxy made for a request the server left unanswered
(:func:`timeout_response`). Heavy reports are ``Deferred``: the store's writer makes them.
"""

from __future__ import annotations

import time

from mirror.fingerprint.hello_diff import sent_hello_report
from mirror.proxy.response_timeout import STAGE as RESPONSE_TIMEOUT
from mirror.record.deferred import Deferred
from mirror.record.measured_fidelity import measured_fidelity_of
from mirror.record.plan_views import (
    emitted_fingerprint_of,
    plan_fidelity_of,
    plan_views_json,
)
from mirror.record.values import fidelity_report, syn_report_of, tls_report_of
from mirror.upstream.engine import REPLAY, engine_record


def new_record(mode: str, peer: tuple[str, int], syn, syn_report) -> dict:
    """The record of a connection just accepted from ``peer`` (``syn``, ``syn_report``: what
    ``client_syn(sock, report=False)`` gave; a parsed SYN's report is made by the store's
    writer)."""
    if syn_report is None:
        syn_report = Deferred(syn_report_of, syn.raw)
    return {
        "started": time.time(), "ended": None, "mode": mode,
        "client": {"addr": peer[0], "port": peer[1]},
        "destination": None, "sni": None, "protocol": None, "alpn": None,
        "tcp": syn_report, "tls": None, "http": None, "emitted": None,
        "upstream": {"route": "direct", "error": None}, "error": None,
        "bytes": {"up": 0, "down": 0},
    }


def finish_record(record: dict, bytes_up: int, bytes_down: int, observer) -> bool:
    """Close the record (False: it was already); ``observer``'s report is its HTTP part."""
    if record.get("ended") is not None:
        return False
    record["ended"] = time.time()
    record["bytes"] = {"up": bytes_up, "down": bytes_down}
    if observer is not None:
        record["http"] = observer.report()
    return True


def record_destination(record: dict, destination) -> None:
    """Where the client is going (a ``front_events.Destination``) and how that was learnt."""
    record["destination"] = {"host": destination.host, "port": destination.port,
                             "source": destination.how}


def record_error(record: dict, stage: str, message: str, *, upstream: bool = False) -> None:
    """The connection's error (and the upstream's, when it was the upstream that failed)."""
    if upstream:
        record["upstream"]["error"] = message
    record["error"] = {"stage": stage, "message": message}


def record_hello(record: dict, hello, first: bytes) -> None:
    """The client's hello: SNI, offered ALPN, and its TLS report (made by the store's writer
    from the raw bytes; a parsed hello is not kept around)."""
    record["sni"] = hello.sni
    record["tls"] = Deferred(tls_report_of, first)
    record["alpn"] = {"offered": hello.alpn, "upstream": None, "client": None}


def record_plan(record: dict, plan, tcp_fidelity: dict) -> None:
    """What is emitted upstream for this hello; ``tcp_fidelity`` is filled in later."""
    views = plan_views_json(plan)
    record["emitted"] = {
        "tls": {"fingerprint": Deferred(emitted_fingerprint_of, views),
                "hello": {"measured": False, "predicted_exact": plan.hello_exact}},
        "fidelity": Deferred(plan_fidelity_of, views, tcp_fidelity)}


def record_tcp(record: dict, tcp_fidelity: dict, result) -> None:
    """What our upstream SYN carried, next to what was emitted for TLS."""
    emitted = record["emitted"] = record["emitted"] or {
        "tls": None, "fidelity": Deferred(fidelity_report, {}, tcp_fidelity)}
    syn = None if result.syn is None else Deferred(syn_report_of, result.syn)
    emitted["tcp"] = {"syn": syn}     # its report is made by the store's writer
    tcp_fidelity.update({name: (f.status, f.detail) for name, f in result.fidelity.items()})


def record_route(record: dict, proxy) -> None:
    """The upstream proxy a destination goes through (None: direct)."""
    record["upstream"]["route"] = "direct" if proxy is None else f"via {proxy.display}"
    if proxy is not None:
        tunnel = "HTTP CONNECT" if proxy.tunnels_http else "SOCKS5"
        record["upstream"]["proxy_exchange"] = (
            f"{tunnel} with the upstream proxy, made by mirror (not the client's)")


def timeout_response() -> dict:
    """What the capture records as the response to a request --upstream-response-timeout
    gave up on."""
    return {"status": 504, "reason": "Gateway Timeout", "headers": [], "made_by": "mirror",
            "error": RESPONSE_TIMEOUT, "time": time.time()}


def record_engine(record: dict, up, error) -> None:
    """The TLS engine that made (or failed to make) the upstream connection; a connection the
    replay engine made used nothing of curl's, so it has no emitted curl_cffi fingerprint."""
    engine = engine_record(up, error)
    record["upstream"].update(engine)
    tls = (record.get("emitted") or {}).get("tls")
    if engine.get("engine") == REPLAY and isinstance(tls, dict):
        tls["fingerprint"] = None


def record_sent_hello(record: dict, up, first: bytes) -> None:
    """The hello written upstream (the replay engine's own, or the one BoringSSL's message
    callback saw) compared with the client's, field by field: the record's TLS hello report
    and TLS verdicts measured, not predicted (both made by the store's writer)."""
    emitted = record.get("emitted") or {}
    tls = emitted.get("tls")
    sent = getattr(up, "sent_hello", None)
    if not isinstance(tls, dict) or sent is None:
        return
    tls["hello"] = Deferred(sent_hello_report, first, sent, tls["hello"]["predicted_exact"])
    fidelity = emitted.get("fidelity")
    if isinstance(fidelity, Deferred) and fidelity.function is plan_fidelity_of:
        views, tcp = fidelity.args
        emitted["fidelity"] = Deferred(measured_fidelity_of, views, tcp, first, sent,
                                       getattr(up, "engine", None))

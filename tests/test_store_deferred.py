"""Deferred record values: made by the store's writer thread when the record is encoded."""

from __future__ import annotations

import threading

from mirror.record.deferred import Deferred, resolve
from mirror.store import CaptureStore


def test_deferred_values_are_made_on_the_writer_thread_and_stored(tmp_path):
    made_on = []

    def report(name):
        made_on.append(threading.current_thread().name)
        return {"name": name, "size": len(name)}

    def broken():
        raise ValueError("no report today")

    store = CaptureStore(tmp_path / "captures.sqlite3")
    try:
        store.add({"sni": "a.test", "tls": Deferred(report, "a.test"),
                   "emitted": {"tls": {"fingerprint": Deferred(broken)}},
                   "list": [1, Deferred(len, "four")]})
        assert made_on == []                               # nothing made by add()
        store.flush()
        (summary,) = store.list(limit=1)
        stored = store.get(summary.id)
    finally:
        store.close()
    assert made_on == ["mirror-store-writer"]
    assert stored["tls"] == {"name": "a.test", "size": 6}
    assert stored["emitted"]["tls"]["fingerprint"] == {"error": "ValueError: no report today"}
    assert stored["list"] == [1, 4]


def test_resolve_keeps_untouched_containers_and_self_references():
    inner = {"a": [1, 2]}
    loop: dict = {"inner": inner}
    loop["self"] = loop
    assert resolve(loop) is loop and resolve(inner) is inner
    made = resolve({"keep": inner, "make": Deferred(lambda: {"x": 1})})
    assert made["keep"] is inner and made["make"] == {"x": 1}

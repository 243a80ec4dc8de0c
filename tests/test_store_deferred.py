"""Deferred record values: made by the store's writer thread when the record is encoded;
pickled (to the store's process) by their function's name; ``DeferredFields`` put the fields
they make in the dict that holds them."""

from __future__ import annotations

import pickle
import threading

import pytest

from mirror.fingerprint.http import ja4h_all
from mirror.record.deferred import Deferred, DeferredFields, resolve
from mirror.store import CaptureStore
from mirror.store.store_process import StoreProcess

HEADERS = [["Host", "a.test"], ["User-Agent", "curl/8.5.0"], ["Cookie", "b=2; a=1"]]


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


def test_deferred_fields_take_their_place_among_the_fields_of_the_dict_that_holds_them():
    request = {"method": "GET", "headers": HEADERS,
               "ja4h": DeferredFields(ja4h_all, "GET", "HTTP/1.1", HEADERS)}
    made = resolve({"requests": [request]})
    assert made["requests"][0] == {"method": "GET", "headers": HEADERS,
                                   **ja4h_all("GET", "HTTP/1.1", HEADERS)}
    assert isinstance(request["ja4h"], DeferredFields)     # the caller's record unchanged
    assert set(ja4h_all("GET", "HTTP/1.1", HEADERS)) == {"ja4h", "ja4h_o", "ja4h_r", "ja4h_ro"}


def test_deferred_fields_that_fail_leave_the_error_under_their_key():
    def broken():
        raise ValueError("no fields today")

    assert resolve({"a": 1, "ja4h": DeferredFields(broken)}) == {
        "a": 1, "ja4h": {"error": "ValueError: no fields today"}}


def test_deferred_values_pickle_by_their_functions_name_and_are_made_after():
    record = {"tcp": Deferred(len, b"four"),
              "request": {"ja4h": DeferredFields(ja4h_all, "GET", "HTTP/2", HEADERS)}}
    again = pickle.loads(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(again["tcp"]) is Deferred and type(again["request"]["ja4h"]) is DeferredFields
    assert resolve(again) == resolve(record) == {
        "tcp": 4, "request": ja4h_all("GET", "HTTP/2", HEADERS)}
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(Deferred(lambda: 1))      # not found again by its name


def test_a_record_whose_deferred_function_has_no_name_is_made_before_the_store_process(
        tmp_path):
    store = StoreProcess(tmp_path / "captures.sqlite3")
    try:
        store.add({"sni": "a.test", "made": Deferred(lambda: {"x": 1}),
                   "request": {"ja4h": DeferredFields(ja4h_all, "GET", "HTTP/1.1", HEADERS)}})
        store.flush()
    finally:
        store.close()
    reader = CaptureStore(tmp_path / "captures.sqlite3")
    try:
        (summary,) = reader.list(limit=1)
        stored = reader.get(summary.id)
    finally:
        reader.close()
    assert stored["made"] == {"x": 1}
    assert stored["request"] == ja4h_all("GET", "HTTP/1.1", HEADERS)

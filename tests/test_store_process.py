"""StoreProcess: the capture store's writer in a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from mirror.fingerprint.report import tcp_report
from mirror.record.deferred import Deferred
from mirror.store import CaptureStore
from mirror.store.store_process import StoreProcess
from mirror.wire.tcp import parse_syn

SYN = bytes.fromhex("4500003c1c4640004006b1e6c612000ac612000b"
                    "d4310050a1b2c3d400000000a002faf0fe300000020405b40402080a"
                    "000e8e0c0000000001030307")


def stored(path) -> list[dict]:
    with CaptureStore(path) as store:
        return [store.get(s.id) for s in store.list(limit=None, newest_first=False)]


def test_records_and_their_deferred_values_are_committed_by_the_child(tmp_path):
    path = tmp_path / "captures.sqlite3"
    store = StoreProcess(path)
    try:
        for i in range(50):
            store.add({"sni": f"h{i}.test", "tcp": Deferred(tcp_report, parse_syn(SYN))})
        store.add({"sni": "odd.test", "made": Deferred(lambda: {"x": 1})})  # cannot pickle
        store.flush()
        records = stored(path)
    finally:
        store.close()
    assert [r["sni"] for r in records] == [f"h{i}.test" for i in range(50)] + ["odd.test"]
    assert records[0]["tcp"] == tcp_report(parse_syn(SYN))          # made in the child
    assert records[-1]["made"] == {"x": 1}                           # made here instead
    assert store._process.poll() is not None          # the child has exited


def test_the_child_commits_what_it_has_when_the_parent_dies(tmp_path):
    path = tmp_path / "captures.sqlite3"
    script = textwrap.dedent(f"""
        import os
        from mirror.store.store_process import StoreProcess
        store = StoreProcess({str(path)!r})
        for i in range(20):
            store.add({{"sni": f"k{{i}}.test"}})
        import time; time.sleep(0.5)          # the sender thread has written them
        os._exit(0)                            # no close(), no atexit
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(stored(path)) < 20:
        time.sleep(0.2)
    assert [r["sni"] for r in stored(path)] == [f"k{i}.test" for i in range(20)]


def test_a_record_that_cannot_be_read_loses_only_itself(tmp_path, caplog):
    import pickle

    from mirror.store.store_process import _LENGTH, _records_in

    good = [pickle.dumps({"sni": name}) for name in ("a.test", "b.test")]
    bad = b"\x80\x05not a pickle"
    not_a_dict = pickle.dumps(["a", "list"])
    message = b"".join(_LENGTH.pack(len(p)) + p for p in (good[0], bad, not_a_dict, good[1]))
    assert _records_in(message) == [{"sni": "a.test"}, {"sni": "b.test"}]
    assert "could not be read" in caplog.text and "a list, not a dict" in caplog.text
    assert _records_in(message[:-3]) == [{"sni": "a.test"}]       # a cut last record: dropped


def test_records_added_between_flushes_arrive_in_order(tmp_path):
    path = tmp_path / "captures.sqlite3"
    store = StoreProcess(path)
    try:
        for i in range(300):
            store.add({"sni": f"o{i}.test"})
            if i % 97 == 0:
                store.flush()
        store.flush()
        records = stored(path)
    finally:
        store.close()
    assert [r["sni"] for r in records] == [f"o{i}.test" for i in range(300)]


def test_add_many_commits_every_record(tmp_path):
    path = tmp_path / "captures.sqlite3"
    with CaptureStore(path) as store:
        store.add_many([{"sni": f"m{i}.test"} for i in range(5)])
        store.add_many([])
        store.add({"sni": "one.test"})
        store.flush()
    assert [r["sni"] for r in stored(path)] == [f"m{i}.test" for i in range(5)] + ["one.test"]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_to_the_process_group_loses_no_record(tmp_path):
    """A terminal's Ctrl-C reaches the parent and the child at once: the child must leave the
    stop to the parent, which flushes what it still holds, then closes."""
    path = tmp_path / "captures.sqlite3"
    script = textwrap.dedent(f"""
        import os, signal
        from mirror.store.store_process import StoreProcess
        store = StoreProcess({str(path)!r})
        for i in range(50):
            store.add({{"sni": f"c{{i}}.test"}})
        try:
            os.killpg(0, signal.SIGINT)            # the whole group, as a terminal does
            signal.pause()
        except KeyboardInterrupt:
            store.close()                          # what `mirror run` does on Ctrl-C
    """)
    # Ctrl-C as from a terminal even when this test runs with SIGINT ignored (a background
    # job inherits SIG_IGN, and so would the child): the child starts with the default.
    done = subprocess.run([sys.executable, "-c", script], timeout=60, start_new_session=True,
                          preexec_fn=_default_sigint, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert [r["sni"] for r in stored(path)] == [f"c{i}.test" for i in range(50)]


def test_the_child_makes_the_reports_without_loading_libcurl_or_cryptography(tmp_path,
                                                                              real_hellos):
    from mirror.emit.relay_plan import cached_relay_plan
    from mirror.fingerprint.report import tls_report
    from mirror.record.plan_views import (
        emitted_fingerprint_of,
        plan_fidelity_of,
        plan_views_json,
    )
    from mirror.record.values import syn_report_of, tls_report_of
    from mirror.wire.tls import read_client_hello

    first = real_hellos["chrome"]                     # the client's first bytes, records
    hello = read_client_hello(first)
    views = plan_views_json(cached_relay_plan(hello))
    tcp = {"ttl": ("exact", ""), "window": ("approximated", "the kernel's own")}
    path = tmp_path / "captures.sqlite3"
    store = StoreProcess(path)
    try:
        store.add({"sni": hello.sni, "tls": Deferred(tls_report_of, first),
                   "tcp": Deferred(syn_report_of, SYN),
                   "emitted": {"tls": {"fingerprint": Deferred(emitted_fingerprint_of, views)},
                               "fidelity": Deferred(plan_fidelity_of, views, tcp)}})
        store.flush()
        with open(f"/proc/{store._process.pid}/maps") as maps:
            loaded = maps.read()
        [record] = stored(path)
    finally:
        store.close()
    assert "curl_cffi" not in loaded and "cryptography" not in loaded
    assert record["tls"]["ja4"] == tls_report(hello)["ja4"]
    assert record["tcp"] == tcp_report(parse_syn(SYN))
    assert record["emitted"]["fidelity"]["tcp.window"] == {"status": "approximated",
                                                           "detail": "the kernel's own"}
    assert record["emitted"]["fidelity"]["ciphers"]["status"] in ("exact", "approximated")
    assert record["emitted"]["tls"]["fingerprint"]["tls_ciphers"]

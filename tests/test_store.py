"""The capture store and `mirror captures`: real SQLite files, real processes, real signals."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import queue
import runpy
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_records import HELLO, full_record

from mirror.fingerprint.tls import ja3, ja4
from mirror.store import SCHEMA_VERSION, CaptureStore, CaptureSummary, StoreError
from mirror.store.command import captures

SUMMARY_KEYS = ["id", "started", "ended", "mode", "client_addr", "client_port", "dst_host",
                "dst_port", "sni", "protocol", "ja3", "ja4", "ja4t", "akamai", "http_version",
                "fidelity", "error", "gateway"]

# A child process that writes to a store: imported by the tests (runpy) for make_record, run
# as a script for the multi-process, SIGKILL and exit tests.
WRITER_SCRIPT = '''
import sys
import time

from mirror.store import CaptureStore


def make_record(proc, i):
    return {
        "started": 1_700_000_000.0 + proc * 1000 + i,
        "mode": "http",
        "client": {"addr": f"10.0.0.{proc}", "port": 40000 + i},
        "sni": f"p{proc}-{i}.test",
        "tls": {"ja4": f"t13d{proc:02d}{i:06d}"},
        "payload": f"{proc}:{i}:" + "x" * (37 * (i % 60)),
    }


def main(path, proc, count, how):
    store = CaptureStore(path)
    for i in range(count):
        store.add(make_record(proc, i))
        if how == "interleave" and i % 25 == 24:
            store.flush()
    if how == "interleave":
        store.close()
    elif how == "kill":
        store.flush()
        print("flushed", flush=True)
        i = count
        while True:  # keep the writer busy until SIGKILL
            store.add(make_record(proc, i))
            i += 1
            if i % 10 == 0:
                time.sleep(0.002)
    # how == "exit": leave without flush or close


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
'''


@pytest.fixture(scope="module")
def writer_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("writer") / "store_writer.py"
    path.write_text(WRITER_SCRIPT)
    return path


@functools.cache
def _record_maker(script: Path):
    return runpy.run_path(str(script))["make_record"]


def make_record(writer_script: Path, proc: int, i: int) -> dict:
    """The record the writer script's process ``proc`` adds as its ``i``-th."""
    return _record_maker(writer_script)(proc, i)


def child_env() -> dict[str, str]:
    """The environment of a child process: this checkout importable, no terminal size."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_writer(script: Path, path: Path, proc: int, count: int, how: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(path), str(proc), str(count), how],
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def raw_sql(path: Path, sql: str) -> list[tuple]:
    """One statement on a plain sqlite3 connection of its own, in autocommit mode."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


@pytest.fixture
def store(tmp_path):
    opened = CaptureStore(tmp_path / "captures.sqlite3")
    yield opened
    opened.close()


def add_all(store: CaptureStore, records: list[dict]) -> list[int]:
    """Add, flush, and return the ids the records got (in order)."""
    before = store.list(limit=1)
    first = before[0].id if before else 0
    for record in records:
        store.add(record)
    store.flush()
    return [s.id for s in store.list(limit=None, after_id=first, newest_first=False)]


# -- records in, records out -------------------------------------------------------------------

def test_full_record_round_trips_and_is_summarised(store):
    record = full_record()
    [capture_id] = add_all(store, [record])
    assert store.get(capture_id) == {"id": capture_id, **record}
    [summary] = store.list()
    assert summary == CaptureSummary(
        id=capture_id, started=1_750_000_000.25, ended=1_750_000_002.75, mode="http",
        client_addr="::1", client_port=51000, dst_host="example.com", dst_port=443,
        sni="example.com", protocol="tls", ja3=ja3(HELLO), ja4=ja4(HELLO),
        ja4t="64240_2-4-8-1-3_1460_7", akamai="1:65536;4:6291456|15663105|0|m,a,s,p",
        http_version="HTTP/2", fidelity=0.5,
        error="connection reset by peer while relaying the response body",
    )
    assert list(summary.as_dict()) == SUMMARY_KEYS
    assert store.get(capture_id + 1) is None
    assert store.get(2**70) is None


def test_missing_none_and_odd_values_give_empty_summaries(store):
    records = [
        {},
        {key: None for key in full_record()},
        {"started": "yesterday", "ended": True, "mode": 7, "client": "10.0.0.1:5",
         "destination": {"host": ["a"], "port": "443"}, "sni": {"x": 1}, "tls": [1, 2],
         "tcp": "syn", "http": {"h2": None, "version": 2}, "emitted": {"fidelity": []},
         "error": {"stage": "relay"}},
        {"client": {"addr": "127.0.0.1", "port": 2**64}, "started": math.inf, "error": "plain text"},
    ]
    ids = add_all(store, records)
    assert len(ids) == 4
    for capture_id, record in zip(ids, records, strict=True):
        assert store.get(capture_id) == {"id": capture_id, **finite(record)}
    summaries = {s.id: s.as_dict() for s in store.list()}
    for capture_id in ids[:3]:
        assert {k: v for k, v in summaries[capture_id].items() if v is not None} == {"id": capture_id}
    assert {k: v for k, v in summaries[ids[3]].items() if v is not None} == {
        "id": ids[3], "client_addr": "127.0.0.1", "error": "plain text"}


@pytest.mark.parametrize(("emitted", "share"), [
    (None, None),
    ({"tls": None}, None),
    ({"fidelity": None}, None),
    ({"fidelity": {}}, None),
    ({"fidelity": {"a": {"status": "exact"}}}, 1.0),
    ({"fidelity": {"a": {"status": "impossible"}}}, 0.0),
    ({"fidelity": {"a": {"status": "exact"}, "b": {"status": "exact"}, "c": {"status": "exact"},
                   "d": {"status": "approximated"}}}, 0.75),
    ({"fidelity": {"a": {"status": "exact"}, "b": "exact", "c": None}}, 1 / 3),
])
def test_fidelity_is_the_share_of_exact_fields(store, emitted, share):
    add_all(store, [{"emitted": emitted}])
    [summary] = store.list()
    assert summary.fidelity == share


def test_unencodable_record_is_kept_with_a_note_and_the_writer_survives(store, caplog):
    class BadRepr:
        def __repr__(self):
            raise RuntimeError("no repr")

    loop: dict = {"sni": "loop.test"}
    loop["self"] = loop
    odd = {"sni": "odd.test", "raw": b"\x00\xff", "kinds": {3}, ("a", 1): "tuple key",
           "bad": BadRepr(), "nested": {"ok": [1, 2.5, None], "when": datetime(2025, 1, 2)}}
    with caplog.at_level(logging.WARNING, logger="mirror.store"):
        ids = add_all(store, [odd, loop, full_record(sni="after.test"),
                              {"error": {"stage": "relay", "message": "reset"}, "x": object()}])
    assert len(ids) == 4
    warnings = [r for r in caplog.records if r.name == "mirror.store" and r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "not JSON-serialisable" in warnings[0].getMessage()

    stored = store.get(ids[0])
    assert stored["sni"] == "odd.test"
    assert stored["raw"] == repr(b"\x00\xff")
    assert stored["kinds"] == "{3}"
    assert stored["('a', 1)"] == "tuple key"
    assert stored["bad"].startswith("<unrepresentable BadRepr")
    assert stored["nested"] == {"ok": [1, 2.5, None], "when": repr(datetime(2025, 1, 2))}
    assert "not JSON-serialisable" in stored["store_error"]
    assert stored["error"] == {"stage": "store", "message": stored["store_error"]}
    assert store.get(ids[1]) == {"id": ids[1], "sni": "loop.test", "self": "<circular reference>",
                                 "store_error": store.get(ids[1])["store_error"],
                                 "error": {"stage": "store", "message": store.get(ids[1])["store_error"]}}
    assert store.get(ids[2]) == {"id": ids[2], **full_record(sni="after.test")}
    # a record's own error is kept; the note goes to store_error only
    fourth = store.get(ids[3])
    assert fourth["error"] == {"stage": "relay", "message": "reset"}
    assert fourth["x"].startswith("<object object")
    summaries = {s.id: s for s in store.list()}
    assert summaries[ids[0]].sni == "odd.test"
    assert "not JSON-serialisable" in summaries[ids[0]].error
    assert summaries[ids[3]].error == "reset"


def test_add_rejects_a_non_mapping(store):
    with pytest.raises(TypeError):
        store.add(["not", "a", "record"])


# -- list filters ------------------------------------------------------------------------------

@pytest.fixture
def filled(store):
    rows = [
        # started, sni, client, ja4, fidelity exact/total
        (100.0, "www.example.com", "127.0.0.1", "t13d1516h2_8daaf6152771_02713d6af862", (3, 4)),
        (200.0, "API.Example.COM", "127.0.0.10", "t13d1516h2_8daaf6152771_e5627efa2ab1", (4, 4)),
        (300.0, "example.com.evil.test", "::1", "t12d0808h1_aaaaaaaaaaaa_bbbbbbbbbbbb", (1, 4)),
        (400.0, None, "127.0.0.1", None, None),
        (500.0, "cdn1.example.org", "10.1.1.1", "q13d0310h3_55b375c5d22e_cd85d2d88918", (0, 2)),
    ]
    records = []
    for started, sni, client, j4, fidelity in rows:
        record = {"started": started, "sni": sni, "client": {"addr": client, "port": 1}, "tls": {"ja4": j4}}
        if fidelity:
            exact, total = fidelity
            record["emitted"] = {"fidelity": {f"f{n}": {"status": "exact" if n < exact else "impossible"}
                                              for n in range(total)}}
        records.append(record)
    ids = add_all(store, records)
    return store, dict(zip([100, 200, 300, 400, 500], ids, strict=True))


def started_of(summaries: list[CaptureSummary]) -> list[int]:
    return [int(s.started) for s in summaries]


def test_list_orders_by_id_and_limits(filled):
    store, _ = filled
    assert started_of(store.list()) == [500, 400, 300, 200, 100]
    assert started_of(store.list(newest_first=False)) == [100, 200, 300, 400, 500]
    assert started_of(store.list(limit=2)) == [500, 400]
    assert started_of(store.list(limit=None)) == [500, 400, 300, 200, 100]
    assert store.count() == 5


def test_list_filters_by_time_since_inclusive_until_exclusive(filled):
    store, _ = filled
    assert started_of(store.list(since=200)) == [500, 400, 300, 200]
    assert started_of(store.list(until=300)) == [200, 100]
    assert started_of(store.list(since=150.5, until=400.0)) == [300, 200]


def test_list_filters_by_sni_substring_or_glob(filled):
    store, _ = filled
    assert started_of(store.list(sni="example.com")) == [300, 200, 100]
    assert started_of(store.list(sni="EXAMPLE")) == [500, 300, 200, 100]
    assert started_of(store.list(sni="*.example.com")) == [200, 100]  # whole name: not .evil.test
    assert started_of(store.list(sni="cdn?.example.org")) == [500]
    assert started_of(store.list(sni="cdn?.example")) == []
    assert started_of(store.list(sni="nowhere")) == []


def test_list_filters_by_client_ja4_fidelity_and_after_id(filled):
    store, ids = filled
    assert started_of(store.list(client="127.0.0.1")) == [400, 100]  # not 127.0.0.10
    assert started_of(store.list(client="::1")) == [300]
    assert started_of(store.list(ja4="t13d1516h2_8daaf6152771_e5627efa2ab1")) == [200]
    assert started_of(store.list(ja4="t13d1516h2_")) == [200, 100]
    assert started_of(store.list(ja4="t1")) == [300, 200, 100]
    assert started_of(store.list(ja4="8daaf6152771")) == []  # a prefix, not a substring
    assert started_of(store.list(fidelity_below=0.75)) == [500, 300]  # strictly below
    assert started_of(store.list(fidelity_below=1.0)) == [500, 300, 100]
    assert started_of(store.list(after_id=ids[300], newest_first=False)) == [400, 500]
    assert started_of(store.list(client="127.0.0.1", since=150)) == [400]


# -- writing behaviour -------------------------------------------------------------------------

def test_add_never_waits_for_a_locked_database(tmp_path):
    path = tmp_path / "locked.sqlite3"
    store = CaptureStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    pool = ThreadPoolExecutor(1)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        adding = pool.submit(lambda: [store.add(full_record(sni=f"h{i}.test"))
                                      for i in range(2000)])
        # the lock is held until after this: an add that waited for it would never end
        adding.result(timeout=60)
        with pytest.raises(StoreError, match="not committed"):
            store.flush(timeout=0.3)
        blocker.execute("ROLLBACK")
        store.flush(timeout=10)
        assert store.count() == 2000
        assert {s.sni for s in store.list(limit=None)} == {f"h{i}.test" for i in range(2000)}
    finally:
        blocker.close()
        store.close()
        pool.shutdown(wait=False)


def test_records_are_committed_soon_without_flush(tmp_path):
    path = tmp_path / "soon.sqlite3"
    with CaptureStore(path) as writer, CaptureStore(path) as reader:
        writer.add({"sni": "soon.test"})
        deadline = time.monotonic() + 2
        while reader.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [s.sni for s in reader.list()] == ["soon.test"]


def writer_threads() -> int:
    return sum(t.name == "mirror-store-writer" and t.is_alive() for t in threading.enumerate())


def test_close_flushes_is_idempotent_and_refuses_more(tmp_path):
    path = tmp_path / "close.sqlite3"
    before = writer_threads()
    store = CaptureStore(path)
    for i in range(700):
        store.add({"sni": f"{i}.test"})
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.add({"sni": "late.test"})
    with pytest.raises(StoreError, match="closed"):
        store.list()
    assert raw_sql(path, "SELECT count(*) FROM captures") == [(700,)]
    assert writer_threads() == before


def test_interpreter_exit_commits_queued_records(tmp_path, writer_script):
    path = tmp_path / "exit.sqlite3"
    child = run_writer(writer_script, path, 1, 400, "exit")
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    with CaptureStore(path) as store:
        assert store.count() == 400
        [last] = store.list(limit=1)
        assert store.get(last.id) == {"id": last.id, **make_record(writer_script, 1, 399)}


def test_several_processes_lose_nothing(tmp_path, writer_script):
    path = tmp_path / "fresh" / "dir" / "shared.sqlite3"  # created by the racing processes
    children = [run_writer(writer_script, path, proc, 300, "interleave") for proc in (1, 2, 3)]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert "Traceback" not in err
    with CaptureStore(path) as store:
        assert store.count() == 900
        summaries = store.list(limit=None, newest_first=False)
        assert [s.id for s in summaries] == list(range(1, 901))
        expected = {(proc, i): make_record(writer_script, proc, i)
                    for proc in (1, 2, 3) for i in range(300)}
        seen = set()
        for summary in summaries:
            record = store.get(summary.id)
            proc, i = (int(n) for n in record["payload"].split(":")[:2])
            assert record == {"id": summary.id, **expected[(proc, i)]}
            assert summary.sni == f"p{proc}-{i}.test"
            seen.add((proc, i))
        assert seen == set(expected)
        # each process's records are in its own order
        for proc in (1, 2, 3):
            mine = [int(s.client_port) for s in summaries if s.client_addr == f"10.0.0.{proc}"]
            assert mine == sorted(mine)


def test_stores_created_at_the_same_moment_all_open(tmp_path):
    """Several openers racing to create one new file: every one opens it (separate connections)."""
    for round_number in range(40):
        path = tmp_path / f"race{round_number}" / "new.sqlite3"
        barrier = threading.Barrier(6)
        errors: list[str] = []

        def open_and_close(path=path, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                CaptureStore(path).close()
            except StoreError as error:
                errors.append(str(error))

        threads = [threading.Thread(target=open_and_close) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert raw_sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_flushed_records_survive_sigkill(tmp_path, writer_script):
    path = tmp_path / "killed.sqlite3"
    child = run_writer(writer_script, path, 7, 300, "kill")
    try:
        assert child.stdout.readline() == "flushed\n", child.stderr.read()
        time.sleep(0.3)  # the writer is busy committing more
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    with CaptureStore(path) as store:
        assert raw_sql(path, "PRAGMA integrity_check") == [("ok",)]
        total = store.count()
        assert total > 300  # some of the unflushed ones were committed before the kill
        summaries = store.list(limit=None, newest_first=False)
        assert [s.id for s in summaries] == list(range(1, total + 1))
        for number, summary in enumerate(summaries):
            assert store.get(summary.id) == {"id": summary.id, **make_record(writer_script, 7, number)}
        store.add({"sni": "after-kill.test"})
        store.flush()
        assert store.list(limit=1)[0].sni == "after-kill.test"


# -- the file ----------------------------------------------------------------------------------

def test_file_layout_schema_and_indexes(tmp_path):
    path = tmp_path / "a" / "b" / "captures.sqlite3"
    with CaptureStore(path) as store:
        ids = add_all(store, [{"sni": "one"}, {"sni": "two"}])
        assert ids == [1, 2]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert raw_sql(path, "PRAGMA journal_mode") == [("wal",)]
    assert raw_sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    indexed = {row[0] for row in raw_sql(
        path, "SELECT ii.name FROM sqlite_master m, pragma_index_info(m.name) ii WHERE m.type = 'index'")}
    assert indexed == set(SUMMARY_KEYS) - {"id"}
    # AUTOINCREMENT: an id is never handed out twice, even after the newest row is deleted
    raw_sql(path, "DELETE FROM captures WHERE id = 2")
    with CaptureStore(path) as store:
        assert add_all(store, [{"sni": "three"}]) == [3]


def test_store_errors_say_what_is_wrong(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create directory .*a-file/sub"):
        CaptureStore(blocker / "sub" / "captures.sqlite3")
    with pytest.raises(StoreError, match="is a directory"):
        CaptureStore(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("these are not the captures you are looking for\n" * 100)
    with pytest.raises(StoreError, match="file is not a database"):
        CaptureStore(text)
    assert text.read_text().startswith("these are")

    other = tmp_path / "other.sqlite3"
    raw_sql(other, "CREATE TABLE songs (title TEXT)")
    with pytest.raises(StoreError, match="not a capture store"):
        CaptureStore(other)

    newer = tmp_path / "newer.sqlite3"
    CaptureStore(newer).close()
    raw_sql(newer, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer mirror"):
        CaptureStore(newer)

    missing = tmp_path / "missing.sqlite3"
    with pytest.raises(StoreError, match="no capture store"):
        CaptureStore(missing, create=False)
    assert not missing.exists()


# -- arbitrary records -------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | ANY_TEXT)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


def maybe(strategy):
    return strategy | JSONISH


def shaped(**fields):
    return maybe(st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in fields.items()}))


STATUS = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["exact", "approximated", "impossible"]), "detail": ANY_TEXT})
RECORDS = st.fixed_dictionaries({}, optional={
    "started": maybe(st.floats(0, 2e9)),
    "ended": st.floats(),
    "mode": maybe(st.sampled_from(["http", "socks5", "transparent", "reverse"])),
    "client": shaped(addr=ANY_TEXT, port=st.integers(0, 65535)),
    "destination": shaped(host=ANY_TEXT, port=st.integers(), source=ANY_TEXT),
    "sni": maybe(ANY_TEXT),
    "protocol": JSONISH,
    "tls": shaped(ja3=ANY_TEXT, ja4=ANY_TEXT),
    "tcp": shaped(ja4t=ANY_TEXT),
    "http": shaped(version=ANY_TEXT, h2=shaped(akamai=ANY_TEXT)),
    "emitted": shaped(fidelity=st.dictionaries(ANY_TEXT, maybe(STATUS), max_size=4)),
    "error": shaped(stage=ANY_TEXT, message=ANY_TEXT),
    "extra": JSONISH,
})


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    opened = CaptureStore(tmp_path_factory.mktemp("hypothesis") / "any.sqlite3")
    yield opened
    opened.close()


def finite(value):
    """What the store keeps of a JSON value: NaN and infinite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def test_nan_and_infinities_are_stored_as_null_on_either_encoding_path(store):
    plain = {"ended": math.nan, "nested": [math.inf, {"x": -math.inf}], "sni": "n.test"}
    odd = {**plain, "keys": {1: math.nan}}               # an int key: the standard encoder
    ids = add_all(store, [plain, odd])
    assert store.get(ids[0])["nested"] == [None, {"x": None}]
    assert store.get(ids[0])["ended"] is None
    assert store.get(ids[1])["keys"] == {"1": None} and store.get(ids[1])["nested"][0] is None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=RECORDS)
def test_arbitrary_records_round_trip(shared_store, record):
    store = shared_store
    store.add(record)
    store.flush()
    [summary] = store.list(limit=1)
    stored = store.get(summary.id)
    assert stored.pop("id") == summary.id
    assert json.dumps(stored) == json.dumps(finite(record))   # NaN and infinities: null
    for name in ("mode", "client_addr", "dst_host", "sni", "protocol", "ja3", "ja4", "ja4t",
                 "akamai", "http_version", "error"):
        value = getattr(summary, name)
        assert value is None or isinstance(value, str)
    for name in ("client_port", "dst_port"):
        assert getattr(summary, name) is None or isinstance(getattr(summary, name), int)
    assert summary.fidelity is None or 0 <= summary.fidelity <= 1
    if summary.started is not None:
        assert math.isfinite(summary.started)
        until = math.nextafter(summary.started, math.inf)
        assert summary.id in [s.id for s in store.list(since=summary.started, until=until)]
    recent = summary.id - 1
    if summary.ja4:
        assert [s.id for s in store.list(ja4=summary.ja4, after_id=recent)] == [summary.id]
        assert [s.id for s in store.list(ja4=record["tls"]["ja4"], after_id=recent)] == [summary.id]
    if summary.sni and "*" not in summary.sni and "?" not in summary.sni:
        assert [s.id for s in store.list(sni=record["sni"], after_id=recent)] == [summary.id]
    if summary.client_addr is not None:
        assert [s.id for s in store.list(client=record["client"]["addr"], after_id=recent)] == [summary.id]


@settings(max_examples=30, deadline=None)
@given(value=st.recursive(st.binary(max_size=4) | st.frozensets(st.integers(), max_size=2)
                          | st.tuples(st.integers()) | SCALARS,
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.integers() | ANY_TEXT, inner, max_size=3),
                          max_leaves=6))
def test_non_json_values_never_stop_the_store(shared_store, value):
    store = shared_store
    store.add({"sni": "odd.test", "value": value})
    store.flush()
    [summary] = store.list(limit=1)
    assert summary.sni == "odd.test"
    assert store.get(summary.id)["sni"] == "odd.test"


# -- mirror captures ---------------------------------------------------------------------------

def cli(*args: str):
    group = click.Group("mirror")
    group.add_command(captures)
    return CliRunner().invoke(group, ["captures", *args], env={"COLUMNS": None})


@pytest.fixture
def cli_store(tmp_path):
    path = tmp_path / "cli.sqlite3"
    now = time.time()
    records = [
        full_record(started=now - 7200, sni="old.example.com", client={"addr": "192.0.2.9", "port": 4000},
                    emitted=None, error=None),
        full_record(started=now - 60),
        {"started": now - 30, "mode": "socks5", "client": {"addr": "127.0.0.1", "port": 5000},
         "destination": {"host": "198.18.0.2", "port": 80}, "protocol": "http"},
    ]
    with CaptureStore(path) as store:
        ids = add_all(store, records)
    return path, ids, records


def test_cli_list_table(cli_store):
    path, ids, records = cli_store
    result = cli("list", "--wide", "--store", str(path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "time", "client", "destination", "SNI", "mode", "protocol",
                                "JA4", "fidelity", "error", "gateway"]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == [str(i) for i in ids]  # oldest of the selection first
    local = datetime.fromtimestamp(records[1]["started"]).isoformat(timespec="seconds")
    assert rows[1][:9] == [str(ids[1]), local, "[::1]:51000", "example.com:443", "example.com",
                           "http", "tls", ja4(HELLO), "50%"]
    assert "connection reset by peer while relaying…" in lines[2]
    assert "the response body" not in result.stdout
    assert rows[2][2:6] == ["127.0.0.1:5000", "198.18.0.2:80", "socks5", "http"]


def test_cli_list_json_and_filters(cli_store):
    path, ids, records = cli_store
    result = cli("list", "--json", "--store", str(path))
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [row["id"] for row in listed] == ids
    assert all(list(row) == SUMMARY_KEYS for row in listed)
    assert listed[0]["sni"] == "old.example.com" and listed[0]["fidelity"] is None
    assert listed[1]["fidelity"] == 0.5 and listed[1]["ja3"] == ja3(HELLO)

    def ids_for(*args):
        outcome = cli("list", "--json", "--store", str(path), *args)
        assert outcome.exit_code == 0, outcome.output
        return [row["id"] for row in json.loads(outcome.stdout)]

    assert ids_for("--since", "1h") == ids[1:]
    assert ids_for("--until", "90m") == ids[:1]
    iso = datetime.fromtimestamp(records[1]["started"] - 1).isoformat()
    assert ids_for("--since", iso) == ids[1:]
    assert ids_for("--since", f"@{records[2]['started']}") == ids[2:]
    assert ids_for("--sni", "*.example.com") == ids[:1]
    assert ids_for("--sni", "example") == ids[:2]
    assert ids_for("--client", "127.0.0.1") == ids[2:]
    assert ids_for("--ja4", ja4(HELLO)[:10]) == ids[:2]
    assert ids_for("--fidelity-below", "0.6") == ids[1:2]
    assert ids_for("--fidelity-below", "50%") == []
    assert ids_for("--limit", "1") == ids[2:]
    assert ids_for("--limit", "0") == ids


def test_cli_list_rejects_bad_options(cli_store):
    path, _, _ = cli_store
    result = cli("list", "--since", "last tuesday", "--store", str(path))
    assert result.exit_code == 2
    assert "not a time" in result.stderr
    result = cli("list", "--fidelity-below", "90", "--store", str(path))
    assert result.exit_code == 2
    assert "not a share" in result.stderr


def test_cli_show_sections(cli_store):
    path, ids, _ = cli_store
    result = cli("show", str(ids[1]), "--store", str(path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    positions = [out.index(title) for title in
                 ("connection", "TCP", "TLS", "HTTP", "emitted upstream / fidelity", "error")]
    assert positions == sorted(positions)
    assert "[::1]:51000" in out and "example.com:443 (from connect)" in out
    assert "64240_2-4-8-1-3_1460_7" in out and ja4(HELLO) in out and ja3(HELLO) in out
    assert "GET /index.html" in out and "-> 200" in out and "1:65536;4:6291456|15663105|0|m,a,s,p" in out
    assert "2 exact  1 approximated  1 impossible" in out
    fidelity_lines = {line.split()[0]: line.split()[1] for line in out.splitlines()
                      if line.split()[:1] and line.split()[0] in ("cipher_suites", "grease", "ech")}
    assert fidelity_lines == {"cipher_suites": "exact", "grease": "approximated", "ech": "impossible"}
    assert "[bold]no ECH[/bold] key" in out  # recorded text is never read as markup
    assert "relay" in out and "connection reset by peer while relaying the response body" in out


def test_cli_show_json_and_damaged_records(cli_store, tmp_path):
    path, ids, records = cli_store
    result = cli("show", str(ids[1]), "--json", "--store", str(path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"id": ids[1], **records[1]}

    damaged = tmp_path / "damaged.sqlite3"
    with CaptureStore(damaged) as store:
        odd_ids = add_all(store, [{}, {"client": "x", "tls": [], "http": {"requests": [None, 3]},
                                       "emitted": {"fidelity": {"a": None}}, "error": "boom"}])
    for capture_id in odd_ids:
        result = cli("show", str(capture_id), "--store", str(damaged))
        assert result.exit_code == 0, result.output
    assert "boom" in result.stdout


def test_cli_unknown_id_and_missing_store(cli_store, tmp_path):
    path, ids, _ = cli_store
    result = cli("show", str(ids[-1] + 1), "--store", str(path))
    assert result.exit_code == 1
    assert f"no capture with id {ids[-1] + 1}" in result.stderr
    assert result.stdout == ""

    missing = tmp_path / "nothing" / "here.sqlite3"
    for args in (["list"], ["show", "1"]):
        result = cli(*args, "--store", str(missing))
        assert result.exit_code == 1
        assert f"no capture store at {missing}" in result.stderr
    assert not missing.parent.exists()

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(os.urandom(4096))
    result = cli("list", "--store", str(junk))
    assert result.exit_code == 1
    assert "file is not a database" in result.stderr


def test_cli_default_store_comes_from_mirror_home(cli_store, tmp_path, monkeypatch):
    path, ids, _ = cli_store
    home = tmp_path / "home"
    home.mkdir()
    path.rename(home / "captures.sqlite3")
    monkeypatch.setenv("MIRROR_HOME", str(home))
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in json.loads(result.stdout)] == ids


class LineReader:
    """Lines of a child's pipe, read by a thread, taken with a timeout."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.lines.put(line)

    def take(self, count: int, timeout: float) -> list[str]:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"only {len(got)} of {count} lines: {got}")
        return got


@pytest.mark.parametrize("as_json", [True, False])
def test_cli_follow_prints_new_records_until_ctrl_c(tmp_path, as_json):
    path = tmp_path / "follow.sqlite3"
    with CaptureStore(path) as store:
        add_all(store, [{"sni": "before.test", "client": {"addr": "127.0.0.1", "port": 1}},
                        {"sni": "other-client.test", "client": {"addr": "127.0.0.2", "port": 1}}])
    # Ctrl-C as from a terminal, even if this test runs with SIGINT ignored (a background job)
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from mirror.store.command import captures; captures(prog_name='mirror captures')")
    command = [sys.executable, "-c", code, "list", "--follow", "--client", "127.0.0.1", "--store", str(path)]
    if as_json:
        command.append("--json")
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=child_env())
    try:
        reader = LineReader(child.stdout)
        first = reader.take(1 if as_json else 2, timeout=10)
        with CaptureStore(path) as store:
            add_all(store, [{"sni": "after-1.test", "client": {"addr": "127.0.0.1", "port": 2}},
                            {"sni": "skipped.test", "client": {"addr": "127.0.0.3", "port": 2}}])
            add_all(store, [{"sni": "after-2.test", "client": {"addr": "127.0.0.1", "port": 3}}])
        later = reader.take(2, timeout=10)
        child.send_signal(signal.SIGINT)
        child.wait(10)
        err = child.stderr.read()
        time.sleep(0.05)
        out = "".join(first + later + [reader.lines.get_nowait() for _ in range(reader.lines.qsize())])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err
    if as_json:
        assert [json.loads(line)["sni"] for line in first + later] == [
            "before.test", "after-1.test", "after-2.test"]
        assert [json.loads(line)["id"] for line in first + later] == [1, 3, 5]
    else:
        assert first[0].split()[:2] == ["id", "time"]
        assert "before.test" in first[1]
        assert [line.split()[0] for line in later] == ["3", "5"]
        assert "after-1.test" in later[0] and "after-2.test" in later[1]
    assert "skipped.test" not in out and "other-client" not in out


def test_captures_group_imports_cleanly():
    # the store's own commands import on their own; `captures diff` (it compares records with
    # references, so it lives with identify, above the store) is added by the command line
    for code, expected in (
            ("from mirror.store.command import captures; print(sorted(captures.commands))",
             "['export', 'list', 'show']"),
            ("from mirror.cli import main; print(sorted(main.commands['captures'].commands))",
             "['diff', 'export', 'list', 'show']")):
        result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=child_env(),
                                capture_output=True, text=True, timeout=30)
        assert result.stdout.strip() == expected, result.stderr

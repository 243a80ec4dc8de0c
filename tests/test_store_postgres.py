"""The PostgreSQL capture store against a real PostgreSQL 15 server (tests/pgserver.py): the
same records and answers as SQLite, the schema mirror creates and refuses, the CLI with a URL
and $MIRROR_STORE, a database down at start (one line) or going away mid-run (records kept,
bounded, counted, committed once it is back), and a fleet: two `mirror run` writing at once,
one of them killed with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import running_echo
from fidelity_helpers import NAME
from metrics_scrape import scrape, value
from pgserver import PgServer, free_port
from proxyrun import start_proxy
from store_records import full_record

from mirror.store import CaptureStore, StoreError, sqlite_store
from mirror.store.postgres_store import PG_SCHEMA_VERSION, PostgresCaptureStore


def mirror(*args: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def sample_records(now: float) -> list[dict]:
    return [
        full_record(started=now - 7200, sni="old.example.com",
                    client={"addr": "192.0.2.9", "port": 4000}, emitted=None, error=None),
        full_record(started=now - 60, gateway="gw-a"),
        full_record(started=now - 30, sni="Ünïcode.Example.ORG\x00nul", tls={"ja4": "t13d1516h2_x_y"}),
        {"started": now - 10, "mode": "socks5", "client": {"addr": "127.0.0.1", "port": 5000},
         "destination": {"host": "198.18.0.2", "port": 80}, "protocol": "http"},
    ]


def test_same_records_and_answers_as_sqlite(pg, tmp_path):
    now = time.time()
    records = sample_records(now)
    stores = [CaptureStore(tmp_path / "c.sqlite3"), PostgresCaptureStore(pg.new_database())]
    try:
        for store in stores:
            for record in records:
                store.add(record)
            store.flush()
        queries = [{}, {"sni": "example"}, {"sni": "*.EXAMPLE.com"}, {"sni": "?ld.example.co?"},
                   {"client": "192.0.2.9"}, {"ja4": "t13d"}, {"ja4": "t13d1516h2_x"},
                   {"fidelity_below": 0.9}, {"since": now - 100}, {"until": now - 100},
                   {"after_id": 2}, {"limit": 1}, {"limit": None, "newest_first": False}]
        for query in queries:
            sqlite_answer, pg_answer = (s.list(**query) for s in stores)
            # PostgreSQL text holds no NUL: the summary column keeps it escaped (the record
            # itself, JSON, keeps it as it was)
            sqlite_answer = [dataclasses.replace(s, sni=s.sni and s.sni.replace("\x00", "\\x00"))
                             for s in sqlite_answer]
            assert pg_answer == sqlite_answer, query
        assert stores[1].count() == stores[0].count() == len(records)
        for capture_id in range(1, len(records) + 1):
            assert stores[1].get(capture_id) == stores[0].get(capture_id)
        assert stores[1].get(99) is None
        assert [s.gateway for s in stores[1].list(newest_first=False)] == [None, "gw-a", None, None]
        assert stores[1].stats() == {"committed": 4, "pending": 0, "dropped": 0, "error": None}
    finally:
        for store in stores:
            store.close()


def test_schema_version_table_newer_and_foreign_databases_refused(pg):
    url = pg.new_database()
    with pytest.raises(StoreError, match="no capture store in"):
        PostgresCaptureStore(url, create=False)          # a reader never creates
    PostgresCaptureStore(url).close()
    assert pg.sql(url, "SELECT version FROM mirror_schema") == [(PG_SCHEMA_VERSION,)]
    PostgresCaptureStore(url).close()                    # opened again: left as it is
    assert pg.sql(url, "SELECT count(*) FROM mirror_schema") == [(1,)]
    pg.sql(url, "UPDATE mirror_schema SET version = %s", [PG_SCHEMA_VERSION + 1])
    with pytest.raises(StoreError, match="newer mirror"):
        PostgresCaptureStore(url)
    foreign = pg.new_database()
    pg.sql(foreign, "CREATE TABLE captures (x int)")
    with pytest.raises(StoreError, match="not a mirror capture store"):
        PostgresCaptureStore(foreign)
    assert pg.sql(foreign, "SELECT to_regclass('mirror_schema')") == [(None,)]


def test_several_stores_create_one_schema_at_once(pg):
    url = pg.new_database()
    errors = []

    def open_one() -> None:
        try:
            PostgresCaptureStore(url).close()
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert pg.sql(url, "SELECT count(*) FROM mirror_schema") == [(1,)]


def test_cli_reads_a_url_given_or_from_the_environment(pg):
    url = pg.new_database()
    with PostgresCaptureStore(url) as store:
        for record in sample_records(time.time()):
            store.add(record)
    listed = mirror("captures", "list", "--json", "--store", url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == [1, 2, 3, 4]
    assert rows[1]["gateway"] == "gw-a"
    env = {**os.environ, "MIRROR_STORE": url}
    shown = mirror("captures", "show", "2", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["sni"] == "example.com"
    table = mirror("captures", "list", "--sni", "old.*", env=env)
    assert table.returncode == 0 and "old.example.com" in table.stdout
    shown = mirror("captures", "show", "2", env=env)
    assert shown.returncode == 0 and re.search(r"gateway\s+gw-a", shown.stdout), shown.stdout


def test_a_database_that_is_down_at_start_is_one_line(tmp_path):
    url = f"postgresql://mirror:secret@127.0.0.1:{free_port()}/captures"
    for args in (["captures", "list", "--store", url],
                 ["run", "--ca-dir", str(tmp_path / "ca"), "--listen", "127.0.0.1:0",
                  "--store", url]):
        done = mirror(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "cannot connect to the capture store postgresql://mirror:***@127.0.0.1" in lines[0]
        assert "secret" not in done.stderr and "Traceback" not in done.stderr


def test_records_are_kept_and_committed_when_the_database_comes_back(monkeypatch):
    server = PgServer()
    try:
        url = server.new_database()
        store = PostgresCaptureStore(url)
        try:
            for i in range(20):
                store.add(full_record(sni=f"before{i}.test"))
            store.flush()
            server.stop()
            for i in range(30):
                store.add(full_record(sni=f"during{i}.test"))
            deadline = time.monotonic() + 20
            while store.stats()["error"] is None and time.monotonic() < deadline:
                time.sleep(0.1)
            stats = store.stats()
            assert stats["error"] and stats["pending"] == 30 and stats["dropped"] == 0, stats
            with pytest.raises(StoreError, match="30 capture record"):
                store.flush(0.5)
            server.start()
            store.flush(30)
            assert store.stats() == {"committed": 50, "pending": 0, "dropped": 0, "error": None}
            snis = [s.sni for s in store.list(limit=None, newest_first=False)]
            assert snis == [f"before{i}.test" for i in range(20)] + [f"during{i}.test" for i in range(30)]
        finally:
            store.close(30)
        # the bound: with room for only a few records, the oldest are dropped and counted
        monkeypatch.setattr(sqlite_store, "MAX_PENDING_BYTES", 3 * len(json.dumps(full_record())))
        store = PostgresCaptureStore(url)
        try:
            server.stop()
            for i in range(10):
                store.add(full_record(sni=f"bounded{i}.test"))
            deadline = time.monotonic() + 20
            while store.stats()["dropped"] < 7 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert store.stats()["dropped"] == 7
            server.start()
            store.flush(30)
            kept = [s.sni for s in store.list(limit=3)]
            assert kept == [f"bounded{i}.test" for i in (9, 8, 7)]   # the newest survive
            assert store.count() == 53
        finally:
            store.close(30)
    finally:
        server.close()


def test_two_proxies_one_database_and_a_sigkill(pg, tmp_path):
    """Two `mirror run` write to one database under load; one is killed with SIGKILL; every
    record its metrics had reported committed is there, and `captures list` shows both."""
    from curl_cffi import requests

    url = pg.new_database()
    with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
        common = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1",
                  "--metrics", "0"]
        procs = []
        try:
            for name in ("gw-one", "gw-two"):
                proc, proxy_port, lines = start_proxy(
                    tmp_path / name, url, [*common, "--gateway-name", name])
                metrics = next(line.split()[1] for line in lines if line.startswith("metrics:"))
                ca = tmp_path / name / "ca" / "ca.pem"
                procs.append((proc, proxy_port, metrics, ca))
            failures = []

            def load(proxy_port: int, ca, count: int) -> None:
                try:
                    for i in range(count):
                        with requests.Session(impersonate="chrome", verify=str(ca), timeout=20,
                                              proxy=f"http://127.0.0.1:{proxy_port}") as s:
                            assert s.get(f"https://{NAME}:{port}/f{i}").status_code == 200
                except Exception as error:  # noqa: BLE001 - collected for the assertion
                    failures.append(error)

            threads = [threading.Thread(target=load, args=(p[1], p[3], 25)) for p in procs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert failures == []
            victim, _, victim_metrics, _ = procs[0]
            deadline = time.monotonic() + 10
            reported = 0
            while reported < 25 and time.monotonic() < deadline:
                reported = value(scrape(victim_metrics), "mirror_store_committed_records_total")
                time.sleep(0.2)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            assert reported == 25
            survivor = procs[1][0]
            survivor.send_signal(signal.SIGTERM)
            assert survivor.wait(20) == 0
        finally:
            for proc, *_ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
    listed = mirror("captures", "list", "--json", "--limit", "0", "--store", url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    by_gateway = {}
    for row in rows:
        by_gateway[row["gateway"]] = by_gateway.get(row["gateway"], 0) + 1
    assert by_gateway == {"gw-one": 25, "gw-two": 25}
    assert len({row["id"] for row in rows}) == 50


def test_a_proxy_stopped_while_its_database_is_down_says_so_in_one_line(tmp_path):
    server = PgServer()
    try:
        url = server.new_database()
        proc, port, _ = start_proxy(tmp_path / "proxy", url)
        try:
            server.stop()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 502")
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        log = (tmp_path / "proxy" / "proxy.log").read_text()
        assert "Traceback" not in log, log
        assert re.search(r"ERROR .*capture store at stop: 1 capture record\(s\) not committed to "
                         r"postgresql://postgres@127\.0\.0\.1:\d+/test1 after 8 s \(last error: "
                         r"StoreError: cannot connect", log), log
    finally:
        server.close()

"""A SQLite capture store written by schema version 1 (before the gateway column) is
migrated in place when mirror opens it: its records stay, new ones name their gateway."""

from __future__ import annotations

import json
import sqlite3

from mirror.store import SCHEMA_VERSION, CaptureStore
from mirror.store.sqlite_store import APPLICATION_ID

V1_COLUMNS = ("started REAL, ended REAL, mode TEXT, client_addr TEXT, client_port INTEGER, "
              "dst_host TEXT, dst_port INTEGER, sni TEXT, protocol TEXT, ja3 TEXT, ja4 TEXT, "
              "ja4t TEXT, akamai TEXT, http_version TEXT, fidelity REAL, error TEXT")


def test_a_version_1_file_is_migrated_and_keeps_its_records(tmp_path):
    path = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"CREATE TABLE captures (id INTEGER PRIMARY KEY AUTOINCREMENT, {V1_COLUMNS}, "
               "record TEXT NOT NULL)")
    db.execute("INSERT INTO captures (started, mode, sni, record) VALUES (?, ?, ?, ?)",
               (1.5, "http", "old.test", json.dumps({"started": 1.5, "mode": "http", "sni": "old.test"})))
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.close()
    with CaptureStore(path) as store:
        store.add({"started": 2.5, "mode": "socks5", "sni": "new.test", "gateway": "gw-7"})
        store.flush()
        summaries = store.list(newest_first=False)
        assert [(s.id, s.sni, s.gateway) for s in summaries] == [(1, "old.test", None),
                                                                  (2, "new.test", "gw-7")]
        assert store.get(1) == {"id": 1, "started": 1.5, "mode": "http", "sni": "old.test"}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (2,)
    indexes = {row[1] for row in db.execute("PRAGMA index_list(captures)")}
    assert "captures_by_gateway" in indexes
    db.close()

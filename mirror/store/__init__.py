"""The capture store: every proxied connection's record in a SQLite file or a PostgreSQL
database (mirror.store.postgres_store; ``open_store`` picks by the --store value), and
`mirror captures`.

``CaptureStore`` (mirror.store.sqlite_store) keeps the records (the proxy writes through a
``StoreProcess``, mirror.store.store_process: the same store, written by a child process);
``CaptureSummary`` is one row of ``list``; mirror.store.command holds the click group ``captures`` that browses them.
mirror.store.record_view reads a record as a fingerprint view (for ``mirror identify`` and
``captures diff``, which live in mirror.identify: the store imports nothing of it).
"""

from mirror.store.sqlite_store import SCHEMA_VERSION, CaptureStore, StoreError
from mirror.store.summary import CaptureSummary

__all__ = ["SCHEMA_VERSION", "CaptureStore", "CaptureSummary", "StoreError"]

"""Which capture store a ``--store`` value (or ``$MIRROR_STORE``) names: a SQLite file path,
or a ``postgresql://`` URL for a store shared by several proxies."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mirror.paths import default_store_path
from mirror.store.sqlite_store import CaptureStore, StoreError

__all__ = ["ENV", "StoreSpec", "is_database_url", "open_store", "shown", "shown_url", "store_spec"]

ENV = "MIRROR_STORE"
_SCHEMES = ("postgresql://", "postgres://")
StoreSpec = Path | str       # a SQLite path, or a PostgreSQL URL


def is_database_url(spec: object) -> bool:
    """Is this --store value a PostgreSQL URL (rather than a SQLite file path)?"""
    return isinstance(spec, str) and spec.startswith(_SCHEMES)


def shown_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return "the PostgreSQL URL given"


def store_spec(value: str | os.PathLike[str] | None) -> StoreSpec:
    """The store a --store value names: ``None`` means ``$MIRROR_STORE``, else the default
    SQLite file in the user data directory."""
    if value is None or value == "":
        value = os.environ.get(ENV) or None
    if value is None:
        return default_store_path()
    if is_database_url(value):
        return str(value)
    return Path(os.fspath(value))


def shown(spec: StoreSpec) -> str:
    """How messages name the store (a URL without its password)."""
    return shown_url(str(spec)) if is_database_url(spec) else str(spec)


def open_store(spec: StoreSpec, *, create: bool = True) -> CaptureStore:
    """A ``CaptureStore`` (SQLite) or ``PostgresCaptureStore``; StoreError if unusable."""
    if is_database_url(spec):
        from mirror.store.postgres_store import PostgresCaptureStore

        return PostgresCaptureStore(str(spec), create=create)
    if not create and not Path(spec).exists():
        raise StoreError(f"no capture store at {spec} (nothing recorded there yet; see --store)")
    return CaptureStore(spec, create=create)

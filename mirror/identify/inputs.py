"""What ``mirror identify`` and ``mirror captures diff`` read: references and capture records.

Each helper either returns what the command asked for or prints ``mirror COMMAND: error: ...``
on stderr and exits with status 2 (bad input: no store, unknown capture id, unusable or empty
reference directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click

from mirror.identify.references import Reference, ReferenceFileError, load_references

__all__ = ["bad_input", "load_reference_set", "open_record"]


def bad_input(command: str, message: str) -> NoReturn:
    """Print ``mirror COMMAND: error: MESSAGE`` on stderr and exit with status 2."""
    click.echo(f"mirror {command}: error: {message}", err=True)
    raise SystemExit(2)


def load_reference_set(directory: Path | None, command: str) -> list[Reference]:
    """The references of ``directory`` (default fingerprints/); exit 2 when unusable or empty."""
    try:
        references = load_references(directory)
    except ReferenceFileError as error:
        bad_input(command, f"references: {error}")
    if not references:
        bad_input(command, f"no reference fingerprint (*.json) in {directory}")
    return references


def open_record(store_path: str | None, capture_id: int, command: str) -> dict[str, Any]:
    """One capture record from the store; exit 2 when the store or the id does not exist."""
    from mirror.store.open_store import open_store, store_spec
    from mirror.store.sqlite_store import StoreError

    path = store_spec(store_path)
    try:
        store = open_store(path, create=False)
    except StoreError as error:
        bad_input(command, str(error))
    try:
        record = store.get(capture_id)
    except StoreError as error:
        bad_input(command, str(error))
    finally:
        store.close()
    if record is None:
        bad_input(command, f"no capture with id {capture_id} in {store.path}")
    return record

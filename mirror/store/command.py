"""``mirror captures``: the click group that lists and shows what the capture store recorded.

``list`` prints a table (or ``--json``) of the stored connections, optionally following new
ones as they arrive; ``show ID`` prints one connection's full record. Both only read: a
missing store file is reported (exit status 1), never created.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from mirror.store.diff_command import diff_command
from mirror.store.export import FORMATS, export
from mirror.store.open_store import open_store, store_spec
from mirror.store.render import render_record, summary_table
from mirror.store.sqlite_store import CaptureStore, StoreError
from mirror.store.summary import CaptureSummary
from mirror.store.timespec import parse_time

__all__ = ["captures"]

FOLLOW_INTERVAL = 0.5  # seconds between two looks for new records with --follow
_WIDE = 240  # columns when printing to a pipe or file (keeps a table row on one line)


class _TimeType(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_time(str(value), time.time())
        except ValueError as error:
            self.fail(str(error), param, ctx)


class _ShareType(click.ParamType):
    """A share of fields: 0..1 or a percentage ("90%")."""

    name = "SHARE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        try:
            share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            share = -1.0
        if not 0 <= share <= 1:
            self.fail(f"{value!r} is not a share: give 0..1 (0.9) or a percentage (90%)", param, ctx)
        return share


STORE_HELP = ("The capture store: a SQLite file or a postgresql:// URL [env MIRROR_STORE; "
              "default: captures.sqlite3 in $MIRROR_HOME, else in $XDG_DATA_HOME/mirror, else "
              "in ~/.local/share/mirror].")


def _store_option(function):
    return click.option("--store", "store_path", default=None, metavar="PATH|URL",
                        envvar="MIRROR_STORE", help=STORE_HELP)(function)


def _fail(message: str) -> None:
    click.echo(f"mirror captures: error: {message}", err=True)
    raise SystemExit(1)


def _open_store(store_path: str | None) -> CaptureStore:
    try:
        return open_store(store_spec(store_path), create=False)
    except StoreError as error:
        _fail(str(error))
        raise  # unreachable: _fail exits


def _console(*, wide: bool = False) -> Console:
    """stdout; ``wide``: 240 columns when it is not a terminal (one table row, one line)."""
    console = Console(highlight=False)
    if wide and not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=_WIDE)
    return console


def _print_json_lines(summaries: list[CaptureSummary]) -> None:
    for summary in summaries:
        click.echo(json.dumps(summary.as_dict()))
    sys.stdout.flush()


def _filter_options(function):
    """The selection options shared by `list` and `export`."""
    for option in reversed([
        click.option("--since", type=_TimeType(), default=None,
                     help="Only connections started at or after TIME: ISO-8601 (local time "
                     "unless a zone is given), a duration ago (90s, 10m, 2h, 1d, 1w) or @EPOCH."),
        click.option("--until", type=_TimeType(), default=None,
                     help="Only connections started before TIME (same forms as --since)."),
        click.option("--sni", default=None,
                     help="SNI containing this text, or matching this glob when it has * or ?."),
        click.option("--client", default=None, metavar="ADDR", help="Client address (exactly)."),
        click.option("--ja4", default=None, help="JA4 equal to, or starting with, this."),
        click.option("--fidelity-below", type=_ShareType(), default=None,
                     help="Only connections whose share of exactly mirrored fields is below "
                     "this (0..1 or a percentage such as 90%)."),
    ]):
        function = option(function)
    return function


@click.group("captures")
def captures() -> None:
    """Browse the connections the proxy recorded in its capture store."""


@captures.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of summaries (with --follow: one JSON object per line).")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Show at most the N newest matching connections (0: all).")
@_filter_options
@click.option("--follow", is_flag=True,
              help="After the matches so far, keep printing new ones as they are recorded "
              "(until Ctrl-C).")
@_store_option
def list_command(as_json: bool, limit: int, since: float | None, until: float | None,
                 sni: str | None, client: str | None, ja4: str | None,
                 fidelity_below: float | None, follow: bool, store_path: Path | None) -> None:
    """List recorded connections, oldest of the selection first.

    Columns: id, start time (local), client, destination, SNI, mode, protocol, JA4, fidelity
    (share of fields mirrored exactly upstream) and the error, if any. With --json, an array
    of objects with the summary keys: id, started, ended, mode, client_addr, client_port,
    dst_host, dst_port, sni, protocol, ja3, ja4, ja4t, akamai, http_version, fidelity, error.
    """
    filters = {"since": since, "until": until, "sni": sni, "client": client, "ja4": ja4,
               "fidelity_below": fidelity_below}
    store = _open_store(store_path)
    console = _console(wide=True)
    try:
        summaries = store.list(limit=limit or None, newest_first=True, **filters)
        summaries.reverse()
        if as_json and not follow:
            click.echo(json.dumps([s.as_dict() for s in summaries], indent=2))
            return
        if as_json:
            _print_json_lines(summaries)
        else:
            console.print(summary_table(summaries, fixed_widths=follow))
            console.file.flush()
        if not follow:
            return
        last_id = max((s.id for s in summaries), default=0)
        while True:
            time.sleep(FOLLOW_INTERVAL)
            fresh = store.list(limit=None, newest_first=False, after_id=last_id, **filters)
            if not fresh:
                continue
            last_id = fresh[-1].id
            if as_json:
                _print_json_lines(fresh)
            else:
                console.print(summary_table(fresh, header=False, fixed_widths=True))
                console.file.flush()
    except KeyboardInterrupt:
        if not follow:
            raise
    except StoreError as error:
        _fail(str(error))
    finally:
        store.close()


@captures.command("show")
@click.argument("capture_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON (with its id).")
@_store_option
def show_command(capture_id: int, as_json: bool, store_path: Path | None) -> None:
    """Show everything recorded about one connection: TCP, TLS, HTTP, what was sent upstream."""
    store = _open_store(store_path)
    try:
        record = store.get(capture_id)
    except StoreError as error:
        _fail(str(error))
    finally:
        store.close()
    if record is None:
        _fail(f"no capture with id {capture_id} in {store.path}")
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        render_record(record, _console())


@captures.command("export")
@click.argument("capture_ids", metavar="[ID]...", type=int, nargs=-1)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
              help="json: the records; har: HAR 1.2 with fingerprints under _mirror; pcap-lite: "
                   "each connection's SYN and ClientHello (or HTTP heads) as a pcap.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE [default: stdout].")
@_filter_options
@_store_option
def export_command(capture_ids, fmt, out, since, until, sni, client, ja4, fidelity_below,
                   store_path) -> None:
    """Export the given captures (or all matching the filters, oldest first)."""
    store = _open_store(store_path)
    try:
        if capture_ids:
            ids = list(capture_ids)
        else:
            ids = [summary.id for summary in store.list(
                limit=None, newest_first=False, since=since, until=until, sni=sni,
                client=client, ja4=ja4, fidelity_below=fidelity_below)]
        records = []
        for capture_id in ids:
            record = store.get(capture_id)
            if record is None:
                _fail(f"no capture with id {capture_id} in {store.path}")
            records.append(record)
    except StoreError as error:
        _fail(str(error))
    finally:
        store.close()
    data = export(records, fmt)
    if out:
        with open(out, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


captures.add_command(diff_command)

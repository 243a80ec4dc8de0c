"""``mirror captures``: the click group that lists and shows what the capture store recorded.

``list`` prints a table (or ``--json``) of the stored connections, optionally following new
ones as they arrive; ``show ID`` prints one connection's full record. Both only read: a
missing store file is reported (exit status 1), never created.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any, NoReturn, TypedDict

import click
from rich.console import Console

from mirror.record.capture import CaptureRecord
from mirror.store.export import FORMATS, export
from mirror.store.open_store import open_store, store_spec
from mirror.store.render import compact_table, render_record, summary_table
from mirror.store.sqlite_store import CaptureStore, StoreError
from mirror.store.summary import CaptureSummary
from mirror.store.timespec import parse_time
from mirror.terminal import table_console

__all__ = ["captures"]

FOLLOW_INTERVAL = 0.5  # seconds between two looks for new records with --follow


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


def _fail(message: str) -> NoReturn:
    click.echo(f"mirror captures: error: {message}", err=True)
    raise SystemExit(1)


def _open_store(store_path: str | None) -> CaptureStore:
    try:
        return open_store(store_spec(store_path), create=False)
    except StoreError as error:
        _fail(str(error))


def _console(columns: int | None = None, *, wide: bool = False) -> Console:
    """stdout, as wide as :mod:`mirror.terminal` says (80 columns in a pipe)."""
    return table_console(columns, wide=wide)


class _Filters(TypedDict):
    """The selection options of `list` and `export`, as CaptureStore.list takes them."""

    since: float | None
    until: float | None
    sni: str | None
    client: str | None
    ja4: str | None
    fidelity_below: float | None


def _filters_text(filters: Mapping[str, Any]) -> str:
    shown = []
    for name, value in filters.items():
        if value is None:
            continue
        if name in ("since", "until"):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        elif name == "fidelity_below":
            value = f"{value:.0%}"
        shown.append(f"--{name.replace('_', '-')} {value}")
    return " (" + ", ".join(shown) + ")" if shown else ""


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
@click.option("--wide", is_flag=True,
              help="All columns at full length (id, time, client, destination, SNI, mode, "
              "protocol, JA4, fidelity, error), one row per line however long.")
@click.option("--columns", type=click.IntRange(min=40), default=None, metavar="N",
              help="Lay the table out for N columns [default: the terminal's width; 80 in a "
              "pipe or file, or $COLUMNS].")
@_store_option
def list_command(as_json: bool, limit: int, since: float | None, until: float | None,
                 sni: str | None, client: str | None, ja4: str | None,
                 fidelity_below: float | None, follow: bool, wide: bool, columns: int | None,
                 store_path: str | None) -> None:
    """List recorded connections, oldest of the selection first.

    Columns: id, start time (local), client, SNI (else the destination), JA4, fidelity (share
    of fields mirrored exactly upstream) and the error, if any, one line per connection laid
    out for the terminal (80 columns in a pipe; longer values end in "…"). --wide: id, start
    time, client, destination, SNI, mode, protocol, JA4, fidelity and error, in full. With
    --json, an array of objects with the summary keys: id, started, ended, mode, client_addr,
    client_port, dst_host, dst_port, sni, protocol, ja3, ja4, ja4t, akamai, http_version,
    fidelity, error.
    """
    filters = _Filters(since=since, until=until, sni=sni, client=client, ja4=ja4,
                       fidelity_below=fidelity_below)
    store = _open_store(store_path)
    console = _console(columns, wide=wide)

    def table(rows: list[CaptureSummary], header: bool = True):
        if wide:
            return summary_table(rows, header=header, fixed_widths=follow)
        return compact_table(rows, header=header, width=console.width, fixed_widths=follow)

    try:
        summaries = store.list(limit=limit or None, newest_first=True, **filters)
        summaries.reverse()
        if not summaries and not follow:
            click.echo(f"no captures match{_filters_text(filters)} in {store.path}", err=True)
        if as_json and not follow:
            click.echo(json.dumps([s.as_dict() for s in summaries], indent=2))
            return
        if as_json:
            _print_json_lines(summaries)
        elif summaries or follow:
            console.print(table(summaries))
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
                console.print(table(fresh, header=False))
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
def show_command(capture_id: int, as_json: bool, store_path: str | None) -> None:
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
        render_record(CaptureRecord.from_stored(record), _console())


@captures.command("export")
@click.argument("capture_ids", metavar="[ID]...", type=int, nargs=-1)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
              help="json: the records; har: HAR 1.2 with fingerprints under _mirror; pcap-lite: "
                   "each connection's SYN and ClientHello (or HTTP heads) as a pcap.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write to FILE [default: stdout].")
@click.option("--force", is_flag=True,
              help="Write pcap-lite to standard output even when it is a terminal.")
@_filter_options
@_store_option
def export_command(capture_ids, fmt, out, force, since, until, sni, client, ja4, fidelity_below,
                   store_path) -> None:
    """Export the given captures (or all matching the filters, oldest first).

    pcap-lite is binary: it is written to --out FILE or to a redirected standard output, and
    to a terminal only with --force."""
    filters = _Filters(since=since, until=until, sni=sni, client=client, ja4=ja4,
                       fidelity_below=fidelity_below)
    store = _open_store(store_path)
    try:
        if capture_ids:
            ids = list(capture_ids)
        else:
            ids = [summary.id for summary in store.list(
                limit=None, newest_first=False, **filters)]
        records: list[dict[str, Any]] = []
        for capture_id in ids:
            record = store.get(capture_id)
            if record is None:
                _fail(f"no capture with id {capture_id} in {store.path}")
            records.append(record)
    except StoreError as error:
        _fail(str(error))
    finally:
        store.close()
    if not records:
        click.echo(f"mirror captures: note: no captures match{_filters_text(filters)} in "
                   f"{store.path}; the export is empty", err=True)
    binary = fmt == "pcap-lite"
    if binary and not out and sys.stdout.isatty() and not force:
        _fail("pcap-lite is binary: give --out FILE, redirect stdout (> file.pcap), or --force "
              "to write it to the terminal anyway")
    data = export(records, fmt)
    if out:
        try:
            with open(out, "wb") as f:
                f.write(data)
        except OSError as error:
            _fail(f"cannot write {out}: {error.strerror or error}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()



"""``mirror identify``: which reference client a recorded connection, or each one of a pcap, is.

``mirror identify CAPTURE_ID`` compares one capture-store record, ``mirror identify --pcap
FILE`` every connection of a capture file, with the reference fingerprints (fingerprints/ or
``--references DIR``) using :mod:`mirror.identify.matching`: an exact match on JA4 + Akamai +
header order (HTTP/1: JA4 + header order), else the nearest references by weighted score, with
the fields that differ. A pcap shows HTTP inside TLS only with the session secrets (``--keylog``
or a pcapng carrying them); without them a match is exact on TLS only and says so.

Exit status: 0 every connection identified exactly (pcap: every connection that has a
ClientHello or an HTTP request; at least one), 1 otherwise (also a damaged pcap), 2 bad input:
unknown capture id, no store, unreadable pcap or key log, bad reference directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mirror.fingerprint.view import FingerprintView
from mirror.identify.inputs import bad_input, load_reference_set, open_record
from mirror.identify.matching import Identification, identify
from mirror.identify.references import Reference
from mirror.identify.tables import diff_table, wide_console
from mirror.pcapfile.connection_view import view_from_pcap_connection
from mirror.store.record_view import view_from_record

__all__ = ["identify_command"]

_NO_HTTP = ("HTTP not visible (inside TLS: give --keylog, or a pcapng carrying the TLS secrets)")


# --------------------------------------------------------------------------- results


def _ambiguous(ident: Identification) -> bool:
    """Equal on the little that was seen for several references: no client can be named."""
    return ident.exact is not None and not ident.complete and len(ident.tied) > 1


def _unseen_text(ident: Identification) -> str:
    return _NO_HTTP if "http" in ident.unobserved else "not seen: " + ", ".join(ident.unobserved)


def _result_json(ident: Identification | None, connection: dict[str, Any],
                 top: int) -> dict[str, Any]:
    if ident is None:
        return {"connection": connection, "identified": False, "identifiable": False,
                "exact": None, "tied": [],
                "complete": False, "key_fields": [], "unobserved": [], "nearest": [],
                "note": "no ClientHello or HTTP request seen"}
    return {
        "connection": connection,
        "identified": ident.exact is not None and ident.complete,
        "identifiable": not _ambiguous(ident),
        "exact": ident.exact.name if ident.exact is not None and not _ambiguous(ident) else None,
        "tied": [r.name for r in ident.tied],
        "complete": ident.complete,
        "key_fields": list(ident.key_fields),
        "unobserved": list(ident.unobserved),
        "nearest": [
            {"reference": c.name, "score": c.score, "exact": c.exact,
             "differing": list(c.differing),
             "fields": [d.as_dict() for d in c.diffs]}
            for c in ident.nearest[:top]
        ],
    }


def _print_result(console: Console, heading: str, ident: Identification | None, top: int) -> None:
    console.print(Text(heading, style="bold"))
    if ident is None:
        console.print(Text("  nothing to identify: no ClientHello or HTTP request seen",
                           style="dim"))
        return
    keys = " + ".join(ident.key_fields) or "nothing"
    if ident.exact is not None and ident.complete:
        console.print(Text(f"  exact match: {ident.exact.name}  (equal on {keys})",
                           style="bold green"))
    elif _ambiguous(ident):
        names = ", ".join(r.name for r in ident.tied)
        console.print(Text(f"  not identifiable: too little seen ({_unseen_text(ident)}); "
                           f"{len(ident.tied)} references are equal on {keys}: {names}",
                           style="bold yellow"))
        return
    elif ident.exact is not None:
        console.print(Text(f"  exact on what was seen only: {ident.exact.name}  "
                           f"(equal on {keys}; {_unseen_text(ident)})", style="bold yellow"))
    else:
        best = ident.nearest[0] if ident.nearest else None
        nearest = f"; nearest: {best.name} ({best.score:g}%)" if best else ""
        console.print(Text(f"  no exact match on {keys}{nearest}", style="bold red"))
    if len(ident.tied) > 1:
        others = ", ".join(r.name for r in ident.tied[1:])
        nearer = ident.exact.name if ident.exact is not None else "?"
        console.print(Text(f"  also exact: {others} (same {keys}; {nearer} is nearer on the "
                           "other fields)", style="green"))
    table = Table(title="nearest references", expand=False)
    table.add_column("reference", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("exact")
    table.add_column("differing fields", overflow="fold")
    for candidate in ident.nearest[:top]:
        style = "green" if candidate.exact else ""
        table.add_row(Text(candidate.name, style=style), f"{candidate.score:g}%",
                      Text("yes" if candidate.exact else "no", style=style),
                      Text(", ".join(candidate.differing) or "none",
                           style="red" if candidate.differing else ""))
    console.print(table)
    exact_name = ident.exact.name if ident.exact is not None else None
    best = next((c for c in ident.nearest if c.name == exact_name),
                ident.nearest[0] if ident.nearest else None)
    if best is not None and any(d.equal is False for d in best.diffs):
        console.print(diff_table(list(best.diffs), "this connection", f"ref:{best.name}",
                                 only_differing=True, title=f"fields that differ from {best.name}"))


def _identify_or_none(view: FingerprintView, references: list[Reference]) -> Identification | None:
    if not view.has("ja4") and view.http_version is None:
        return None
    return identify(view, references)


def _endpoint(host: Any, port: Any) -> str:
    host = "?" if host is None else str(host)
    port = "?" if port is None else port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@click.command("identify")
@click.argument("capture_id", metavar="[CAPTURE_ID]", type=int, required=False)
@click.option("--pcap", "pcap_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Identify every connection of this pcap / pcapng file instead of a capture.")
@click.option("--keylog", "keylog_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="With --pcap: an SSLKEYLOGFILE with TLS 1.3 secrets, to see HTTP inside TLS.")
@click.option("--store", "store_path", default=None, metavar="PATH|URL", envvar="MIRROR_STORE",
              help="The capture store: a SQLite file or a postgresql:// URL (default: "
              "captures.sqlite3 in $MIRROR_HOME, else in $XDG_DATA_HOME/mirror, else in "
              "~/.local/share/mirror).")
@click.option("--references", "references_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Directory of reference fingerprints (default: the fingerprints/ "
              "directory beside the mirror package).")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many nearest references to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (an array with --pcap).")
def identify_command(capture_id: int | None, pcap_path: Path | None, keylog_path: Path | None,
                     store_path: str | None, references_dir: Path | None, top: int,
                     as_json: bool) -> None:
    """Name the reference client a connection matches: CAPTURE_ID (from the store) or --pcap FILE.

    Exact: equal JA4, and for HTTP/2 the Akamai fingerprint and header order, for HTTP/1 the
    header order (names both requests carry, in the same order; HTTP/1 with their case).
    Otherwise the nearest references by weighted score, with the fields that differ (red;
    orange when they follow from another difference, e.g. JA4 from the cipher list).

    When little was seen (no TLS, say) and several references are equal on it, the connection
    is "not identifiable" and no client is named.

    With --json: {"connection", "identified", "identifiable", "exact", "tied", "complete",
    "key_fields", "unobserved", "nearest": [{"reference", "score", "exact", "differing",
    "fields"}]}.

    Exit status: 0 identified exactly, 1 not (or a damaged pcap), 2 bad input.
    """
    if (capture_id is None) == (pcap_path is None):
        bad_input("identify", "give either a CAPTURE_ID or --pcap FILE (one of them)")
    if keylog_path is not None and pcap_path is None:
        bad_input("identify", "--keylog only applies to --pcap")
    references = load_reference_set(references_dir, "identify")
    console = wide_console()

    if capture_id is not None:
        record = open_record(store_path, capture_id, "identify")
        view = view_from_record(record, f"capture {capture_id}")
        ident = _identify_or_none(view, references)
        destination = record.get("destination") or {}
        client = record.get("client") or {}
        connection = {"id": capture_id, "client": client, "destination": destination,
                      "sni": record.get("sni"), "http_version": view.http_version}
        if as_json:
            click.echo(json.dumps(_result_json(ident, connection, top), indent=2))
        else:
            source = _endpoint(client.get("addr"), client.get("port"))
            heading = (f"capture {capture_id}: {source} -> "
                       f"{_endpoint(destination.get('host'), destination.get('port'))}"
                       f"  {view.http_version or ''}  {view.get('ja4') or ''}")
            _print_result(console, heading, ident, top)
        identified = ident is not None and ident.exact is not None and ident.complete
        raise SystemExit(0 if identified else 1)

    assert pcap_path is not None  # exactly one of CAPTURE_ID and --pcap (checked above)
    from mirror.pcapfile.analyze import analyze_capture
    from mirror.pcapfile.reader import NotACaptureError

    keylog = None
    if keylog_path is not None:
        try:
            keylog = keylog_path.read_bytes()
        except OSError as error:
            bad_input("identify", f"{keylog_path}: {error.strerror or error}")
    try:
        analysis = analyze_capture(pcap_path, keylog=keylog)
    except NotACaptureError as error:
        bad_input("identify", str(error))
    results = []
    outcomes = []
    for number, conn in enumerate(analysis.connections, 1):
        view = view_from_pcap_connection(conn, f"#{number}")
        ident = _identify_or_none(view, references)
        connection = {"index": number, "transport": conn.transport, "src": conn.src,
                      "sport": conn.sport, "dst": conn.dst, "dport": conn.dport,
                      "sni": conn.hello.sni if conn.hello else None,
                      "http_version": view.http_version}
        results.append(_result_json(ident, connection, top))
        if ident is not None:
            outcomes.append(ident.exact is not None and ident.complete)
        if not as_json:
            heading = (f"#{number} {conn.transport} {_endpoint(conn.src, conn.sport)} -> "
                       f"{_endpoint(conn.dst, conn.dport)}  {view.http_version or ''}  "
                       f"{view.get('ja4') or ''}")
            _print_result(console, heading, ident, top)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    elif not analysis.connections:
        console.print(Text(f"{pcap_path}: no connection", style="dim"))
    if analysis.error is not None:
        click.echo(f"mirror identify: error: capture damaged: {analysis.error}", err=True)
    sys.stdout.flush()
    ok = bool(outcomes) and all(outcomes) and analysis.error is None
    raise SystemExit(0 if ok else 1)

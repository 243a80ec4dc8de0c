"""The ``mirror fingerprint`` command's output: one JSON object or table row per connection.

``run_fingerprint(path, as_json=..., keylog=...)`` analyses a capture and prints it; it returns
the process exit code: 0 on success, 1 when the capture is damaged or truncated (everything
readable before the damage is printed first, then a one-line error on stderr), 2 when the file
does not exist or is not a pcap / pcapng capture (one-line error, nothing else).

Frames of a link type :mod:`mirror.pcapfile.decap` cannot read are skipped with a note on
stderr (exit code unaffected).

JSON (``--json``): an array with one object per connection, in order of first appearance, with
exactly the keys of :data:`JSON_KEYS`; a value is ``null`` when absent:

* ``src``, ``dst``, ``sport``, ``dport`` -- the client and server (the client is the SYN
  sender; see mirror.pcapfile.streams for captures without a SYN);
* ``ja4t``, ``p0f`` -- from the client's SYN;
* ``sni``, ``alpn`` (list of protocols), ``ja3`` (MD5), ``ja3_full`` (the JA3 string),
  ``ja3n`` (MD5 of JA3 with sorted extensions), ``ja4``, ``ja4_r``, ``ja4_o``, ``ja4_ro`` --
  from the first ClientHello (over TCP, or QUIC, whose JA4 starts with ``q``);
* ``http`` -- the requests, each ``{"ja4h": ..., "headers": [names in wire order, exact case]}``
  (HTTP/2: pseudo-headers first, as sent);
* ``akamai`` -- the HTTP/2 Akamai fingerprint.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mirror.pcapfile.analyze import CaptureAnalysis, ConnectionReport, analyze_capture
from mirror.pcapfile.reader import NotACaptureError

__all__ = ["JSON_KEYS", "analysis_json", "connection_json", "render_table", "run_fingerprint"]

JSON_KEYS = (
    "src",
    "dst",
    "sport",
    "dport",
    "ja4t",
    "p0f",
    "sni",
    "alpn",
    "ja3",
    "ja3_full",
    "ja3n",
    "ja4",
    "ja4_r",
    "ja4_o",
    "ja4_ro",
    "http",
    "akamai",
)

_TABLE_REQUESTS = 20  # requests listed per connection in the table (JSON lists all)


def connection_json(connection: ConnectionReport) -> dict[str, Any]:
    """The JSON object of one connection: exactly :data:`JSON_KEYS`."""
    hello = connection.hello
    return {
        "src": connection.src,
        "dst": connection.dst,
        "sport": connection.sport,
        "dport": connection.dport,
        "ja4t": connection.ja4t,
        "p0f": connection.p0f,
        "sni": hello.sni if hello else None,
        "alpn": (hello.alpn or None) if hello else None,
        "ja3": hello.ja3 if hello else None,
        "ja3_full": hello.ja3_full if hello else None,
        "ja3n": hello.ja3n if hello else None,
        "ja4": hello.ja4 if hello else None,
        "ja4_r": hello.ja4_r if hello else None,
        "ja4_o": hello.ja4_o if hello else None,
        "ja4_ro": hello.ja4_ro if hello else None,
        "http": [{"ja4h": r.ja4h, "headers": list(r.headers)} for r in connection.http] or None,
        "akamai": connection.akamai,
    }


def analysis_json(analysis: CaptureAnalysis) -> list[dict[str, Any]]:
    return [connection_json(connection) for connection in analysis.connections]


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _fields(connection: ConnectionReport) -> list[tuple[str, str, str]]:
    """(label, value, style) lines of one connection's table cell, absent values left out."""
    lines: list[tuple[str, str, str]] = []

    def add(label: str, value: object, style: str = "") -> None:
        if value is not None and value != "" and value != []:
            lines.append((label, str(value), style))

    add("ja4t", connection.ja4t)
    add("p0f", connection.p0f)
    for number, hello in enumerate(connection.tls, 1):
        suffix = f" ({number})" if len(connection.tls) > 1 else ""
        add("sni" + suffix, hello.sni, "bold")
        add("alpn" + suffix, ",".join(hello.alpn) if hello.alpn else None)
        add("ja3" + suffix, hello.ja3)
        add("ja3n" + suffix, hello.ja3n)
        add("ja4" + suffix, hello.ja4, "bold green")
        add("ja4_o" + suffix, hello.ja4_o)
        add("ja4_r" + suffix, hello.ja4_r, "dim")
        add("ja4_ro" + suffix, hello.ja4_ro, "dim")
        add("ja3_full" + suffix, hello.ja3_full, "dim")
    add("akamai", connection.akamai, "bold cyan")
    for request in connection.http[:_TABLE_REQUESTS]:
        add("ja4h", request.ja4h, "bold yellow")
        add("headers", ", ".join(request.headers), "dim")
    hidden = len(connection.http) - _TABLE_REQUESTS
    if hidden > 0:
        add("", f"... {hidden} more requests (see --json)", "dim")
    for error in connection.errors:
        add("error", error, "red")
    return lines


def render_table(analysis: CaptureAnalysis, console: Console) -> None:
    """A table with one row per connection: who talked to whom, and every fingerprint found."""
    count = len(analysis.connections)
    table = Table(title=f"{os.path.basename(analysis.path)}: {count} connection{'' if count == 1 else 's'}",
                  show_lines=True, expand=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("connection", overflow="fold", max_width=30)
    table.add_column("fingerprints", overflow="fold")
    for number, connection in enumerate(analysis.connections, 1):
        notes = [connection.transport if connection.transport == "tcp" else "udp (quic)"]
        if connection.tunnel:
            notes.append(f"via {connection.tunnel}")
        if connection.decrypted:
            notes.append("decrypted")
        who = Text()
        who.append(_endpoint(connection.src, connection.sport), "bold")
        who.append("\n-> " + _endpoint(connection.dst, connection.dport))
        who.append("\n" + ", ".join(notes), "dim")
        cell = Table.grid(padding=(0, 1))
        cell.add_column(no_wrap=True, style="dim")
        cell.add_column(overflow="fold")
        lines = _fields(connection)
        if not lines:
            cell.add_row("", Text("no fingerprint", style="dim"))
        for label, value, style in lines:
            cell.add_row(label, Text(value, style=style))
        table.add_row(str(number), who, cell)
    console.print(table)


def run_fingerprint(
    path: str,
    *,
    as_json: bool = False,
    keylog: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Analyse ``path`` and print it; the exit code (see the module doc)."""
    out = out or sys.stdout
    err = err or sys.stderr
    keylog_text = None
    if keylog is not None:
        try:
            with open(keylog, "rb") as handle:
                keylog_text = handle.read()
        except OSError as error:
            print(f"mirror fingerprint: error: {keylog}: {error.strerror or error}", file=err)
            return 2
    try:
        analysis = analyze_capture(path, keylog=keylog_text)
    except NotACaptureError as error:
        print(f"mirror fingerprint: error: {error}", file=err)
        return 2
    if as_json:
        out.write(json.dumps(analysis_json(analysis), indent=2) + "\n")
    else:
        render_table(analysis, Console(file=out, highlight=False))
    out.flush()
    if analysis.unsupported_linktypes:
        kinds = ", ".join(str(k) for k in sorted(analysis.unsupported_linktypes))
        print(f"mirror fingerprint: note: frames of unsupported link type {kinds} were skipped", file=err)
    if analysis.error is not None:
        print(f"mirror fingerprint: error: capture damaged: {analysis.error}", file=err)
        return 1
    return 0

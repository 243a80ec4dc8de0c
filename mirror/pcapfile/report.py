"""The ``mirror fingerprint`` command's output: one JSON object or table row per connection.

``run_fingerprint(path, as_json=..., keylog=...)`` analyses a capture and prints it; it returns
the process exit code: 0 on success, 1 when the capture is damaged or truncated (everything
readable before the damage is printed first, then a one-line error on stderr), 2 when the file
does not exist or is not a pcap / pcapng capture (one-line error, nothing else).

Each connection is printed as soon as it is analysed (the table as a heading line and one
line per fingerprint, folded to the terminal's width or 80 columns; JSON element by element),
so memory does not grow with the output; a terminal sees progress on stderr during a long run.

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
import time
from typing import Any, TextIO

from mirror.pcapfile.analyze import CaptureAnalysis, ConnectionReport, open_capture
from mirror.pcapfile.reader import NotACaptureError

__all__ = ["JSON_KEYS", "TableWriter", "analysis_json", "connection_json", "render_table",
           "run_fingerprint"]

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


_STYLES = {"bold": "1", "dim": "2", "red": "31", "bold green": "1;32", "bold cyan": "1;36",
           "bold yellow": "1;33"}
_LABEL_WIDTH = 12     # "ja3_full (2)"
_INDENT = "    "


class TableWriter:
    """The table, written one connection at a time as the reports come (no row waits for the
    others, so memory does not grow with the capture): a heading line per connection, then
    its fingerprints, one per line, long values folded to fit ``width`` columns."""

    def __init__(self, out: TextIO, width: int, color: bool) -> None:
        self.out = out
        self.width = max(width, 40)
        self.color = color
        self.count = 0

    def _paint(self, text: str, style: str) -> str:
        code = _STYLES.get(style)
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and code and text else text

    def _fold(self, text: str, width: int) -> list[str]:
        return [text[i:i + width] for i in range(0, len(text), width)] or [""]

    def heading(self, path: str) -> None:
        self.out.write(self._paint(os.path.basename(path), "bold") + "\n")

    def connection(self, connection: ConnectionReport) -> None:
        self.count += 1
        notes = [connection.transport if connection.transport == "tcp" else "udp (quic)"]
        if connection.tunnel:
            notes.append(f"via {connection.tunnel}")
        if connection.decrypted:
            notes.append("decrypted")
        who = (f"#{self.count}  {_endpoint(connection.src, connection.sport)} -> "
               f"{_endpoint(connection.dst, connection.dport)}")
        lines = [self._paint(who, "bold") + "  " + self._paint(", ".join(notes), "dim")]
        value_width = self.width - len(_INDENT) - _LABEL_WIDTH - 1
        fields = _fields(connection) or [("", "no fingerprint", "dim")]
        for label, value, style in fields:
            pieces = self._fold(value, value_width)
            label_text = self._paint(label.ljust(_LABEL_WIDTH), "dim")
            lines.append(f"{_INDENT}{label_text} {self._paint(pieces[0], style)}")
            blank = " " * (_LABEL_WIDTH + 1)
            lines.extend(f"{_INDENT}{blank}{self._paint(piece, style)}" for piece in pieces[1:])
        self.out.write("\n".join(lines) + "\n\n")

    def summary(self, path: str) -> None:
        plural = "" if self.count == 1 else "s"
        self.out.write(f"{os.path.basename(path)}: {self.count} connection{plural}\n")


def render_table(analysis: CaptureAnalysis, out: TextIO, width: int = 80,
                 color: bool = False) -> None:
    """The table of a whole analysis (see :class:`TableWriter`)."""
    writer = TableWriter(out, width, color)
    writer.heading(analysis.path)
    for connection in analysis.connections:
        writer.connection(connection)
    writer.summary(analysis.path)


class _Progress:
    """How far a long run has got, on one line of stderr that is rewritten (a terminal only,
    and only once the run has taken more than ``after`` seconds)."""

    def __init__(self, err: TextIO, after: float = 0.5, every: float = 0.2) -> None:
        try:
            self.live = err.isatty()
        except (AttributeError, ValueError):
            self.live = False
        self.err = err
        self.start = time.monotonic()
        self.after, self.every = after, every
        self.last = 0.0
        self.shown = False

    def show(self, text: str) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self.start < self.after or now - self.last < self.every:
            return
        self.last = now
        self.shown = True
        self.err.write(f"\r\x1b[Kmirror fingerprint: {text}")
        self.err.flush()

    def reading(self, done: int, size: int) -> None:
        self.show(f"reading {min(100, done * 100 // size)}% ({done / 2**20:.1f} of "
                  f"{size / 2**20:.1f} MiB)")

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[K")
            self.err.flush()


def run_fingerprint(
    path: str,
    *,
    as_json: bool = False,
    keylog: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Analyse ``path`` and print it, each connection as soon as it is analysed (a terminal
    gets progress on stderr while a long file is read); the exit code (see the module doc)."""
    from mirror.terminal import table_width

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
    progress = _Progress(err)
    try:
        analysis, reports = open_capture(path, keylog=keylog_text, progress=progress.reading)
    except NotACaptureError as error:
        progress.clear()
        print(f"mirror fingerprint: error: {error}", file=err)
        return 2
    if as_json:
        count = 0
        for count, connection in enumerate(reports, 1):
            text = json.dumps(connection_json(connection), indent=2).replace("\n", "\n  ")
            out.write(("[\n  " if count == 1 else ",\n  ") + text)
            progress.show(f"{count:,} connections analysed")
        out.write("\n]\n" if count else "[]\n")
    else:
        try:
            color = out.isatty() and "NO_COLOR" not in os.environ
        except (AttributeError, ValueError):
            color = False
        writer = TableWriter(out, table_width(stream=out), color)
        writer.heading(path)
        for connection in reports:
            writer.connection(connection)
            progress.show(f"{writer.count:,} connections analysed")
        writer.summary(path)
    progress.clear()
    out.flush()
    if analysis.unsupported_linktypes:
        kinds = ", ".join(str(k) for k in sorted(analysis.unsupported_linktypes))
        print(f"mirror fingerprint: note: frames of unsupported link type {kinds} were skipped", file=err)
    if analysis.error is not None:
        print(f"mirror fingerprint: error: capture damaged: {analysis.error}", file=err)
        return 1
    return 0

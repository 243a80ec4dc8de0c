"""How `mirror captures` shows stored connections: a summary table, and one record in sections.

Records come from connections that may have failed anywhere; they are read typed
(:class:`mirror.record.capture.CaptureRecord`: a missing or odd-typed part shows as absent,
never raises) and printed as plain text (no rich markup is interpreted inside recorded values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from mirror.record.capture import (
    AlpnPart,
    CaptureRecord,
    ClientPart,
    DestinationPart,
    EmittedPart,
    EmittedTlsPart,
    HttpPart,
    SentHelloPart,
    TcpPart,
    TlsPart,
    UpstreamPart,
)
from mirror.record.measured_fidelity import difference_text
from mirror.store.summary import CaptureSummary

__all__ = ["compact_table", "endpoint", "fidelity_percent", "local_time", "render_record",
           "summary_table"]

ERROR_WIDTH = 40  # characters of the error message the table shows
_STATUS_STYLE = {"exact": "green", "approximated": "yellow", "impossible": "red"}

# (header, justify, width in --follow mode, where rows must line up across tables)
_COLUMNS: list[tuple[str, JustifyMethod, int]] = [
    ("id", "right", 7),
    ("time", "left", 19),
    ("client", "left", 21),
    ("destination", "left", 26),
    ("SNI", "left", 24),
    ("mode", "left", 11),
    ("protocol", "left", 11),
    ("JA4", "left", 36),
    ("fidelity", "right", 8),
    ("error", "left", ERROR_WIDTH),
    ("gateway", "left", 16),
]


def local_time(epoch: Any, *, with_zone: bool = False) -> str:
    """Epoch seconds as local ISO-8601 to the second ("" when absent or impossible)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        return ""
    try:
        moment = datetime.fromtimestamp(epoch)
        if with_zone:
            moment = moment.astimezone()
        return moment.isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(epoch)


def endpoint(host: Any, port: Any) -> str:
    """``host:port`` (``[v6]:port``); either part may be missing."""
    host_text = "" if host is None else str(host)
    if port is None:
        return host_text
    if ":" in host_text:
        host_text = f"[{host_text}]"
    return f"{host_text}:{port}"


def fidelity_percent(share: float | None) -> str:
    """0.75 -> "75%", 2/3 -> "66.6%" (rounded down, so only a perfect share reads 100%)."""
    if share is None or not math.isfinite(share):
        return ""
    tenths = math.floor(share * 1000 + 1e-9)
    return f"{tenths // 10}%" if tenths % 10 == 0 else f"{tenths / 10:.1f}%"


def _truncate(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_table(summaries: Iterable[CaptureSummary], *, header: bool = True,
                  fixed_widths: bool = False) -> Table:
    """One row per connection. ``fixed_widths`` keeps columns aligned between tables."""
    table = Table(show_header=header, header_style="bold", box=None, pad_edge=False)
    for name, justify, width in _COLUMNS:
        table.add_column(name, justify=justify, overflow="fold", no_wrap=False,
                         width=width if fixed_widths else None)
    for s in summaries:
        fidelity = fidelity_percent(s.fidelity)
        fidelity_style = "" if s.fidelity is None else ("green" if s.fidelity >= 1 else "yellow")
        table.add_row(
            Text(str(s.id), style="bold"),
            Text(local_time(s.started)),
            Text(endpoint(s.client_addr, s.client_port)),
            Text(endpoint(s.dst_host, s.dst_port)),
            Text(s.sni or "", style="bold"),
            Text(s.mode or ""),
            Text(s.protocol or ""),
            Text(s.ja4 or "", style="green"),
            Text(fidelity, style=fidelity_style),
            Text(_truncate(s.error, ERROR_WIDTH), style="red"),
            Text(s.gateway or "", style="dim"),
        )
    return table


def _short_time(epoch: Any) -> str:
    """Epoch seconds as local "MM-DD HH:MM:SS" ("" when absent or impossible)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        return ""
    try:
        return datetime.fromtimestamp(epoch).strftime("%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(epoch)


# The compact layout: (header, justify, narrowest, widest); ``None``: as wide as its values.
# Every row is one line; a value longer than its column ends in "…" (--wide shows it all).
_COMPACT: list[tuple[str, JustifyMethod, int | None, int | None]] = [
    ("id", "right", None, None),
    ("time", "left", None, None),
    ("client", "left", 15, 47),
    ("SNI / destination", "left", 12, 60),
    ("JA4", "left", 11, 36),
    ("fid.", "right", None, None),
    ("error", "left", 5, ERROR_WIDTH),
]
# Who gives up room first, and down to how much: a long error first, then the JA4 (its first
# part still works with --ja4), then the rest of the error, the destination, the client.
_SHRINK_ORDER = (("error", 20), ("JA4", 11), ("error", 5), ("SNI / destination", 12),
                 ("client", 15))


def _compact_widths(cells: dict[str, list[str]], width: int) -> dict[str, int]:
    """Column widths that fit ``width`` (one space between columns), narrowing the flexible
    columns in ``_SHRINK_ORDER``."""
    widths = {}
    for name, _, _, widest in _COMPACT:
        natural = max([len(name)] + [len(value) for value in cells[name]])
        widths[name] = natural if widest is None else max(min(natural, widest), len(name))
    excess = sum(widths.values()) + len(widths) - 1 - width
    for name, narrowest in _SHRINK_ORDER:
        if excess <= 0:
            break
        give = min(excess, max(0, widths[name] - narrowest))
        widths[name] -= give
        excess -= give
    return widths


def compact_table(summaries: Iterable[CaptureSummary], *, header: bool = True,
                  width: int = 80, fixed_widths: bool = False) -> Table:
    """One line per connection, fitting ``width`` columns (80 in a pipe).

    Client, SNI (else the destination), JA4 and error narrow as needed, each down to its
    narrowest, and end in "…" when cut. ``fixed_widths`` lays the columns out for their widest
    values, so that rows of later tables line up (--follow).
    """
    rows: list[tuple[dict[str, str], CaptureSummary]] = []
    for s in summaries:
        rows.append(({
            "id": str(s.id), "time": _short_time(s.started),
            "client": endpoint(s.client_addr, s.client_port),
            "SNI / destination": s.sni or endpoint(s.dst_host, s.dst_port),
            "JA4": s.ja4 or "", "fid.": fidelity_percent(s.fidelity),
            "error": " ".join((s.error or "").split()),
        }, s))
    cells = {name: [row[name] for row, _ in rows] for name, *_ in _COMPACT}
    if fixed_widths:
        cells = {name: values + ["9" * 7 if name == "id" else "x" * (widest or 14)]
                 for (name, _, _, widest), values in zip(_COMPACT, cells.values(), strict=True)}
    widths = _compact_widths(cells, width)
    table = Table(show_header=header, header_style="bold", box=None, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    for name, justify, _, _ in _COMPACT:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",
                         width=widths[name])
    for row, s in rows:
        fidelity_style = "" if s.fidelity is None else ("green" if s.fidelity >= 1 else "yellow")
        table.add_row(
            Text(row["id"], style="bold"), Text(row["time"]), Text(row["client"]),
            Text(row["SNI / destination"], style="bold" if s.sni else ""),
            Text(row["JA4"], style="green"), Text(row["fid."], style=fidelity_style),
            Text(row["error"], style="red"),
        )
    return table


def _show(value: Any) -> str:
    """A recorded value as one readable string ("" when absent)."""
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(item) for item in value)
    return str(value)


class _Section:
    """Label/value lines under one heading; absent values are left out."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.grid = Table.grid(padding=(0, 2))
        self.grid.add_column(style="dim", no_wrap=True)
        self.grid.add_column(overflow="fold")
        self.rows = 0

    def add(self, label: str, value: Any, style: str = "") -> None:
        text = value if isinstance(value, Text) else Text(_show(value), style=style)
        if text.plain:
            self.grid.add_row(label, text)
            self.rows += 1

    def print(self, console: Console) -> None:
        console.print()
        console.rule(Text(self.title, style="bold"), align="left")
        if self.rows:
            console.print(self.grid)
        else:
            console.print(Text("  (nothing recorded)", style="dim"))


def _hex_list(values: tuple[int, ...] | None) -> str:
    return "" if values is None else ", ".join(f"0x{v:04x}" for v in values)


def _connection(record: CaptureRecord) -> _Section:
    section = _Section("connection")
    section.add("id", record.id, "bold")
    started, ended = record.started, record.ended
    section.add("started", local_time(started, with_zone=True))
    section.add("ended", local_time(ended, with_zone=True))
    if started is not None and ended is not None:
        section.add("duration", f"{ended - started:.3f} s")
    section.add("mode", record.mode)
    section.add("gateway", record.gateway)
    client = record.client or ClientPart()
    section.add("client", endpoint(client.addr, client.port))
    destination = record.destination or DestinationPart()
    where = endpoint(destination.host, destination.port)
    source = destination.source
    section.add("destination", f"{where} (from {source})" if where and source else where)
    section.add("sni", record.sni, "bold")
    section.add("protocol", record.protocol)
    alpn = record.alpn or AlpnPart()
    section.add("alpn offered", alpn.offered)
    section.add("alpn to client", alpn.client)
    section.add("alpn upstream", alpn.upstream)
    upstream = record.upstream or UpstreamPart()
    section.add("upstream route", upstream.route)
    section.add("upstream error", upstream.error, "red")
    counts = record.bytes
    if counts is not None:
        section.add("bytes", f"{_show(counts.up) or '?'} up, {_show(counts.down) or '?'} down")
    return section


def _tcp(tcp: TcpPart) -> _Section:
    section = _Section("TCP")
    section.add("ja4t", tcp.ja4t, "bold green")
    section.add("p0f", tcp.p0f)
    section.add("ip version", tcp.ip_version)
    section.add("ttl", tcp.ttl)
    section.add("window", tcp.window)
    section.add("mss", tcp.mss)
    section.add("window scale", tcp.wscale)
    section.add("option kinds", tcp.option_kinds)
    section.add("error", tcp.error, "red")
    return section


def _tls(tls: TlsPart, title: str = "TLS") -> _Section:
    section = _Section(title)
    for name in ("ja4", "ja4_o", "ja4_r", "ja4_ro", "ja3", "ja3n"):
        section.add(name, getattr(tls, name), "bold green" if name == "ja4" else "")
    section.add("sni", tls.sni)
    section.add("alpn", tls.alpn)
    legacy = tls.legacy_version
    section.add("legacy version", _hex_list((legacy,)) if legacy is not None else None)
    section.add("supported versions", _hex_list(tls.supported_versions))
    section.add("cipher suites", _hex_list(tls.cipher_suites))
    if tls.extensions is not None:
        names = [e.name or _show(e.type) for e in tls.extensions]
        section.add("extensions", ", ".join(names))
    else:
        section.add("extensions", tls.extension_types)
    section.add("groups", _hex_list(tls.supported_groups))
    section.add("signature algs", _hex_list(tls.signature_algorithms))
    return section


def _http(http: HttpPart) -> _Section:
    section = _Section("HTTP")
    section.add("version", http.version)
    section.add("akamai", http.h2 and http.h2.akamai, "bold cyan")
    for number, request in enumerate(http.requests or (), 1):
        target = request.target or request.path
        line = f"{_show(request.method)} {_show(target)}".strip()
        if request.authority:
            line += f"  ({request.authority})"
        if request.status is not None:
            line += f"  -> {request.status}"
        section.add(f"request {number}", line, "bold")
        section.add("  ja4h", request.ja4h, "yellow")
        if request.headers is not None:
            section.add("  headers", ", ".join(name for name, _ in request.headers))
    return section


def _sent_vs_client(sent: str | None, seen: str | None) -> Text | None:
    if sent is None:
        return None
    same = sent == seen
    mark = Text(" (same as the client)" if same else " (client: " + _show(seen) + ")",
                style="green" if same else "yellow")
    return Text(sent) + mark


def _sent_hello(section: _Section, hello: SentHelloPart | None, client_tls: TlsPart) -> None:
    """The hello written upstream, as measured: the client's own, or the fields that differ;
    its JA4 / JA4_o / JA3 string next to the client's."""
    if hello is None:
        return
    if not hello.measured:
        predicted = ("not measured" if hello.predicted_exact is None
                     else "the client's (predicted, not measured)" if hello.predicted_exact
                     else "changed by BoringSSL (predicted, not measured)")
        section.add("hello", predicted, "dim")
        return
    if hello.exact:
        section.add("hello", "the client's own (measured)", "green")
    else:
        fields = [d.field or "?" for d in hello.differences or ()]
        section.add("hello", Text(f"differs from the client's (measured) in {len(fields)} "
                                  f"field(s): " + ", ".join(fields), style="yellow"))
        for difference in hello.differences or ():
            field = difference.field or "?"
            text = difference_text(field, difference.client or "", difference.sent or "")
            section.add(f"  {field}", text.removeprefix(f"{field}: "), "yellow")
    for label, sent, seen in (("ja4 sent", hello.ja4, client_tls.ja4),
                              ("ja4_o sent", hello.ja4_o, client_tls.ja4_o),
                              ("ja3 sent", hello.ja3, client_tls.ja3_full)):
        section.add(label, _sent_vs_client(sent, seen))


def _emitted(emitted: EmittedPart, client_tls: TlsPart,
             upstream: UpstreamPart) -> tuple[_Section, Table | None]:
    section = _Section("emitted upstream / fidelity")
    if upstream.engine is not None:
        reason = f" ({upstream.engine_reason})" if upstream.engine_reason else ""
        section.add("engine", f"{upstream.engine}{reason}", "bold")
    _sent_hello(section, (emitted.tls or EmittedTlsPart()).hello, client_tls)
    fidelity = emitted.fidelity
    if not fidelity:
        return section, None
    counts = {"exact": 0, "approximated": 0, "impossible": 0}
    for verdict in fidelity.values():
        if verdict.status in counts:
            counts[verdict.status] += 1
    summary = Text()
    for status, count in counts.items():
        summary.append(f"{count} {status}", style=_STATUS_STYLE[status])
        summary.append("  ")
    share = counts["exact"] / len(fidelity)
    summary.append(f"({fidelity_percent(share)} exact)")
    section.add("fields", summary)
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("field", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    order = {"impossible": 0, "approximated": 1, "exact": 2}
    entries = sorted(fidelity.items(), key=lambda item: order.get(item[1].status or "", -1))
    for field, verdict in entries:
        status = verdict.status or "?"
        table.add_row(Text(field), Text(status, style=_STATUS_STYLE.get(status, "")),
                      Text(_show(verdict.detail)))
    return section, table


def _errors(record: CaptureRecord) -> _Section:
    section = _Section("error")
    error = record.error
    if error is not None:
        section.add(error.stage or "error", error.message, "red")
    note = record.store_error
    if note != (error and error.message):
        section.add("store", note, "red")
    return section


def render_record(record: CaptureRecord, console: Console) -> None:
    """Print one record in sections: connection, TCP, TLS, HTTP, emitted/fidelity, error."""
    _connection(record).print(console)
    _tcp(record.tcp or TcpPart()).print(console)
    tls = record.tls or TlsPart()
    _tls(tls).print(console)
    _http(record.http or HttpPart()).print(console)
    emitted, fields = _emitted(record.emitted or EmittedPart(), tls,
                               record.upstream or UpstreamPart())
    emitted.print(console)
    if fields is not None:
        console.print(fields)
    _errors(record).print(console)

"""How `mirror captures` shows stored connections: a summary table, and one record in sections.

Records come from connections that may have failed anywhere, so every value is looked up
defensively (a missing or odd-typed part shows as absent, never raises) and printed as plain
text (no rich markup is interpreted inside recorded values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mirror.store.summary import CaptureSummary

__all__ = ["compact_table", "endpoint", "fidelity_percent", "local_time", "render_record",
           "summary_table"]

ERROR_WIDTH = 40  # characters of the error message the table shows
_STATUS_STYLE = {"exact": "green", "approximated": "yellow", "impossible": "red"}

# (header, justify, width in --follow mode, where rows must line up across tables)
_COLUMNS = [
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
_COMPACT = [
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
    for name, _, narrowest, widest in _COMPACT:
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
    rows = []
    for s in summaries:
        rows.append({
            "id": str(s.id), "time": _short_time(s.started),
            "client": endpoint(s.client_addr, s.client_port),
            "SNI / destination": s.sni or endpoint(s.dst_host, s.dst_port),
            "JA4": s.ja4 or "", "fid.": fidelity_percent(s.fidelity),
            "error": " ".join((s.error or "").split()), "_summary": s,
        })
    cells = {name: [row[name] for row in rows] for name, *_ in _COMPACT}
    if fixed_widths:
        cells = {name: values + ["9" * 7 if name == "id" else "x" * (widest or 14)]
                 for (name, _, _, widest), values in zip(_COMPACT, cells.values(), strict=True)}
    widths = _compact_widths(cells, width)
    table = Table(show_header=header, header_style="bold", box=None, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    for name, justify, _, _ in _COMPACT:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",
                         width=widths[name])
    for row in rows:
        s = row["_summary"]
        fidelity_style = "" if s.fidelity is None else ("green" if s.fidelity >= 1 else "yellow")
        table.add_row(
            Text(row["id"], style="bold"), Text(row["time"]), Text(row["client"]),
            Text(row["SNI / destination"], style="bold" if s.sni else ""),
            Text(row["JA4"], style="green"), Text(row["fid."], style=fidelity_style),
            Text(row["error"], style="red"),
        )
    return table


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _show(value: Any) -> str:
    """A recorded value as one readable string ("" when absent)."""
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_show(item) if not isinstance(item, (list, dict)) else str(item)
                         for item in value)
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


def _hex_list(values: Any) -> str:
    if not isinstance(values, list):
        return _show(values)
    return ", ".join(f"0x{v:04x}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
                     for v in values)


def _connection(record: Mapping[str, Any]) -> _Section:
    section = _Section("connection")
    section.add("id", record.get("id"), "bold")
    started, ended = record.get("started"), record.get("ended")
    section.add("started", local_time(started, with_zone=True))
    section.add("ended", local_time(ended, with_zone=True))
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (started, ended)):
        section.add("duration", f"{ended - started:.3f} s")
    section.add("mode", record.get("mode"))
    section.add("gateway", record.get("gateway"))
    client = record.get("client")
    section.add("client", endpoint(_dig(client, "addr"), _dig(client, "port")))
    destination = record.get("destination")
    where = endpoint(_dig(destination, "host"), _dig(destination, "port"))
    source = _dig(destination, "source")
    section.add("destination", f"{where} (from {source})" if where and source else where)
    section.add("sni", record.get("sni"), "bold")
    section.add("protocol", record.get("protocol"))
    alpn = record.get("alpn")
    section.add("alpn offered", _dig(alpn, "offered"))
    section.add("alpn to client", _dig(alpn, "client"))
    section.add("alpn upstream", _dig(alpn, "upstream"))
    upstream = record.get("upstream")
    section.add("upstream route", _dig(upstream, "route"))
    section.add("upstream error", _dig(upstream, "error"), "red")
    counts = record.get("bytes")
    if isinstance(counts, Mapping):
        section.add("bytes", f"{_show(counts.get('up')) or '?'} up, {_show(counts.get('down')) or '?'} down")
    return section


def _tcp(tcp: Any) -> _Section:
    section = _Section("TCP")
    section.add("ja4t", _dig(tcp, "ja4t"), "bold green")
    section.add("p0f", _dig(tcp, "p0f"))
    section.add("ip version", _dig(tcp, "ip_version"))
    section.add("ttl", _dig(tcp, "ttl"))
    section.add("window", _dig(tcp, "window"))
    section.add("mss", _dig(tcp, "mss"))
    section.add("window scale", _dig(tcp, "wscale"))
    section.add("option kinds", _dig(tcp, "option_kinds"))
    section.add("error", _dig(tcp, "error"), "red")
    return section


def _tls(tls: Any, title: str = "TLS") -> _Section:
    section = _Section(title)
    for name in ("ja4", "ja4_o", "ja4_r", "ja4_ro", "ja3", "ja3n"):
        section.add(name, _dig(tls, name), "bold green" if name == "ja4" else "")
    section.add("sni", _dig(tls, "sni"))
    section.add("alpn", _dig(tls, "alpn"))
    legacy = _dig(tls, "legacy_version")
    section.add("legacy version", _hex_list([legacy]) if legacy is not None else None)
    section.add("supported versions", _hex_list(_dig(tls, "supported_versions")))
    section.add("cipher suites", _hex_list(_dig(tls, "cipher_suites")))
    extensions = _dig(tls, "extensions")
    if isinstance(extensions, list):
        names = [_dig(e, "name") or _show(_dig(e, "type")) for e in extensions]
        section.add("extensions", ", ".join(str(n) for n in names))
    else:
        section.add("extensions", _dig(tls, "extension_types"))
    section.add("groups", _hex_list(_dig(tls, "supported_groups")))
    section.add("signature algs", _hex_list(_dig(tls, "signature_algorithms")))
    return section


def _http(http: Any) -> _Section:
    section = _Section("HTTP")
    section.add("version", _dig(http, "version"))
    section.add("akamai", _dig(http, "h2", "akamai"), "bold cyan")
    requests = _dig(http, "requests")
    if isinstance(requests, list):
        for number, request in enumerate(requests, 1):
            target = _dig(request, "target") or _dig(request, "path") or _dig(request, ":path")
            line = f"{_show(_dig(request, 'method'))} {_show(target)}".strip()
            authority = _dig(request, "authority")
            if authority:
                line += f"  ({authority})"
            status = _dig(request, "status")
            if status is not None:
                line += f"  -> {status}"
            section.add(f"request {number}", line, "bold")
            section.add("  ja4h", _dig(request, "ja4h"), "yellow")
            headers = _dig(request, "headers")
            if isinstance(headers, list):
                names = [str(h[0]) if isinstance(h, list) and h else str(h) for h in headers]
                section.add("  headers", ", ".join(names))
    return section


def _emitted(emitted: Any, client_tls: Any) -> tuple[_Section, Table | None]:
    section = _Section("emitted upstream / fidelity")
    emitted_tls = _dig(emitted, "tls")
    for name in ("ja4", "ja3"):
        sent, seen = _dig(emitted_tls, name), _dig(client_tls, name)
        if sent is not None:
            same = sent == seen
            mark = Text(" (same as the client)" if same else " (client: " + _show(seen) + ")",
                        style="green" if same else "yellow")
            section.add(name, Text(str(sent)) + mark)
    fidelity = _dig(emitted, "fidelity")
    if not isinstance(fidelity, Mapping) or not fidelity:
        return section, None
    counts = {"exact": 0, "approximated": 0, "impossible": 0}
    for entry in fidelity.values():
        status = _dig(entry, "status")
        if status in counts:
            counts[status] += 1
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
    entries = sorted(fidelity.items(), key=lambda item: order.get(_dig(item[1], "status"), -1))
    for field, entry in entries:
        status = _show(_dig(entry, "status")) or "?"
        table.add_row(Text(str(field)), Text(status, style=_STATUS_STYLE.get(status, "")),
                      Text(_show(_dig(entry, "detail"))))
    return section, table


def _errors(record: Mapping[str, Any]) -> _Section:
    section = _Section("error")
    error = record.get("error")
    if isinstance(error, Mapping):
        stage, message = error.get("stage"), error.get("message")
        section.add(_show(stage) or "error", message if message is not None else _show(error), "red")
    else:
        section.add("error", error, "red")
    note = record.get("store_error")
    if note != _dig(error, "message"):
        section.add("store", note, "red")
    return section


def render_record(record: Mapping[str, Any], console: Console) -> None:
    """Print one record in sections: connection, TCP, TLS, HTTP, emitted/fidelity, error."""
    _connection(record).print(console)
    _tcp(record.get("tcp")).print(console)
    _tls(record.get("tls")).print(console)
    _http(record.get("http")).print(console)
    emitted, fields = _emitted(record.get("emitted"), record.get("tls"))
    emitted.print(console)
    if fields is not None:
        console.print(fields)
    _errors(record).print(console)

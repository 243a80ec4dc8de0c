"""The tables ``mirror identify`` and ``mirror captures diff`` print: two views field by field.

:func:`diff_table` renders a list of :class:`mirror.fingerprint.compare.FieldDiff` as a rich
table (field | A | B | note; differing rows red, those that follow from another difference
orange, one-sided ones dim), with each value as people read it (:func:`display_value`: code
lists in hex, SETTINGS as ``id:value``...). :func:`wide_console` is the console both print on.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mirror.fingerprint.compare import FieldDiff

__all__ = ["diff_table", "display_value", "wide_console"]

_HEX_LISTS = {"ciphers", "extension_order", "extension_set", "supported_groups",
              "signature_algorithms", "key_share_groups", "supported_versions", "cert_compression",
              "delegated_credentials"}


def display_value(name: str, value: Any) -> str:
    """A field value as people read it: code lists in hex, settings as ``id:value``..."""
    if value is None:
        return "none"
    if name in _HEX_LISTS and isinstance(value, list):
        codes = (f"{v:04x}" if type(v) is int and v >= 0 else str(v) for v in value)
        return ",".join(codes) or "(empty)"
    if name == "legacy_version" and type(value) is int and value >= 0:
        return f"{value:04x}"
    if name == "h2_settings" and isinstance(value, list):
        return ";".join(":".join(map(str, pair)) if isinstance(pair, list) else str(pair)
                        for pair in value) or "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(empty)"
    return str(value)


def wide_console() -> Console:
    """stdout, as wide as every command's tables (:mod:`mirror.terminal`: 80 in a pipe)."""
    from mirror.terminal import table_console

    return table_console()


def diff_table(diffs: list[FieldDiff], a_title: str, b_title: str, *, only_differing: bool = False,
               title: str | None = None) -> Table:
    """Field | A | B | note; differing rows red, equal ones plain, one-sided ones dim."""
    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("field", no_wrap=True)
    table.add_column(a_title, overflow="fold")
    table.add_column(b_title, overflow="fold")
    table.add_column("note", overflow="fold")
    for entry in diffs:
        if only_differing and entry.equal is not False:
            continue
        if entry.equal is False:
            style, mark = ("red" if not entry.explained_by else "dark_orange"), "≠ "
            note = entry.note or ""
            if entry.explained_by:
                causes = ", ".join(entry.explained_by)
                note = (note + "; " if note else "") + "follows from " + causes
        elif entry.equal is None:
            style, mark, note = "dim", "  ", entry.note
        else:
            style, mark, note = "", "= ", entry.note
        if entry.name.endswith("_header_names"):
            a_text = ", ".join(entry.a) if entry.a else "(no extra name)"
            b_text = ", ".join(entry.b) if entry.b else "(no extra name)"
        else:
            shown = entry.equal is not None
            a_text = display_value(entry.name, entry.a) if entry.a is not None or shown else "—"
            b_text = display_value(entry.name, entry.b) if entry.b is not None or shown else "—"
        name_style = style + (" bold" if entry.equal is False else "")
        table.add_row(Text(mark + entry.name, style=name_style),
                      Text(a_text, style=style), Text(b_text, style=style),
                      Text(note or "", style="yellow" if entry.equal and note else style))
    return table


"""``mirror captures diff A B``: two captures (or references) side by side, field by field.

A and B are capture ids from the store or ``ref:NAME`` for a reference fingerprint
(``ref:chrome``). Both are turned into :class:`mirror.fingerprint.view.FingerprintView`
and compared with :func:`mirror.fingerprint.compare.diff`; a reference is taken in the
variant matching the capture it is compared with (its HTTP/1.1 connection for an HTTP/1.1
capture). The table marks differing fields red (orange when they only follow from another
difference, e.g. JA4 from the cipher list); ``--json`` prints the structured diff.

A field only one side shows counts as a difference (a failed connection is not "equal" to
anything), except when the side without it is a reference: of a reference's HTTP/1.1
connection only the ClientHello's JA4 and ALPN are known.

Exit status: 0 the two are equal (at least one field compared, none differing), 1 they
differ, 2 bad input (unknown id, no store, unknown reference, a spec that is neither an id
nor ``ref:NAME``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from mirror.fingerprint.compare import diff, differing
from mirror.fingerprint.view import FingerprintView
from mirror.identify.inputs import bad_input, load_reference_set, open_record
from mirror.identify.reference_view import view_from_reference
from mirror.identify.references import Reference
from mirror.identify.tables import diff_table, wide_console
from mirror.store.record_view import view_from_record

__all__ = ["diff_command"]


def _parse_spec(spec: str) -> tuple[str, Any]:
    if spec.startswith("ref:"):
        name = spec[4:]
        if not name:
            bad_input("captures diff", f"{spec!r}: give a reference name after ref:")
        return "ref", name
    try:
        return "capture", int(spec)
    except ValueError:
        bad_input("captures diff", f"{spec!r} is neither a capture id nor ref:NAME")


@click.command("diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--json", "as_json", is_flag=True, help="Print the structured diff as JSON.")
@click.option("--store", "store_path", default=None, metavar="PATH|URL", envvar="MIRROR_STORE",
              help="The capture store: a SQLite file or a postgresql:// URL [env MIRROR_STORE; "
              "default: captures.sqlite3 in $MIRROR_HOME, else in $XDG_DATA_HOME/mirror, else "
              "in ~/.local/share/mirror].")
@click.option("--references", "references_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Directory of reference fingerprints for ref:NAME (default: "
              "the fingerprints/ directory beside the mirror package).")
def diff_command(a: str, b: str, as_json: bool, store_path: str | None,
                 references_dir: Path | None) -> None:
    """Compare two connections field by field: A and B are capture ids or ref:NAME.

    Every TLS and HTTP field either side shows: JA4, JA4_o, JA3, JA3N, versions, ciphers,
    extensions (order and set), groups, signature algorithms, key shares, ALPN, ALPS,
    certificate compression, record size limit, ECH, HTTP version, Akamai and its SETTINGS /
    WINDOW_UPDATE / PRIORITY / pseudo-header order, header order and names, JA4H.

    With --json: {"a", "b", "equal", "differing" (root differences), "differing_all",
    "one_sided" (fields only one capture shows), "fields": [{"field", "a", "b", "equal"
    (null: one side only), "note", "explained_by"}]}.

    Exit status: 0 equal, 1 different, 2 bad input.
    """
    specs = [_parse_spec(a), _parse_spec(b)]
    references: dict[str, Reference] = {}
    if any(kind == "ref" for kind, _ in specs):
        references = {r.name: r for r in load_reference_set(references_dir, "captures diff")}
    records: dict[int, FingerprintView] = {}
    for kind, value in specs:
        if kind == "capture" and value not in records:
            records[value] = view_from_record(open_record(store_path, value, "captures diff"),
                                              f"capture {value}")
        if kind == "ref" and value not in references:
            known = ", ".join(sorted(references))
            bad_input("captures diff", f"no reference named {value!r} (known: {known})")

    def view(index: int) -> FingerprintView:
        kind, value = specs[index]
        if kind == "capture":
            return records[value]
        other_kind, other_value = specs[1 - index]
        like = records[other_value] if other_kind == "capture" else None
        return view_from_reference(references[value], like=like)

    view_a, view_b = view(0), view(1)
    diffs = diff(view_a, view_b)
    roots, every = differing(diffs), differing(diffs, roots_only=False)
    # a field only one side shows is a difference, unless the other side is a reference
    # (which does not know every field of its HTTP/1.1 connection's hello)
    kinds = [kind for kind, _ in specs]
    one_sided = [d.name for d in diffs if d.equal is None
                 and kinds[1 if view_a.has(d.name) else 0] != "ref"]
    compared = any(d.equal is not None for d in diffs)
    equal = compared and not every and not one_sided
    if as_json:
        click.echo(json.dumps({"a": view_a.label, "b": view_b.label, "equal": equal,
                               "differing": list(roots), "differing_all": list(every),
                               "one_sided": one_sided,
                               "fields": [d.as_dict() for d in diffs]}, indent=2))
    else:
        console = wide_console()
        console.print(diff_table(diffs, f"A: {view_a.label}", f"B: {view_b.label}",
                                 title=f"{view_a.label} vs {view_b.label}"))
        if every:
            following = ", ".join(n for n in every if n not in roots)
            verb = "s differ" if len(roots) != 1 else " differs"
            console.print(Text(f"{len(roots)} field{verb}: "
                               + ", ".join(roots)
                               + (f" (and, following from them: {following})"
                                  if len(every) > len(roots) else ""), style="bold red"))
        if one_sided:
            console.print(Text("only one side shows: " + ", ".join(one_sided), style="bold red"))
        if not compared:
            console.print(Text("nothing to compare: no TLS or HTTP fingerprint on both sides",
                               style="bold red"))
        if equal:
            console.print(Text("equal on every field both show", style="bold green"))
    raise SystemExit(0 if equal else 1)

"""Compare two fingerprint views field by field, and score how near they are.

One job: :func:`diff` compares two :class:`mirror.fingerprint.view.FingerprintView` (whatever
they were built from) field by field, :func:`differing` names the root differences and
:func:`score` weighs them. Pure functions: no I/O. Which reference client a connection is
(exact match, nearest ones) is decided from these in :mod:`mirror.identify.matching`.

A field only one view shows is compared as ``equal=None`` ("only A shows it").

Connection-state extensions: JA4/JA4_o/JA3/JA3N that differ only by padding, pre_shared_key
or early_data compare equal (with a note). That needs the raw ClientHello of at least one
side: its fingerprints recomputed without those extensions (``FingerprintView.stateless``)
are compared with the other side's recomputed ones, or with its plain string when the other
side's raw hello is unknown.

Header order (a decision, since requests differ): the two lists are compared on the names
both have (HTTP/1: names matched case-insensitively, then compared with their case) -- equal
when those shared names come in the same order (and at least one is shared). Names only one
side sends are a separate field (``h2_header_names``/``h1_header_names``: A's extra names vs
B's): they are reported as a difference but do not decide exactness, because which headers
a client sends depends on the request (cookies, referer, cache-control on a reload...).

Differences explained by another difference: JA4, JA3, Akamai and JA4H are built from other
fields (:attr:`FieldSpec.depends <mirror.fingerprint.view.FieldSpec>`). A :class:`FieldDiff`
of such a composite lists in ``explained_by`` the differing fields it is built from;
:func:`differing` (the "root" differences) leaves the explained ones out, so dropping one
cipher is reported as ``ciphers``, not as ``ciphers, ja4, ja4_o, ja3, ja3n``.

Scoring (:func:`score`): each field has a weight (:data:`mirror.fingerprint.view.FIELDS`);
the score is ``100 * sum(weights of equal fields) / sum(weights of compared fields)``, a field
being compared when both sides show it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mirror.fingerprint.view import FIELDS, VIEW_FIELDS, FingerprintView

__all__ = ["FieldDiff", "diff", "differing", "score"]

_STATELESS_COMPOSITES = ("ja4", "ja4_o", "ja3", "ja3n")
_SPECS = {spec.name: spec for spec in FIELDS}


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field of two views: ``equal`` True/False, or None when only one side shows it.

    ``note`` says why two different-looking values compare equal, or how they differ;
    ``explained_by`` lists the differing fields this composite field is built from.
    """

    name: str
    a: Any
    b: Any
    equal: bool | None
    note: str = ""
    explained_by: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.name, "a": self.a, "b": self.b, "equal": self.equal,
                "note": self.note, "explained_by": list(self.explained_by)}


def _order_diff(name: str, a: list[str], b: list[str],
                fold_case: bool) -> tuple[FieldDiff, FieldDiff]:
    def key(header: str) -> str:
        return header.lower() if fold_case else header

    a_keys, b_keys = {key(n) for n in a}, {key(n) for n in b}
    shared = a_keys & b_keys
    a_shared = [n for n in a if key(n) in shared]
    b_shared = [n for n in b if key(n) in shared]
    only_a = [n for n in a if key(n) not in b_keys]
    only_b = [n for n in b if key(n) not in a_keys]
    if not shared and (a or b):
        order = FieldDiff(name, a, b, False, "no header name in common")
    elif a_shared == b_shared:
        note = f"the {len(shared)} shared names in the same order" if (only_a or only_b) else ""
        order = FieldDiff(name, a, b, True, note)
    elif [n.lower() for n in a_shared] == [n.lower() for n in b_shared]:
        cases = [f"{x}/{y}" for x, y in zip(a_shared, b_shared, strict=True) if x != y]
        order = FieldDiff(name, a, b, False, "same order, different case: " + ", ".join(cases))
    else:
        first = next(i for i, (x, y) in enumerate(zip(a_shared, b_shared, strict=True)) if x != y)
        order = FieldDiff(name, a, b, False,
                          f"shared names in another order from position {first + 1}: "
                          f"{a_shared[first]} vs {b_shared[first]}")
    names_field = name.replace("_order", "_names")
    notes = []
    if only_a:
        notes.append("only in A: " + ", ".join(only_a))
    if only_b:
        notes.append("only in B: " + ", ".join(only_b))
    names = FieldDiff(names_field, only_a, only_b, not only_a and not only_b, "; ".join(notes))
    return order, names


def _simple_diff(name: str, a: FingerprintView, b: FingerprintView) -> FieldDiff:
    va, vb = a.fields[name], b.fields[name]
    if va == vb:
        return FieldDiff(name, va, vb, True)
    # a side without a raw hello is taken as it is (reference hellos are fresh sessions)
    if (name in _STATELESS_COMPOSITES and (name in a.stateless or name in b.stateless)
            and a.stateless.get(name, va) == b.stateless.get(name, vb)):
        return FieldDiff(name, va, vb, True, "equal without padding / pre_shared_key / early_data "
                             "(extensions that depend on the hello's length and on resumption)")
    note = ""
    if name == "extension_order" and isinstance(va, list) and isinstance(vb, list) and sorted(
            map(str, va)) == sorted(map(str, vb)):
        note = "same extensions in another order (Chrome permutes them per connection)"
    return FieldDiff(name, va, vb, False, note)


def diff(a: FingerprintView, b: FingerprintView) -> list[FieldDiff]:
    """Every field either view shows, in :data:`FIELDS` order, compared (see the module doc)."""
    raw: dict[str, FieldDiff] = {}
    for name in VIEW_FIELDS:
        in_a, in_b = a.has(name), b.has(name)
        if not in_a and not in_b:
            continue
        if name in ("h2_header_order", "h1_header_order"):
            names_field = name.replace("_order", "_names")
            if (in_a and in_b and isinstance(a.fields[name], list)
                    and isinstance(b.fields[name], list)):
                raw[name], raw[names_field] = _order_diff(name, a.fields[name], b.fields[name],
                                                          fold_case=name.startswith("h1"))
            else:
                raw[name] = FieldDiff(name, a.get(name), b.get(name), None,
                                      "only " + ("A" if in_a else "B") + " shows it")
            continue
        if not (in_a and in_b):
            raw[name] = FieldDiff(name, a.get(name), b.get(name), None,
                                  "only " + ("A" if in_a else "B") + " shows it")
            continue
        raw[name] = _simple_diff(name, a, b)
    out = []
    for spec in FIELDS:
        entry = raw.get(spec.name)
        if entry is None:
            continue
        if entry.equal is False and spec.depends:
            causes = tuple(dep for dep in spec.depends if dep in raw and raw[dep].equal is False)
            if causes:
                entry = dataclasses.replace(entry, explained_by=causes)
        out.append(entry)
    return out


def differing(diffs: Sequence[FieldDiff], *, roots_only: bool = True) -> tuple[str, ...]:
    """Names of the fields that differ (by default without those explained by another)."""
    return tuple(d.name for d in diffs if d.equal is False and not (roots_only and d.explained_by))


def score(diffs: Sequence[FieldDiff]) -> float:
    """0-100: the weighted share of compared fields that are equal (see the module doc)."""
    total = equal = 0.0
    for entry in diffs:
        if entry.equal is None:
            continue
        weight = _SPECS[entry.name].weight
        total += weight
        if entry.equal:
            equal += weight
    return round(100.0 * equal / total, 1) if total else 0.0

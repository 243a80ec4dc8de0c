"""The parsers' table of values already seen: a dict for lookups, bounded by forgetting all."""

from __future__ import annotations

from mirror.wire.seen import SeenTable


def test_kept_values_are_found_until_the_limit_forgets_them_all():
    table: SeenTable[bytes, str] = SeenTable(3)
    for key in (b"a", b"b", b"c"):
        table.keep(key, key.decode())
    assert table.get(b"b") == "b" and len(table) == 3
    table.keep(b"d", "d")                       # the limit reached: the others are forgotten
    assert dict(table) == {b"d": "d"}
    table.keep(b"d", "d again")                 # the same key: replaced, nothing forgotten
    assert dict(table) == {b"d": "d again"}

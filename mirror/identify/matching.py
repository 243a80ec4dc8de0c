"""Which reference client a connection is: the exact match(es) and the nearest references.

:func:`identify` compares a connection's :class:`mirror.fingerprint.view.FingerprintView` with
each reference (viewed in the variant matching the connection,
:func:`mirror.identify.reference_view.view_from_reference`) using
:mod:`mirror.fingerprint.compare`. Pure: no I/O.

Exact identification: the key fields (:func:`key_fields`) are ``ja4`` plus, when the
connection is HTTP/2, ``akamai`` and ``h2_header_order``, or, for HTTP/1, ``h1_header_order``.
A reference matches exactly when every key field the connection shows is equal (JA4_o is not
required: Chrome permutes its extensions per connection). Key fields the connection does not
show (HTTP inside TLS in a pcap without secrets) are listed in ``unobserved``; such a match
is "exact on what was seen" and :attr:`Identification.complete` is False. Several references
may match exactly (curl_cffi's Chrome and Debian's Chromium share JA4, Akamai and header
order): all are in ``tied``, nearest first; ``exact`` is the nearest of them. Every
reference is in ``nearest``, by :func:`mirror.fingerprint.compare.score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mirror.fingerprint.compare import FieldDiff, diff, differing, score
from mirror.fingerprint.view import FingerprintView
from mirror.identify.reference_view import view_from_reference
from mirror.identify.references import Reference

__all__ = ["Candidate", "Identification", "identify", "key_fields"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One reference compared with the connection: its score and root differences."""

    name: str
    score: float
    differing: tuple[str, ...]
    diffs: tuple[FieldDiff, ...] = field(repr=False)
    reference: Reference = field(repr=False, compare=False)
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Identification:
    """Which reference a view is: ``exact`` (or None), all exact ``tied`` ones, ``nearest`` all."""

    view: FingerprintView
    key_fields: tuple[str, ...]
    unobserved: tuple[str, ...]
    exact: Reference | None
    tied: tuple[Reference, ...]
    nearest: tuple[Candidate, ...]

    @property
    def complete(self) -> bool:
        """True when every key field was observed (an exact match is then a full one)."""
        return not self.unobserved


def key_fields(view: FingerprintView) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(key fields the view shows, key parts it does not show) -- see :func:`identify`."""
    keys: list[str] = []
    missing: list[str] = []
    (keys if view.has("ja4") else missing).append("ja4")
    version = view.http_version
    if version == "HTTP/2":
        for name in ("akamai", "h2_header_order"):
            (keys if view.has(name) else missing).append(name)
    elif version is not None and version.startswith("HTTP/1"):
        (keys if view.has("h1_header_order") else missing).append("h1_header_order")
    else:
        missing.append("http")
    return tuple(keys), tuple(missing)


def identify(view: FingerprintView, references: Sequence[Reference]) -> Identification:
    """Compare ``view`` with every reference: the exact match(es) and all, nearest first."""
    keys, unobserved = key_fields(view)
    candidates = []
    for reference in references:
        diffs = tuple(diff(view, view_from_reference(reference, like=view)))
        by_name = {d.name: d for d in diffs}
        exact = bool(keys) and all(name in by_name and by_name[name].equal is True for name in keys)
        candidates.append(Candidate(reference.name, score(diffs), differing(diffs), diffs,
                                    reference, exact))
    candidates.sort(key=lambda c: (not c.exact, -c.score, c.name))
    nearest = tuple(sorted(candidates, key=lambda c: (-c.score, not c.exact, c.name)))
    tied = tuple(c.reference for c in candidates if c.exact)
    return Identification(view, keys, unobserved, tied[0] if tied else None, tied, nearest)

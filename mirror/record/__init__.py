"""The capture record: one connection's fingerprints, what was emitted, and how it ended.

The proxy writes it as a plain dict (:class:`mirror.record.shape.RecordDict` describes its
keys); the parts that cost time to make are ``Deferred`` values
(:mod:`mirror.record.deferred`) that the store's writer makes from raw bytes
(:mod:`mirror.record.values`, :mod:`mirror.record.plan_views`). Readers of stored records
(the store's summary, render and export, ``mirror check``) read it typed, by attribute:
:class:`mirror.record.capture.CaptureRecord`.

May import ``wire``, ``fingerprint`` and ``emit``; ``emit`` and ``net`` never import it.
"""

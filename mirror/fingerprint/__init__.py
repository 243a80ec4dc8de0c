"""Fingerprint functions: pure functions over the values ``mirror.wire`` parses.

``tls`` (JA3, JA3N, JA4 and its _r/_o/_ro forms), ``tcp`` (JA4T, p0f v3 signature), ``http``
(JA4H and its raw/original forms, the Akamai HTTP/2 string), ``report`` (the JSON views the
echo server, the store and the CLI share), and for comparing fingerprints ``view`` (the
normalised fingerprint of one connection and the table of its fields), ``normalise`` (parsed
values into view fields) and ``compare`` (two views field by field, and their score). No I/O,
no clock.
"""

"""Fingerprint functions: pure functions over the values ``mirror.wire`` parses.

``tls`` (JA3, JA3N, JA4 and its _r/_o/_ro forms), ``tcp`` (JA4T, p0f v3 signature), ``http``
(JA4H and its raw/original forms, the Akamai HTTP/2 string) and ``report`` (the JSON views the
echo server, the store and the CLI share). No I/O, no clock.
"""

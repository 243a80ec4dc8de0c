"""mirror: a transparent MITM proxy that mirrors each client's fingerprints upstream.

Sub-packages: ``mirror.wire`` (sans-I/O parsers), ``mirror.fingerprint`` (pure fingerprint
functions over parsed values), and the I/O side (echo server, proxy, CLI).
"""

__version__ = "0.1.0"

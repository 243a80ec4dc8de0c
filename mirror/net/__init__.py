"""Socket-level helpers for the I/O side: listeners, the client's saved SYN, TLS over memory BIOs.

Only the I/O side (echo server, proxy) imports this package; the sans-I/O parsers never do.
"""

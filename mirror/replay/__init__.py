"""replay: a sans-I/O TLS client whose ClientHello is the client's own bytes.

Modules, one job each: ``hello`` (rewrite the client's hello, fresh fields only), ``groups``
(key shares and shared secrets), ``keyschedule`` (HKDF / TLS 1.2 PRF), ``records`` (record
layer), ``messages`` (server message parsers), ``verify`` (chain and signature checks),
``client`` (the handshake state machine, :class:`~mirror.replay.client.ReplayClient`). Errors
are :class:`~mirror.replay.errors.ReplayError`. No sockets, no asyncio: bytes in, bytes and
events out.
"""

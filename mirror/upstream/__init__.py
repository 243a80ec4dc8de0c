"""The proxy's upstream TLS connections: one interface, one package per engine.

``connection`` defines what every engine hands the relay (``UpstreamConnection``: the
negotiated ALPN, a socket to watch, non-blocking ``recv_into`` / ``send``, ``close``) and the
errors and targets they share; ``pipe`` is the asyncio glue that relays through any of them;
``trust`` finds the CA bundle they verify servers against. ``curl`` is the engine whose
ClientHello BoringSSL builds from the client's (curl-impersonate, driven by a libcurl multi
handle on the event loop).
"""

"""The replay engine's I/O: a socket the event loop connects (the client's SYN mirrored, an
HTTP CONNECT or SOCKS5 upstream proxy tunnelled through) driving the sans-I/O ``ReplayClient``
of ``mirror.replay``, so the server gets the client's own ClientHello. ``opener`` connects and
handshakes, ``connection`` relays afterwards, ``trust`` keeps the verification store, ``errors``
says what a refusal means for the proxy."""

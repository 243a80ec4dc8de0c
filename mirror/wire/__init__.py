"""Sans-I/O wire parsers: bytes in, values out.

Nothing in this package touches sockets, asyncio, curl_cffi or the clock. Every parser follows
one contract:

* it returns ``None`` (or an "incomplete" result documented on the function) when the bytes
  given so far are a valid prefix and more are needed;
* it raises :class:`mirror.wire.errors.WireError` when the bytes cannot be what they claim to
  be. No other exception escapes a parser, whatever the input.
"""

from mirror.wire.errors import WireError

__all__ = ["WireError"]

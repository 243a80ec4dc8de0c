"""Emitters: turn what a client sent (parsed hellos, HTTP/2 starts) into settings for the
outgoing side, so mirror's upstream connection looks like the client it relays."""

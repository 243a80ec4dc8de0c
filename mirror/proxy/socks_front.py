"""The SOCKS5 front, sans-I/O: the client's handshake in, the server's answers and a decision out.

``SocksFront.receive(bytes)`` may be fed any number of bytes at a time (one byte at a time
included); each call answers with a :class:`~mirror.proxy.front_events.FrontStep` whose
``reply`` is what to send now (the method choice, the RFC 1929 status, the request's reply)
and whose ``decision`` is, once there is one:

- a :class:`Tunnel` to the requested destination (with the bytes that followed the request);
- a :class:`Refusal`, after the answer that tells the client: no acceptable method, wrong
  username/password (checked against ``--proxy-auth``; without it any is accepted and never
  recorded), a command other than CONNECT, a request the parser refuses (its reply code), or
  a destination that is one of the proxy's own listeners (``NOT_ALLOWED``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from mirror.proxy.access import AccessPolicy
from mirror.proxy.front_events import (
    NEED_MORE,
    Destination,
    FrontStep,
    Refusal,
    Tunnel,
    loop_error,
    refusal_of,
)
from mirror.wire import socks5
from mirror.wire.errors import WireError


class SocksState(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"


class SocksFront:
    """One client's SOCKS5 handshake. ``is_own(host, port)``: a destination that would loop."""

    def __init__(self, access: AccessPolicy, is_own: Callable[[str, int], bool]) -> None:
        self.access = access
        self.is_own = is_own
        self.state = SocksState.GREETING
        self.buffer = bytearray()

    def receive(self, data: bytes) -> FrontStep:
        self.buffer += data
        replies: list[bytes] = []
        try:
            decision = self._steps(replies)
        except socks5.RequestError as exc:
            replies.append(socks5.reply(exc.reply_code))
            decision = self._refused(exc)
        except WireError as exc:
            decision = self._refused(exc)
        if not replies and decision is None:
            return NEED_MORE
        return FrontStep(b"".join(replies), decision)

    def _refused(self, exc: WireError) -> Refusal:
        self.state = SocksState.DONE
        return refusal_of(exc, speaks_h1=False)[0]

    def _steps(self, replies: list[bytes]) -> Tunnel | Refusal | None:
        while True:
            if self.state is SocksState.GREETING:
                greeting = socks5.parse_greeting(bytes(self.buffer))
                if greeting is None:
                    return None
                del self.buffer[:greeting.length]
                method = socks5.choose_method(greeting,
                                              require_auth=self.access.credentials is not None)
                replies.append(socks5.method_reply(method))
                if method == socks5.METHOD_NONE_ACCEPTABLE:
                    self.state = SocksState.DONE
                    return Refusal("front", "SOCKS5 client offered no acceptable method")
                self.state = SocksState.AUTH if method == socks5.METHOD_USERPASS \
                    else SocksState.REQUEST
            elif self.state is SocksState.AUTH:
                credentials = socks5.parse_userpass(bytes(self.buffer))
                if credentials is None:
                    return None
                del self.buffer[:credentials.length]
                accepted = self.access.check(credentials.username, credentials.password)
                replies.append(socks5.userpass_reply(accepted))
                if not accepted:
                    self.state = SocksState.DONE
                    return Refusal("access", "refused: SOCKS5 username/password")
                self.state = SocksState.REQUEST
            elif self.state is SocksState.REQUEST:
                return self._request(replies)
            else:
                return None

    def _request(self, replies: list[bytes]) -> Tunnel | Refusal | None:
        request = socks5.parse_request(bytes(self.buffer))
        if request is None:
            return None
        del self.buffer[:request.length]
        self.state = SocksState.DONE
        if request.command != socks5.CMD_CONNECT:
            replies.append(socks5.reply(socks5.COMMAND_NOT_SUPPORTED))
            return Refusal("front", f"SOCKS5 command {request.command} is not supported")
        destination = Destination(request.host, request.port, "socks5")
        if self.is_own(request.host, request.port):
            replies.append(socks5.reply(socks5.NOT_ALLOWED))
            refused = socks5.RequestError(str(loop_error(destination)), socks5.NOT_ALLOWED)
            refusal = refusal_of(refused, speaks_h1=False)[0]
            return Refusal(refusal.stage, refusal.message, refusal.logged, destination)
        replies.append(socks5.reply(socks5.REP_SUCCEEDED))
        return Tunnel(destination, bytes(self.buffer))

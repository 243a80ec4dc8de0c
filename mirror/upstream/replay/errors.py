"""What a ``ReplayError`` means for the proxy: the stage of the 502, and whether BoringSSL
should make the connection instead."""

from __future__ import annotations

from mirror.replay.errors import ReplayError
from mirror.upstream.connection import POLICY_STAGE, UpstreamError

# the server's choice is outside the client's offer, or the policy refused its chain or choice
_POLICY_REASONS = {"policy", "cipher-not-offered", "group-not-offered", "downgrade"}
_STAGES = {"certificate": "upstream-certificate", "hello": "upstream-tls",
           "closed": "upstream-tls"}


class NeedsBoringssl(UpstreamError):
    """The server chose what only the BoringSSL engine completes (CBC suites, RSA key exchange,
    DHE, TLS 1.0 / 1.1): the connection is to be made again there."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "upstream-tls")


def needs_boringssl(error: ReplayError) -> bool:
    """True for a server choice the client offered that this engine leaves to BoringSSL."""
    return error.reason in ("needs-boringssl", "unsupported") or (
        error.reason == "version" and "this engine speaks" in error.message)


def upstream_error(error: ReplayError) -> UpstreamError:
    """The ``UpstreamError`` for a refusal, its reason named in the message."""
    if needs_boringssl(error):
        return NeedsBoringssl(str(error))
    if error.reason in _POLICY_REASONS or (error.reason == "version"
                                           and "not offered" in error.message):
        return UpstreamError(f"refused by TLS policy: {error}", POLICY_STAGE)
    return UpstreamError(f"replay engine: {error}", _STAGES.get(error.reason, "upstream-tls"))

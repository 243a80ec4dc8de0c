"""The mirror certificate authority: a private CA on disk and the leaf certificates it mints.

    ca = CertificateAuthority.init(Path("~/.mirror").expanduser())   # create or reuse
    leaves = LeafCache(ca)
    context = leaves.ssl_context("example.com", None, ["h2", "http/1.1"])
"""

from mirror.ca.authority import CAError, CertificateAuthority
from mirror.ca.leaf import Leaf, LeafCache, default_server_context
from mirror.ca.trust_help import trust_instructions

__all__ = ["CAError", "CertificateAuthority", "Leaf", "LeafCache", "default_server_context",
           "trust_instructions"]

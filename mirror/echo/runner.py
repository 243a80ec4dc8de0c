"""Run the echo server from the command line: certificates, listener, event loop, shutdown."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
import tempfile
from pathlib import Path

from mirror.echo.server import serve
from mirror.net.listen import make_listener
from mirror.net.listen_error import listen_error

ALPN = ["h2", "http/1.1"]


class _Refused(Exception):
    """Why the echo server cannot start, as one line for its user."""


def _certificate_problem(cert: str, key: str | None) -> str:
    """Why OpenSSL refused --cert / --key, in words: which file, and what it lacks."""
    from cryptography import x509

    try:
        certificate = Path(cert).read_bytes()
        x509.load_pem_x509_certificates(certificate)
    except (OSError, ValueError):
        return f"--cert {cert}: no PEM certificate in it"
    try:
        key_pem = Path(key).read_bytes() if key else certificate
    except OSError as error:
        return f"--key {key}: {error.strerror or error}"
    if b"PRIVATE KEY-----" not in key_pem:
        if key is None:
            return (f"--cert {cert} holds no private key: give the certificate's key with "
                    "--key FILE")
        return f"--key {key}: no PEM private key in it"
    where = f"--key {key}" if key else f"the key in --cert {cert}"
    return (f"{where} is not the private key of the certificate in --cert {cert} (or it is "
            "encrypted)")


def _server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(ALPN)
    return context


def context_factory(cert: str | None, key: str | None, ca_dir: str | None):
    """A per-SNI context factory: one fixed certificate, or leaves minted by a local CA."""
    if cert:
        fixed = _server_context(cert, key or cert)
        return lambda server_name: fixed, None
    from mirror.ca import CertificateAuthority, LeafCache

    directory = Path(ca_dir) if ca_dir else Path(tempfile.mkdtemp(prefix="mirror-echo-ca-"))
    authority = CertificateAuthority.init(directory)
    leaves = LeafCache(authority)

    def for_name(server_name: str | None) -> ssl.SSLContext:
        try:
            return leaves.ssl_context(server_name or "localhost", alpn=ALPN)
        except ValueError:  # an SNI no certificate can carry: answer as localhost
            return leaves.ssl_context("localhost", alpn=ALPN)

    return for_name, directory / "ca.pem"


async def _main(host: str, port: int, cert, key, ca_dir, ready) -> None:
    try:
        context_for, ca_path = context_factory(cert, key, ca_dir)
    except ssl.SSLError:
        raise _Refused(_certificate_problem(cert or "", key)) from None
    try:
        listener, syn_error = make_listener(host, port)
    except OSError as error:
        raise _Refused(listen_error("--listen", host, port, error)) from None
    bound = listener.getsockname()
    server = await serve(listener, context_for)
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    ready(f"mirror echo listening on https://{shown}:{bound[1]}/ (TLS or cleartext, h2 and http/1.1)")
    if ca_path:
        ready(f"certificates minted by the CA at {ca_path}")
    if syn_error:
        ready(f"warning: {syn_error}; TCP fingerprints will be missing")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def run(host: str, port: int, cert: str | None = None, key: str | None = None,
        ca_dir: str | None = None) -> None:
    def ready(line: str) -> None:
        print(line, flush=True)

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        asyncio.run(_main(host, port, cert, key, ca_dir, ready))
    except _Refused as error:
        print(f"mirror echo: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:
        print(f"mirror echo: cannot listen on {host}:{port}: {error.strerror or error}",
              file=sys.stderr)
        raise SystemExit(2) from None

"""``mirror ca``: the click group that creates the mirror CA and exports its certificate."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click


def _ca_dir(directory: str | None) -> Path:
    from mirror.paths import default_ca_dir

    return Path(directory).expanduser() if directory else default_ca_dir()


def _fail(message: str) -> NoReturn:
    click.echo(f"mirror ca: {message}", err=True)
    raise SystemExit(1)


def _fingerprint(ca) -> str:
    from cryptography.hazmat.primitives import hashes

    return ca.cert.fingerprint(hashes.SHA256()).hex(":").upper()


_DIR_HELP = "CA directory (default: $MIRROR_HOME/ca, else $XDG_DATA_HOME/mirror/ca, else ~/.local/share/mirror/ca)."


@click.group("ca")
def ca() -> None:
    """Create the mirror certificate authority and export its certificate for clients."""


@ca.command("init")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None, help=_DIR_HELP)
def init_command(directory: str | None) -> None:
    """Create ca.pem and ca-key.pem (key mode 0600) in the CA directory.

    An existing CA is never overwritten: it is checked and left untouched (exit 0), or, if
    its files are broken or unsafe, the problem is reported (exit 1).
    """
    from mirror.ca.authority import CAError, CertificateAuthority

    path = _ca_dir(directory)
    try:
        authority = CertificateAuthority.init(path)
    except CAError as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"cannot create the CA in {path}: {error.strerror or error}")
    if authority.created:
        click.echo(f"Created a new mirror CA in {authority.directory}")
    else:
        click.echo(f"A mirror CA already exists in {authority.directory}; left untouched")
    click.echo(f"  certificate:  {authority.cert_path}")
    click.echo(f"  private key:  {authority.key_path}  (keep it private: mode 0600)")
    click.echo(f"  subject:      {authority.cert.subject.rfc4514_string()}")
    click.echo(f"  SHA-256:      {_fingerprint(authority)}")
    click.echo(f"  expires:      {authority.cert.not_valid_after_utc:%Y-%m-%d}")
    click.echo()
    click.echo(authority.trust_instructions(), nl=False)


@ca.command("export")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None, help=_DIR_HELP)
@click.option("--format", "fmt", type=click.Choice(["pem", "der"]), default="pem",
              show_default=True, help="Certificate encoding.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the certificate to this file instead of standard output.")
def export_command(directory: str | None, fmt: str, out: str | None) -> None:
    """Write the CA certificate (never its key) to standard output or --out.

    Standard output carries only the certificate, so `mirror ca export > mirror-ca.pem`
    works; how to trust it (system store, Chromium/NSS, Firefox, HTTP libraries) goes to
    standard error.
    """
    from mirror.ca.authority import CERT_FILE, KEY_FILE, CAError, CertificateAuthority

    path = _ca_dir(directory)
    if not os.path.lexists(path / CERT_FILE) and not os.path.lexists(path / KEY_FILE):
        init_hint = "mirror ca init" + (f" --dir {path}" if directory else "")
        _fail(f"no CA in {path} (ca.pem and ca-key.pem are missing); create one with "
              f"`{init_hint}`")
    try:
        authority = CertificateAuthority.load(path)
    except CAError as error:
        _fail(str(error))
    data = authority.export(fmt)  # type: ignore[arg-type]
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        target = Path(out).expanduser()
        if target.resolve() in (authority.key_path.resolve(), authority.cert_path.resolve()):
            _fail(f"refusing to overwrite the CA's own file {target}")
        try:
            target.write_bytes(data)
        except OSError as error:
            _fail(f"cannot write {target}: {error.strerror or error}")
        click.echo(f"Wrote the CA certificate ({fmt.upper()}) to {target}", err=True)
    click.echo(authority.trust_instructions(), err=True, nl=False)

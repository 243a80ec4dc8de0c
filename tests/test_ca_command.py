"""Tests for `mirror ca init` / `mirror ca export`, driven through click like a user would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mirror.ca.command import ca


@click.group()
def cli() -> None:
    """A stand-in for `mirror` holding only the `ca` group."""


cli.add_command(ca)


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["ca", *args], env=env, catch_exceptions=False)


@pytest.fixture
def ca_dir(tmp_path) -> Path:
    directory = tmp_path / "mirror-ca"
    result = run("init", "--dir", str(directory))
    assert result.exit_code == 0, result.output
    return directory


def public_der(key_or_cert) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


# ----------------------------------------------------------------------------- init


def test_init_creates_a_private_key_and_a_ca_certificate(tmp_path):
    directory = tmp_path / "nested" / "ca"
    result = run("init", "--dir", str(directory))
    assert result.exit_code == 0, result.output
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert public_der(cert) == public_der(key)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "Created" in result.stdout
    assert str(cert_path) in result.stdout and str(key_path) in result.stdout
    for store in ("update-ca-certificates", "certutil", "Firefox"):
        assert store in result.stdout


def test_init_twice_leaves_the_existing_ca_untouched(ca_dir):
    before = {name: (ca_dir / name).read_bytes() for name in ("ca.pem", "ca-key.pem")}
    mtimes = {name: (ca_dir / name).stat().st_mtime_ns for name in before}
    result = run("init", "--dir", str(ca_dir))
    assert result.exit_code == 0, result.output
    assert "already exists" in result.stdout
    assert {name: (ca_dir / name).read_bytes() for name in before} == before
    assert {name: (ca_dir / name).stat().st_mtime_ns for name in before} == mtimes


def test_init_refuses_a_group_readable_key(ca_dir):
    key_path = ca_dir / "ca-key.pem"
    key_path.chmod(0o644)
    before = key_path.read_bytes()
    result = run("init", "--dir", str(ca_dir))
    assert result.exit_code == 1
    assert "accessible by group/others" in result.stderr
    assert f"chmod 600 {key_path}" in result.stderr
    assert key_path.read_bytes() == before
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o644  # reported, not silently changed


def test_init_refuses_half_a_ca(ca_dir):
    (ca_dir / "ca.pem").unlink()
    result = run("init", "--dir", str(ca_dir))
    assert result.exit_code == 1
    assert "ca.pem is missing" in result.stderr
    assert not (ca_dir / "ca.pem").exists()


def test_init_refuses_a_corrupt_certificate(ca_dir):
    (ca_dir / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    result = run("init", "--dir", str(ca_dir))
    assert result.exit_code == 1
    assert "not a valid PEM certificate" in result.stderr


def test_init_reports_an_unusable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run("init", "--dir", str(blocker / "ca"))
    assert result.exit_code == 1
    assert "cannot create the CA" in result.stderr


def test_init_default_directory_follows_mirror_home(tmp_path):
    result = run("init", env={"MIRROR_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "ca" / "ca.pem").is_file()
    assert stat.S_IMODE((tmp_path / "home" / "ca" / "ca-key.pem").stat().st_mode) == 0o600


# ----------------------------------------------------------------------------- export


def test_export_pem_to_stdout_instructions_to_stderr(ca_dir):
    result = run("export", "--dir", str(ca_dir))
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == (ca_dir / "ca.pem").read_bytes()
    x509.load_pem_x509_certificate(result.stdout_bytes)
    assert b"PRIVATE KEY" not in result.stdout_bytes
    for store in ("update-ca-certificates", "certutil", "Firefox"):
        assert store in result.stderr


def test_export_der_to_stdout_is_the_same_certificate(ca_dir):
    result = run("export", "--dir", str(ca_dir), "--format", "der")
    assert result.exit_code == 0, result.stderr
    der_cert = x509.load_der_x509_certificate(result.stdout_bytes)
    pem_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    assert der_cert == pem_cert
    assert der_cert.public_bytes(serialization.Encoding.DER) == result.stdout_bytes


@pytest.mark.parametrize("fmt", ["pem", "der"])
def test_export_to_a_file(ca_dir, tmp_path, fmt):
    out = tmp_path / f"exported.{fmt}"
    result = run("export", "--dir", str(ca_dir), "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == b""
    load = x509.load_pem_x509_certificate if fmt == "pem" else x509.load_der_x509_certificate
    exported = load(out.read_bytes())
    assert exported == x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    assert str(out) in result.stderr and "Firefox" in result.stderr


def test_export_never_overwrites_the_ca_files(ca_dir):
    key_before = (ca_dir / "ca-key.pem").read_bytes()
    for name in ("ca-key.pem", "ca.pem"):
        result = run("export", "--dir", str(ca_dir), "--format", "der",
                     "--out", str(ca_dir / name))
        assert result.exit_code == 1
        assert "refusing to overwrite" in result.stderr
    assert (ca_dir / "ca-key.pem").read_bytes() == key_before
    x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())


def test_export_without_a_ca(tmp_path):
    missing = tmp_path / "nothing-here"
    result = run("export", "--dir", str(missing))
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    assert "no CA in" in result.stderr and "mirror ca init" in result.stderr
    assert not missing.exists()


def test_export_refuses_a_world_readable_key(ca_dir):
    (ca_dir / "ca-key.pem").chmod(0o604)
    result = run("export", "--dir", str(ca_dir))
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    assert "accessible by group/others" in result.stderr


def test_export_refuses_a_mismatched_pair(ca_dir, tmp_path):
    other = tmp_path / "other"
    assert run("init", "--dir", str(other)).exit_code == 0
    os.replace(other / "ca.pem", ca_dir / "ca.pem")
    result = run("export", "--dir", str(ca_dir))
    assert result.exit_code == 1
    assert "does not match" in result.stderr

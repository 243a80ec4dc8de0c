"""`mirror run` that cannot start says why in one line and exits 1 (no traceback)."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror", "run", "--mode", "http",
                           "--listen", "127.0.0.1:0", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_an_unusable_store_path_is_refused_with_a_reason(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = run("--store", str(blocker / "captures.sqlite3"), "--ca-dir", str(tmp_path / "ca"),
               cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("mirror: cannot start: "), done.stderr
    assert str(blocker) in done.stderr and "Traceback" not in done.stderr


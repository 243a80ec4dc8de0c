"""The suite as a normal user: tests marked ``root`` skip with the reason instead of failing.

Run for real as ``nobody`` (this test needs root to become another user). When the interpreter
lives under a directory others cannot enter (``/root/.pyenv``), the child runs in a mount
namespace of its own where that directory is replaced by one holding only the interpreter.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

ROOT_ONLY = ["tests/test_tcp_mirror_slots.py", "tests/test_proxy_keylog_strict.py"]


def _closed_ancestor(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not enter."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def test_root_tests_skip_with_their_reason_for_a_normal_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("becoming another user (nobody) needs root; as a normal user the suite "
                    "run itself shows the skips")
    if not (shutil.which("runuser") and shutil.which("unshare")):
        pytest.skip("runuser and unshare (util-linux) are needed to run as nobody")
    if _closed_ancestor(REPO / "tests") is not None:
        pytest.skip(f"{REPO} is not readable by other users")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    prefix = Path(sys.base_prefix).resolve()
    closed = _closed_ancestor(prefix / "bin")
    script = ["set -e"]
    if closed is not None:
        keep = tmp_path / "interpreter"
        keep.mkdir()
        inside = prefix.relative_to(closed)
        script += [f"mount --bind {prefix} {keep}", f"mount -t tmpfs -o mode=755 tmpfs {closed}",
                   f"mkdir -p {closed / inside}", f"mount --bind {keep} {closed / inside}"]
    script.append(f"cd {REPO} && exec runuser -u nobody -- env HOME={home} TMPDIR={home} "
                  f"{sys.executable} -m pytest -q -p no:cacheprovider -rs {' '.join(ROOT_ONLY)}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c",
                           "\n".join(script)], capture_output=True, text=True, timeout=120,
                          check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "failed" not in out and "passed" not in out, out
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                                "no:cacheprovider", *ROOT_ONLY], cwd=REPO, capture_output=True,
                               text=True, timeout=120, check=True).stdout
    count = int(re.search(r"(\d+) tests? collected", collected).group(1))
    assert count >= 6, collected
    assert f"{count} skipped" in out, out                   # every one of them, none run
    assert out.count("needs root") >= 2, out

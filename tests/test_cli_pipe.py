"""`mirror ... | head`: when the reader of stdout goes away the command ends quietly."""

from __future__ import annotations

import subprocess
import sys
import time

from mirror.store import CaptureStore


def test_captures_follow_ends_quietly_when_the_pipe_closes(tmp_path):
    path = tmp_path / "captures.sqlite3"
    with CaptureStore(path) as store:
        store.add({"started": time.time(), "sni": "first.test", "mode": "http"})
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "captures", "list", "--store", str(path),
                             "--follow", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert b"first.test" in proc.stdout.readline()
        proc.stdout.close()                       # the reader goes away, like `| head -1`
        with CaptureStore(path) as store:
            for i in range(2000):
                store.add({"started": time.time(), "sni": f"h{i}.test", "mode": "http"})
        assert proc.wait(20) == 1             # click's quiet exit on EPIPE, not a loop
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

"""What the fidelity tests share: the echo server's name, reading the proxy's capture store,
fetching through Chromium, and comparing direct and proxied reports (every comparison kept for
the fidelity table that conftest writes with MIRROR_FIDELITY_TABLE=path)."""

from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from mirror.check.clients import CHROMIUM_FLAGS
from mirror.check.compare import FIELDS, judge
from mirror.record.capture import CaptureRecord

NAME = "echo.test"
RESULTS: dict[tuple[str, str], dict[str, str]] = {}


def chromium_get(bed, via: str | None) -> dict:
    port = bed["port"]
    profile = bed["workdir"] / f"chromium-{via}-{time.monotonic_ns()}"
    if via is None:
        route = [f"--host-resolver-rules=MAP {NAME} 127.0.0.1"]
    else:
        scheme = "http" if via == "http" else "socks5"
        route = [f"--proxy-server={scheme}://127.0.0.1:{bed['proxy'].ports[via]}"]
    out = subprocess.run(
        [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *route,
         "--dump-dom", f"https://{NAME}:{port}/fidelity?client=chromium"],
        capture_output=True, text=True, timeout=90,
    ).stdout
    match = re.search(r"<pre[^>]*>(.*)</pre>", out, re.DOTALL)
    assert match, f"chromium printed no JSON page: {out[:300]!r}"
    return json.loads(html.unescape(match.group(1)))


def newest_capture(store: Path, after_id: int, timeout: float = 8.0, sni: str | None = NAME,
                   path: str | None = None) -> dict:
    """The first capture with id > after_id (and this SNI, unless None); with ``path``, the
    first whose connection carried a request for it (browsers open more than one connection
    to a server, some carrying nothing, and records land in the order connections close)."""
    deadline = time.monotonic() + timeout
    query = "SELECT id, record FROM captures WHERE id > ?" + (" AND sni = ?" if sni else "")
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                rows = db.execute(query + " ORDER BY id",
                                  (after_id, sni) if sni else (after_id,)).fetchall()
            for row_id, text in rows:
                record = json.loads(text)
                if path is None or path in _request_paths(record):
                    record["id"] = row_id
                    return record
        time.sleep(0.1)
    wanted = f" with a request for {path}" if path else ""
    raise AssertionError(f"no capture after id {after_id}{wanted} in {store}")


def _request_paths(record: dict) -> list[str]:
    requests = (record.get("http") or {}).get("requests") or []
    return [request.get("path") or request.get("target") or "" for request in requests]


def last_id(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0]


def compare(client: str, via: str, direct: dict, proxied: dict, capture: dict) -> None:
    """Every field the same, or different only where the capture declared it beforehand."""
    verdicts = judge(direct, proxied, CaptureRecord.from_stored(capture))
    RESULTS[(client, via)] = {field: ("differs: " + v.detail if v.status == "declared" else
                                      str(v)) for field, v in verdicts.items()}
    wrong = [f"{field}: {v.detail}" for field, v in verdicts.items() if not v.ok]
    assert not wrong, f"{client} via {via}: " + "; ".join(wrong)
    assert capture["alpn"]["upstream"] == capture["alpn"]["client"]


def fidelity_table() -> str:
    """The comparisons made in this session as a Markdown table (README's fidelity table)."""
    lines = ["| client | via | " + " | ".join(FIELDS) + " |",
             "|---|---|" + "---|" * len(FIELDS)]
    for (client, via), row in sorted(RESULTS.items()):
        cells = [row.get(f, "n/a") for f in FIELDS]
        lines.append(f"| {client} | {via} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""What the fidelity tests share: the echo server's name, reading the proxy's capture store,
fetching through Chromium, and comparing direct and proxied reports (every comparison kept for
the fidelity table that conftest writes with MIRROR_FIDELITY_TABLE=path).

Besides the fields of ``mirror.check.compare``, each row has a ``hello`` column: the hello the
server received through the proxy against the one the proxy received from the client, every
field and every extension's bytes compared after masking only what a client makes fresh per
connection (``mirror.fingerprint.hello_diff``). ``compare_exactly`` is the strict judgement for
clients that send the same hello on every connection: every column "same", and the server's
view through the proxy equal to the direct run's.
"""

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
from mirror.check.compare import FIELDS, Verdict, judge
from mirror.fingerprint.hello_diff import hello_differences_of_bytes
from mirror.record.capture import CaptureRecord

NAME = "echo.test"
TABLE_FIELDS = [*FIELDS, "hello"]
CHROMIUM_PATH = "/fidelity?client=chromium"
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
         "--dump-dom", f"https://{NAME}:{port}{CHROMIUM_PATH}"],
        capture_output=True, text=True, timeout=90,
    ).stdout
    match = re.search(r"<pre[^>]*>(.*)</pre>", out, re.DOTALL)
    assert match, f"chromium printed no JSON page: {out[:300]!r}"
    return json.loads(html.unescape(match.group(1)))


def newest_capture(store: Path, after_id: int, timeout: float = 8.0, sni: str | None = NAME,
                   request: str | None = None) -> dict:
    """The first capture with id > after_id (and this SNI, unless None); records land when
    the connection closes. With ``request`` (a path, e.g. "/fidelity?client=chromium"), the
    first one whose connection carried that request: a browser opens more than one connection
    to a server (a spare one that carries nothing), and each has its own hello."""
    deadline = time.monotonic() + timeout
    query = "SELECT id, record FROM captures WHERE id > ?" + (" AND sni = ?" if sni else "")
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                rows = db.execute(query + " ORDER BY id",
                                  (after_id, sni) if sni else (after_id,)).fetchall()
            for row_id, text in rows:
                record = json.loads(text)
                if request is None or request in _request_paths(record):
                    record["id"] = row_id
                    return record
        time.sleep(0.1)
    wanted = f" that carried {request}" if request else ""
    raise AssertionError(f"no capture{wanted} after id {after_id} in {store}")


def _request_paths(record: dict) -> list[str]:
    requests = (record.get("http") or {}).get("requests") or []
    return [r.get("path") or r.get("target") or "" for r in requests]


def last_id(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0]


def _head_names(raw: str) -> list[str]:
    return [line.split(":", 1)[0] for line in raw.split("\r\n")[1:] if ":" in line]


def _head_as_sent(direct: dict, proxied: dict, capture: dict, verdicts: dict) -> dict:
    """An HTTP/1 head that differs from the direct run's only because the client itself sends
    another one through a proxy (wget adds Proxy-Connection inside the CONNECT tunnel): the
    server got it exactly as the client sent it to the proxy (the capture's request head)."""
    verdict = verdicts.get("h1_head")
    requests = (capture.get("http") or {}).get("requests") or [{}]
    if verdict is None or verdict.ok or requests[0].get("raw") != proxied["http1"]["raw"]:
        return {}
    added = [n for n in _head_names(proxied["http1"]["raw"])
             if n not in _head_names(direct["http1"]["raw"])]
    return {"h1_head": Verdict("same as sent", "the client adds " + ", ".join(added)
                               + " through a proxy" if added else "the client's own head")}


def compare(client: str, via: str, direct: dict, proxied: dict, capture: dict) -> None:
    """Every field the same, or different only where the capture declared it beforehand."""
    verdicts = judge(direct, proxied, CaptureRecord.from_stored(capture))
    verdicts.update(_head_as_sent(direct, proxied, capture, verdicts))
    RESULTS[(client, via)] = {field: ("differs: " + v.detail if v.status == "declared" else
                                      str(v)) for field, v in verdicts.items()}
    differences = hello_differences_of_bytes(bytes.fromhex(capture["tls"]["raw"]),
                                             bytes.fromhex(proxied["tls"]["raw"]))
    RESULTS[(client, via)]["hello"] = ("differs: " + ", ".join(d.field for d in differences)
                                       if differences else "same")
    wrong = [f"{field}: {v.detail}" for field, v in verdicts.items() if not v.ok]
    assert not wrong, f"{client} via {via}: " + "; ".join(wrong)
    assert capture["alpn"]["upstream"] == capture["alpn"]["client"]


def compare_exactly(client: str, via: str, direct: dict, proxied: dict, capture: dict,
                    permutes: bool = False) -> None:
    """``compare``, and nothing may differ at all: every column "same" (no declared or
    tolerated difference), JA4 / JA4_o / the JA3 string / the record version / the negotiated
    ALPN and version equal to the direct run's, and the hello the server saw through the proxy
    equal, field by field after masking, to the direct run's and to the client's own.

    ``permutes``: the client itself draws its extension order (and with it the GREASE ECH
    payload size and padding) per connection, as Chromium does; its hello through the proxy is
    then held to the client's own hello of that connection, and only the order-free fields
    (JA4 and the rest) to the direct run's."""
    compare(client, via, direct, proxied, capture)
    loose = {f: v for f, v in RESULTS[(client, via)].items()
             if v != "same" and not (f == "h1_head" and v.startswith("same as sent"))}
    assert not loose, f"{client} via {via} is not exact: {loose}"
    fields = ("ja4", "record_version", "negotiated") if permutes else \
        ("ja4", "ja4_o", "ja3_full", "record_version", "negotiated")
    for field in fields:
        assert proxied["tls"][field] == direct["tls"][field], \
            f"{client} via {via}: {field} direct {direct['tls'][field]!r}, " \
            f"through the proxy {proxied['tls'][field]!r}"
    references = [("the client's hello at the proxy", capture["tls"]["raw"])]
    if not permutes:
        references.append(("the direct run", direct["tls"]["raw"]))
    for name, reference in references:
        differences = hello_differences_of_bytes(bytes.fromhex(reference),
                                                 bytes.fromhex(proxied["tls"]["raw"]))
        assert not differences, f"{client} via {via}: the server's hello differs from " \
            f"{name}: " + "; ".join(map(str, differences))


def fidelity_table() -> str:
    """The comparisons made in this session as a Markdown table (README's fidelity table)."""
    lines = ["| client | via | " + " | ".join(TABLE_FIELDS) + " |",
             "|---|---|" + "---|" * len(TABLE_FIELDS)]
    for (client, via), row in sorted(RESULTS.items()):
        cells = [row.get(f, "n/a") for f in TABLE_FIELDS]
        lines.append(f"| {client} | {via} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

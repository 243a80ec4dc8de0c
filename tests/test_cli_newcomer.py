"""What a person meets first on the command line: each mistake they can make is answered in one
line that names the option and the file or address (never a traceback), and tables fit the
terminal (80 columns in a pipe) unless asked for more."""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from proxyrun import running_proxy

from mirror.store import CaptureStore

JA4 = "t13d1516h2_8daaf6152771_02713d6af862"


def mirror(*args: str, cwd: Path | None = None, env: dict | None = None,
           timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env, **kwargs)


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The last stderr line, which must say all of ``needles``; no traceback anywhere."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines, done
    for needle in needles:
        assert needle in lines[-1], done.stderr
    return lines[-1]


def environment(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "captures.sqlite3"
    now = time.time()
    with CaptureStore(path) as captures:
        captures.add({"started": now - 5, "mode": "http", "protocol": "tls",
                      "client": {"addr": "127.0.0.1", "port": 51234},
                      "destination": {"host": "www.a-rather-long-host-name.example", "port": 443},
                      "sni": "www.a-rather-long-host-name.example", "tls": {"ja4": JA4},
                      "error": {"stage": "relay", "message": "connection reset by peer while "
                                "relaying the response body to the client"}})
        captures.add({"started": now - 2, "mode": "socks5", "protocol": "http",
                      "client": {"addr": "2001:db8::1", "port": 40000},
                      "destination": {"host": "198.18.0.2", "port": 80}})
    return path


# -- 1. export to a directory that does not exist ---------------------------------------------

def test_export_to_a_missing_directory_is_one_line(store, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "x.pcap"
    for fmt in ("pcap-lite", "har", "json"):
        done = mirror("captures", "export", "--format", fmt, "--out", str(target),
                      "--store", str(store))
        assert done.returncode == 1
        one_line_error(done, "mirror captures: error: cannot write", str(target),
                       "No such file or directory")
    assert not target.exists()


# -- 3. tables fit 80 columns in a pipe; --wide and --columns ---------------------------------

def test_captures_list_fits_80_columns_when_piped_one_line_per_row(store):
    done = mirror("captures", "list", "--store", str(store), env=environment())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.rstrip("\n").splitlines()
    assert len(lines) == 3                                   # header + one line per connection
    assert all(len(line.rstrip()) <= 80 for line in lines), lines
    assert lines[0].split()[:2] == ["id", "time"] and "JA4" in lines[0]
    assert lines[1].split()[0] == "1" and "127.0.0.1:51234" in lines[1]
    assert "t13d1516h2" in lines[1] and "…" in lines[1]     # JA4 cut to its first part, marked
    assert lines[2].split()[0] == "2" and "198.18.0.2:80" in lines[2]


def test_captures_list_wide_and_columns(store):
    wide = mirror("captures", "list", "--wide", "--store", str(store), env=environment())
    assert wide.returncode == 0, wide.stderr
    lines = wide.stdout.rstrip("\n").splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["id", "time", "client", "destination", "SNI", "mode", "protocol",
                                "JA4", "fidelity", "error", "gateway"]
    assert JA4 in lines[1] and "www.a-rather-long-host-name.example:443" in lines[1]
    for width in (100, 132):
        done = mirror("captures", "list", "--columns", str(width), "--store", str(store),
                      env=environment())
        lines = done.stdout.rstrip("\n").splitlines()
        assert len(lines) == 3 and all(len(line.rstrip()) <= width for line in lines), lines
    roomy = mirror("captures", "list", "--columns", "140", "--store", str(store), env=environment())
    assert JA4 in roomy.stdout                               # room enough: the whole JA4
    bad = mirror("captures", "list", "--columns", "abc", "--store", str(store))
    assert bad.returncode == 2 and "--columns" in bad.stderr and "Traceback" not in bad.stderr


def test_every_command_lays_out_for_80_columns_in_a_pipe(store, tmp_path):
    """`captures show`, `captures diff`, `identify` and `fingerprint` tables in a pipe: 80."""
    pcap = REPO.parent / "shared" / "vectors" / "foxio-ja4" / "pcap" / "tls-handshake.pcapng"
    runs = [("captures", "show", "1", "--store", str(store)),
            ("captures", "diff", "1", "2", "--store", str(store)),
            ("identify", "1", "--store", str(store))]
    if pcap.exists():
        runs.append(("fingerprint", str(pcap)))
    for args in runs:
        done = mirror(*args, env=environment())
        assert "Traceback" not in done.stderr, (args, done.stderr)
        lines = done.stdout.splitlines()
        assert lines, (args, done.stderr)
        assert max(len(line.rstrip()) for line in lines) <= 80, (args, done.stdout)


# -- 13. no match, pcap-lite to a terminal, the CA line -----------------------------------------

def test_captures_list_with_no_match_says_so(store):
    done = mirror("captures", "list", "--sni", "nothing-like-this", "--store", str(store))
    assert done.returncode == 0
    assert done.stdout == ""
    one_line_error(done, "no captures match", "--sni nothing-like-this", str(store))
    as_json = mirror("captures", "list", "--json", "--sni", "nothing-like-this", "--store", str(store))
    assert as_json.stdout.strip() == "[]"


def test_pcap_lite_to_a_terminal_is_refused_unless_forced(store, tmp_path):
    controller, terminal = pty.openpty()
    try:
        command = [sys.executable, "-m", "mirror", "captures", "export", "--format", "pcap-lite",
                   "--store", str(store)]
        done = subprocess.run(command, stdout=terminal, stderr=subprocess.PIPE, text=True,
                              timeout=60)
        assert done.returncode == 1
        one_line_error(done, "pcap-lite is binary", "--out", "--force")
        forced = subprocess.run([*command, "--force"], stdout=terminal, stderr=subprocess.PIPE,
                                text=True, timeout=60)
        assert forced.returncode == 0, forced.stderr
    finally:
        os.close(terminal)
        os.close(controller)
    piped = subprocess.run([sys.executable, "-m", "mirror", "captures", "export", "--format",
                            "pcap-lite", "--store", str(store)], capture_output=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout[:4] == bytes.fromhex("d4c3b2a1")


def test_the_ca_line_says_created_the_first_time_only(tmp_path):
    with running_proxy(tmp_path / "one", modes=("http",)) as first:
        first_line = next(line for line in first.lines if line.startswith("CA certificate:"))
    ca_dir = tmp_path / "one" / "proxy-ca"
    assert first_line.startswith(f"CA certificate: {ca_dir / 'ca.pem'} (created now;")
    with running_proxy(tmp_path / "one", modes=("http",)) as again:
        later = next(line for line in again.lines if line.startswith("CA certificate:"))
    assert later.startswith(f"CA certificate: {ca_dir / 'ca.pem'} (the existing CA, made 20")
    assert "created now" not in later


# -- 5, 6. which address is in use, which file is wrong -----------------------------------------

def test_run_and_echo_name_the_listen_address_in_use(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        run = mirror("run", "--listen", f"127.0.0.1:{port}", "--ca-dir", str(tmp_path / "ca"),
                     "--no-store")
        assert run.returncode == 1
        one_line_error(run, "mirror: cannot start:", f"--listen 127.0.0.1:{port}",
                       "already in use")
        assert "Errno" not in run.stderr
        echo = mirror("echo", "--listen", f"127.0.0.1:{port}")
        assert echo.returncode == 2
        one_line_error(echo, "mirror echo: error:", f"--listen 127.0.0.1:{port}", "already in use")
    finally:
        holder.close()


def test_a_listen_name_that_does_not_resolve(tmp_path):
    run = mirror("run", "--listen", "bogus.invalid", "--ca-dir", str(tmp_path / "ca"), "--no-store")
    assert run.returncode == 1
    one_line_error(run, "--listen bogus.invalid", "neither an IP address nor a name")
    assert "Errno" not in run.stderr
    echo = mirror("echo", "--listen", "bogus.invalid")
    one_line_error(echo, "--listen bogus.invalid", "neither an IP address nor a name")


def test_upstream_ca_without_a_certificate_names_the_option_and_file(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    done = mirror("run", "--listen", "127.0.0.1:0", "--ca-dir", str(tmp_path / "ca"), "--no-store",
                  "--upstream-ca", str(junk))
    assert done.returncode == 2
    line = one_line_error(done, "--upstream-ca", str(junk), "no PEM certificate")
    assert "_ssl.c" not in line and "X509" not in line


@pytest.fixture(scope="module")
def leaf(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("leaf")
    cert, key = directory / "leaf.pem", directory / "leaf-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-subj", "/CN=leaf.test", "-days", "2"], check=True, capture_output=True)
    return cert, key


def test_echo_cert_without_its_key_says_it_is_the_key(leaf, tmp_path):
    cert, key = leaf
    done = mirror("echo", "--listen", "127.0.0.1:0", "--cert", str(cert))
    assert done.returncode == 2
    line = one_line_error(done, f"--cert {cert}", "no private key", "--key")
    assert "PEM lib" not in line and "cannot listen" not in line
    other = tmp_path / "other-key.pem"
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out",
                    str(other)], check=True, capture_output=True)
    done = mirror("echo", "--listen", "127.0.0.1:0", "--cert", str(cert), "--key", str(other))
    one_line_error(done, f"--key {other}", "not the private key")
    done = mirror("echo", "--listen", "127.0.0.1:0", "--cert", str(key), "--key", str(key))
    one_line_error(done, f"--cert {key}", "no PEM certificate")


# -- 12. click: no deprecated call, a bound on the major version --------------------------------

def test_no_deprecated_click_calls_and_click_is_bounded():
    sources = "\n".join(p.read_text() for p in (REPO / "mirror").rglob("*.py"))
    assert "get_binary_stream" not in sources and "get_text_stream" not in sources
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"click>=8.1,<9"' in pyproject


def test_ca_export_writes_pem_to_a_pipe(tmp_path):
    assert mirror("ca", "init", "--dir", str(tmp_path / "ca")).returncode == 0
    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-m", "mirror", "ca",
                           "export", "--dir", str(tmp_path / "ca")], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"-----BEGIN CERTIFICATE-----")


# -- 10. too little seen to name a client -------------------------------------------------------

def test_identify_a_plain_http1_curl_request_is_not_identifiable(tmp_path):
    from conftest import running_echo
    from fidelity_helpers import NAME, last_id, newest_capture

    with running_echo(tmp_path / "echo-ca") as (port, _echo_ca):
        extra = ["--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
            before = last_id(proxy.store)
            fetched = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                      "-x", proxy.url("http"), f"http://{NAME}:{port}/plain"],
                                     capture_output=True, text=True, timeout=30, check=False)
            assert fetched.stdout == "200", fetched.stderr
            record = newest_capture(proxy.store, before, sni=None)
            done = mirror("identify", str(record["id"]), "--store", str(proxy.store),
                          env=environment())
            as_json = mirror("identify", str(record["id"]), "--store", str(proxy.store), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    assert " not identifiable: too little seen (not seen: ja4); " in text, done.stdout
    assert " references are equal on h1_header_order: " in text
    assert "exact on what was seen" not in done.stdout and "also exact" not in done.stdout
    result = __import__("json").loads(as_json.stdout)
    assert result["identifiable"] is False and result["exact"] is None
    assert len(result["tied"]) > 1


# -- 8. a request to the proxy's own listener is a loop, and is called one ---------------------

def test_a_request_to_the_proxy_itself_is_answered_as_a_loop(tmp_path):
    from fidelity_helpers import last_id

    with running_proxy(tmp_path / "proxy", modes=("http",)) as proxy:
        port = proxy.ports["http"]
        before = last_id(proxy.store)
        answers = []
        for request in (f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
                        f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request.encode())
                response = b""
                while chunk := sock.recv(4096):
                    response += chunk
            answers.append(response.decode())
        deadline = time.monotonic() + 10
        while last_id(proxy.store) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with CaptureStore(proxy.store, create=False) as captures:
            errors = [captures.get(before + 1 + i)["error"] for i in range(2)]
    for answer in answers:
        assert answer.startswith("HTTP/1.1 400 "), answer
        assert "\r\nX-Mirror-Error: loop\r\n" in answer and "own listener (a loop)" in answer
    assert [error["stage"] for error in errors] == ["loop", "loop"]


# -- 7. Ctrl-C with a transfer in flight ---------------------------------------------------------

class TricklingOrigin:
    """A plain-HTTP origin on loopback that answers every request with a 100 MB body sent
    1 KiB at a time, slowly: a download that is still running when the proxy is stopped."""

    def __init__(self) -> None:
        import threading

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
                    for _ in range(2000):                    # bounded: at most 100 s
                        if self.done.is_set():
                            break
                        conn.sendall(b"x" * 1024)
                        time.sleep(0.05)
                except OSError:
                    pass

    def close(self) -> None:
        self.done.set()
        self.thread.join(10)
        self.listener.close()


def test_ctrl_c_drains_says_so_and_a_second_ctrl_c_cuts_with_a_record(tmp_path):
    import signal

    from fidelity_helpers import last_id

    origin = TricklingOrigin()
    try:
        with running_proxy(tmp_path / "proxy", modes=("http",)) as proxy:
            before = last_id(proxy.store)
            client = socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=10)
            try:
                client.sendall(f"GET http://127.0.0.1:{origin.port}/big HTTP/1.1\r\n"
                               f"Host: 127.0.0.1:{origin.port}\r\n\r\n".encode())
                received = b""
                while len(received) < 4096:
                    received += client.recv(4096)
                assert received.startswith(b"HTTP/1.1 200 OK")
                proxy.process.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 10
                while "draining 1 connection (Ctrl-C again to stop now)" not in proxy.log_text():
                    assert time.monotonic() < deadline, proxy.log_text()
                    time.sleep(0.05)
                assert proxy.process.poll() is None           # still draining the download
                started = time.monotonic()
                proxy.process.send_signal(signal.SIGINT)
                assert proxy.process.wait(10) == 0, proxy.log_text()
                stopped_in = time.monotonic() - started
            finally:
                client.close()
            assert "Traceback" not in proxy.log_text()
            with CaptureStore(proxy.store, create=False) as captures:
                record = captures.get(before + 1)
    finally:
        origin.close()
    assert stopped_in < 4.0, stopped_in                     # not the whole 5 s drain
    assert record["error"]["stage"] == "shutdown", record["error"]
    assert record["error"]["message"].startswith("cut: the proxy stopped")
    assert record["bytes"]["down"] >= 4096


# -- 2. `mirror fingerprint` on many connections: streamed, bounded, progress on a terminal -----

@pytest.fixture(scope="module")
def many_connections(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from bench_fingerprint import write_capture
    finally:
        sys.path.remove(str(REPO / "tools"))
    path = tmp_path_factory.mktemp("many") / "many.pcap"
    write_capture(path, 3000)
    return path


def peak_rss_mib(args: list[str]) -> tuple[float, bytes]:
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "mirror", *args], stdout=sink,
                                   stderr=subprocess.PIPE)
        err = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err
    return usage.ru_maxrss / 1024, err


def test_fingerprint_table_of_many_connections_takes_no_more_memory_than_json(many_connections):
    table, _ = peak_rss_mib(["fingerprint", str(many_connections)])
    as_json, _ = peak_rss_mib(["fingerprint", str(many_connections), "--json"])
    assert table <= as_json * 1.2 + 8, (table, as_json)


def test_fingerprint_table_lists_every_connection_and_shows_progress_on_a_terminal(
        many_connections, tmp_path):
    controller, terminal = pty.openpty()
    output = tmp_path / "table.txt"
    try:
        with output.open("w") as out:
            done = subprocess.run([sys.executable, "-m", "mirror", "fingerprint",
                                   str(many_connections)], stdout=out, stderr=terminal,
                                  timeout=120, check=False)
        os.close(terminal)
        terminal = None
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal is not None:
            os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    text = output.read_text()
    assert text.count("\n#") == 3000 and text.rstrip().endswith("many.pcap: 3000 connections")
    assert "#3000  198.18.11.183:" in text and "sni          host" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert b"mirror fingerprint: " in shown and b"connections analysed" in shown, shown
    assert shown.endswith(b"\r\x1b[K")                    # the progress line is cleared


def test_fingerprint_shows_no_progress_in_a_pipe(many_connections):
    _, err = peak_rss_mib(["fingerprint", str(many_connections), "--json"])
    assert err == b""

"""Real TLS servers and clients on loopback for the replay engine's tests.

Servers: ``openssl s_server -www``, Python's ``ssl``, ``gnutls-serv --http`` and a Go
``crypto/tls`` server (built once per test session). Client first flights: curl_cffi targets,
system curl, Python ssl, Go and gnutls-cli, each captured by a bare listener. ``Recorder`` sits
between the engine and a server and keeps what reached the server (and what it answered), so a test compares the hello
the server saw with the client's. ``run_replay`` drives a ReplayClient over a socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from conftest import capture_client_hello, first_flight

from mirror.replay.client import (
    ApplicationData,
    Closed,
    HandshakeComplete,
    ReplayClient,
    ReplayConfig,
)
from mirror.replay.errors import ReplayError
from mirror.wire.tls import read_client_hello

NAME = "example.test"
GO_SOURCE = r'''
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if os.Args[1] == "client" {
		conn, err := tls.Dial("tcp", "127.0.0.1:"+os.Args[2], &tls.Config{ServerName: "example.test"})
		if err == nil {
			conn.Close()
		}
		return
	}
	cert, err := tls.LoadX509KeyPair(os.Args[2], os.Args[3])
	if err != nil {
		panic(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert},
		NextProtos: []string{"http/1.1"}})
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{ReadTimeout: 5 * time.Second, Handler: http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "go says hello to %s", r.URL.Path) })}
	srv.Serve(ln)
}
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def popen_server(args: list[str], port: int):
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()  # SIGTERM: nginx's master then stops its workers (SIGKILL would orphan them)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def openssl_server(cert: Path, key: Path, *extra: str):
    """``openssl s_server -www`` (answers GET / with its status page), one client at a time."""
    port = free_port()
    with popen_server(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
                       "-key", str(key), "-www", *extra], port):
        yield port


@contextlib.contextmanager
def gnutls_server(cert: Path, key: Path, *extra: str):
    """``gnutls-serv --http`` (it has no bind option: it listens on every address; tests only
    ever connect to 127.0.0.1)."""
    port = free_port()
    with popen_server(["gnutls-serv", "--http", "-p", str(port), "--x509certfile", str(cert),
                       "--x509keyfile", str(key), *extra], port):
        yield port


@contextlib.contextmanager
def go_server(binary: Path, cert: Path, key: Path):
    proc = subprocess.Popen([str(binary), "server", str(cert), str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield port
    finally:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def nginx_server(cert: Path, key: Path, directory: Path, *, protocols: str = "TLSv1.2 TLSv1.3"):
    """nginx (OpenSSL) on a free loopback port, h1 and h2, answering every request itself."""
    port = free_port()
    (directory / "logs").mkdir(exist_ok=True)
    (directory / "nginx.conf").write_text(f"""
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    lingering_close off;
    client_body_temp_path {directory}/tmp;
    proxy_temp_path {directory}/tmp-proxy;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols {protocols};
        # every request's whole body is read before the answer: proxy_pass buffers it, then
        # finds no backend, and the 502 is answered by @hello (a bare ``return`` would answer
        # an HTTP/2 request before its upload ends, with a RST_STREAM NO_ERROR that curl
        # reports as an error)
        location / {{
            client_body_buffer_size 1m;     # in memory: the worker may not write here
            proxy_pass http://unix:{directory}/no-backend.sock;
            error_page 502 =200 @hello;
        }}
        location @hello {{ return 200 "nginx says hello to $request_uri over $ssl_protocol"; }}
    }}
}}
""")
    with popen_server(["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf"),
                       "-g", "daemon off;"], port):
        yield port


def build_go(directory: Path) -> Path:
    (directory / "main.go").write_text(GO_SOURCE)
    env = {"HOME": str(directory), "GOCACHE": str(directory / "cache"), "GO111MODULE": "off",
           "PATH": "/usr/bin:/bin:/usr/lib/go/bin"}
    subprocess.run(["go", "build", "-o", "replaytls", "main.go"], cwd=directory, env=env,
                   check=True, timeout=300, capture_output=True)
    return directory / "replaytls"


@contextlib.contextmanager
def python_server(cert: Path, key: Path, *, min_version=ssl.TLSVersion.TLSv1_2,
                  max_version=ssl.TLSVersion.TLSv1_3):
    """Python's ssl: answers each HTTP/1.0 request with the request's size."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.minimum_version, context.maximum_version = min_version, max_version
    context.set_alpn_protocols(["http/1.1"])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            raw.settimeout(5)
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        request += chunk
                    body = f"python got {len(request)} bytes".encode()
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                    conn.unwrap()
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


class Recorder:
    """A loopback relay in front of a server: keeps every client byte that reached the server."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytearray] = []
        self.replies: list[bytearray] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target), 5)
                seen, replies = bytearray(), bytearray()
                self.streams.append(seen)
                self.replies.append(replies)
                threading.Thread(target=self._pump, args=(client, upstream, seen),
                                 daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, replies),
                                 daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, seen: bytearray) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                seen.extend(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> Recorder:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_replay(port: int, flight: bytes, request: bytes = b"GET / HTTP/1.0\r\n\r\n",
               record_sizes: list[int] | None = None, until=None, into: int = 0,
               seal_into: bytearray | None = None, **config):
    """Handshake, send ``request``, read until the server closes (or ``until(reply)`` holds,
    then close_notify): (HandshakeComplete, reply). With ``into``, the application data is
    received into a buffer of that size (``receive_into``), as the proxy's relay does; with
    ``seal_into``, the request is sealed into that buffer (``send_into``), as the
    proxy's upstream connection does."""
    client = ReplayClient(ReplayConfig(client_hello=read_client_hello(flight), **config))
    complete, reply = None, bytearray()
    buffer = memoryview(bytearray(into)) if into else None
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(5)
        sock.sendall(client.start())
        for _ in range(10000):
            chunk = sock.recv(65536)
            try:
                if chunk and buffer is not None:
                    count, events = client.receive_into(chunk, buffer)
                    reply += buffer[:count]         # before what the events carry
                else:
                    events = client.receive(chunk) if chunk else client.eof()
            finally:
                with contextlib.suppress(OSError):
                    sock.sendall(client.data_to_send())
            for event in events:
                if isinstance(event, HandshakeComplete):
                    complete = event
                    if seal_into is None:
                        sock.sendall(client.send(request, record_sizes))
                    else:
                        with client.send_into(seal_into, request, record_sizes) as sealed:
                            sock.sendall(sealed)
                elif isinstance(event, ApplicationData):
                    reply += event.data
                elif isinstance(event, Closed):
                    chunk = b""
            if until is not None and until(bytes(reply)):
                sock.sendall(client.close())
                break
            if not chunk:
                break
    if complete is None:
        raise ReplayError("truncated", "no handshake")
    return complete, bytes(reply)


# ---- client first flights ------------------------------------------------------------------

def _quiet(*args: str) -> None:
    subprocess.run(args, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                   timeout=30)


def system_curl_hello(*options: str) -> bytes:
    return first_flight(lambda port: _quiet(
        "curl", "-s", "-m", "3", *options, "--resolve", f"{NAME}:{port}:127.0.0.1",
        f"https://{NAME}:{port}/"))


def python_ssl_hello() -> bytes:
    def client(port: int) -> None:
        context = ssl.create_default_context()
        with socket.create_connection(("127.0.0.1", port), 3) as raw, \
                contextlib.suppress(OSError, ssl.SSLError):
            context.wrap_socket(raw, server_hostname=NAME)
    return first_flight(client)


def gnutls_cli_hello() -> bytes:
    return first_flight(lambda port: _quiet(
        "timeout", "3", "gnutls-cli", "--sni-hostname", NAME, "-p", str(port), "127.0.0.1"))


def go_hello(binary: Path) -> bytes:
    return first_flight(lambda port: _quiet("timeout", "3", str(binary), "client", str(port)))


JAVA_SOURCE = """
import javax.net.ssl.*;
public class Hello {
    public static void main(String[] args) throws Exception {
        SSLSocket s = (SSLSocket) SSLSocketFactory.getDefault().createSocket("127.0.0.1",
            Integer.parseInt(args[0]));
        SSLParameters p = s.getSSLParameters();
        p.setServerNames(java.util.List.of(new SNIHostName("example.test")));
        p.setApplicationProtocols(new String[]{"h2", "http/1.1"});
        s.setSSLParameters(p);
        s.setSoTimeout(3000);
        try { s.startHandshake(); } catch (Exception e) { }
    }
}
"""


def java_hello(directory: Path) -> bytes:
    """Java SunJSSE's hello (the JDK's single-file source launcher)."""
    source = directory / "Hello.java"
    source.write_text(JAVA_SOURCE)
    return first_flight(lambda port: _quiet("timeout", "20", "java", str(source), str(port)))


def node_hello() -> bytes:
    script = ("require('tls').connect({port: +process.argv[1], host: '127.0.0.1', "
              "servername: 'example.test'}).on('error', () => {})")
    return first_flight(lambda port: _quiet("timeout", "5", "node", "-e", script, str(port)))


def client_hellos(go_binary: Path | None = None) -> dict[str, bytes]:
    hellos = {family: capture_client_hello(family, NAME)
              for family in ("chrome", "firefox", "safari")}
    hellos["curl"] = system_curl_hello()
    hellos["curl-tls1.2"] = system_curl_hello("--tls-max", "1.2")  # no supported_versions
    hellos["python"] = python_ssl_hello()
    hellos["gnutls"] = gnutls_cli_hello()
    hellos["node"] = node_hello()
    if go_binary is not None:
        hellos["go"] = go_hello(go_binary)
        hellos["java"] = java_hello(go_binary.parent)
    return hellos

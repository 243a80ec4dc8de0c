"""``mirror run``: start the proxy (explicit HTTP on 127.0.0.1:8080 when given no options)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import sys
from pathlib import Path

import click

from mirror import paths
from mirror.store.open_store import shown as shown_store
from mirror.store.open_store import store_spec


def _listeners(modes: tuple[str, ...], listens: tuple[str, ...]):
    from mirror.net.listen import parse_host_port
    from mirror.proxy.server import DEFAULT_LISTEN, Listener

    modes = modes or ("http",)
    if listens and len(listens) != len(modes):
        raise click.BadParameter("give one --listen per --mode (in the same order), or none",
                                 param_hint="--listen")
    out = []
    for i, spec in enumerate(modes):
        mode, target = _mode(spec)
        host, port = DEFAULT_LISTEN[mode]
        if listens:
            try:
                host, port = parse_host_port(listens[i], port)
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--listen") from None
            host = host or DEFAULT_LISTEN[mode][0]
        out.append(Listener(mode, host, port, target))
    return out


def _mode(spec: str) -> tuple[str, tuple[str, str, int] | None]:
    """``http`` | ``socks5`` | ``transparent`` | ``reverse:SCHEME://HOST:PORT``."""
    from urllib.parse import urlsplit

    if spec in ("http", "socks5", "transparent"):
        return spec, None
    if spec.startswith("reverse:"):
        url = urlsplit(spec[len("reverse:"):])
        try:
            port = url.port or {"https": 443, "http": 80}.get(url.scheme)
        except ValueError:
            port = None
        if url.scheme in ("http", "https") and url.hostname and port:
            return "reverse", (url.scheme, url.hostname, port)
    raise click.BadParameter(f"{spec!r}: one of http, socks5, transparent, "
                             "reverse:https://HOST:PORT", param_hint="--mode")


def _metrics_address(value: str | None) -> tuple[str, int] | None:
    """--metrics HOST:PORT (or a bare PORT: loopback)."""
    from mirror.net.listen import parse_host_port

    if value is None:
        return None
    text = value.strip()
    try:
        host, port = ("127.0.0.1", int(text)) if text.isdigit() else parse_host_port(text, None)
    except ValueError as error:
        raise click.BadParameter(f"{value!r}: {error}", param_hint="--metrics") from None
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--metrics")
    return host or "127.0.0.1", port


def _resolve_map(entries: tuple[str, ...]) -> dict[tuple[str, int], str]:
    out = {}
    for entry in entries:
        host, _, rest = entry.partition(":")
        port, _, address = rest.partition(":")
        if not host or not port.isdigit() or not address:
            raise click.BadParameter(f"{entry!r} is not HOST:PORT:ADDRESS", param_hint="--resolve")
        out[(host.lower(), int(port))] = address.strip("[]")
    return out


def _access(proxy_auth: str | None, allow: tuple[str, ...], per_client: int):
    from mirror.proxy.access import AccessPolicy, parse_networks

    credentials = None
    if proxy_auth:
        user, sep, password = proxy_auth.partition(":")
        if not sep or not user:
            raise click.BadParameter("expected USER:PASSWORD", param_hint="--proxy-auth")
        credentials = (user, password)
    try:
        networks = parse_networks(allow)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--allow") from None
    return AccessPolicy(networks, per_client, credentials)


def _router(url: str | None, url_file: str | None, routes: tuple[str, ...]):
    from mirror.emit.routes import RouteError, Router, parse_proxy_url, parse_route

    if url_file:
        with open(url_file, encoding="utf-8") as f:
            url = (f.readline().strip() or None) if url is None else url
    try:
        default = parse_proxy_url(url) if url else None
        rules = tuple(parse_route(rule, default) for rule in routes)
    except RouteError as error:
        raise click.BadParameter(str(error), param_hint="--upstream-proxy / --route") from None
    return Router(rules, default)


def _check_upstream_ca(path: str | None) -> None:
    """--upstream-ca must be a PEM bundle with at least one certificate OpenSSL accepts."""
    if not path:
        return
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as error:
        what = ("no PEM certificate in it" if "NO_CERTIFICATE" in str(error)
                else f"not a PEM bundle OpenSSL accepts ({error.reason or error})")
        raise click.BadParameter(f"{path}: {what} (a file of CA certificates is expected, "
                                 "-----BEGIN CERTIFICATE----- ...)",
                                 param_hint="--upstream-ca") from None
    except OSError as error:
        raise click.BadParameter(f"{path}: {error.strerror or error}",
                                 param_hint="--upstream-ca") from None


def _load_config(ctx: click.Context, _param, path: str | None) -> None:
    """--config FILE: TOML keys are the long option names (dashes or underscores)."""
    if not path:
        return
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise click.BadParameter(f"{path}: {error}", param_hint="--config") from None
    names = {}
    for param in ctx.command.params:
        for opt in param.opts:
            if opt.startswith("--"):
                names[opt[2:]] = names[opt[2:].replace("-", "_")] = param
    defaults = {}
    for key, value in data.items():
        option = names.get(key)
        if option is None or option.name is None or option.name == "config":
            raise click.BadParameter(f"{path}: unknown key {key!r}", param_hint="--config")
        if option.multiple and not isinstance(value, list):
            value = [value]
        defaults[option.name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


@click.command("run")
@click.option("--mode", "modes", multiple=True, metavar="MODE",
              help="http: explicit proxy (CONNECT and absolute-form); socks5; transparent: a "
                   "gateway with iptables REDIRECT (or TPROXY with --tproxy); "
                   "reverse:https://HOST:PORT: in front of one origin. Repeat to run several. "
                   "[default: http]")
@click.option("--listen", "listens", multiple=True, metavar="HOST:PORT",
              help="Address per --mode, in order [defaults: http 127.0.0.1:8080, socks5 "
                   "127.0.0.1:1080, transparent 0.0.0.0:8081, reverse 127.0.0.1:8443]; port 0 "
                   "picks a free one.")
@click.option("--ca-dir", type=click.Path(file_okay=False), default=None,
              help="CA directory (created on first run) [default: the user data directory's ca/].")
@click.option("--upstream-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM bundle to verify servers with [default: the system store].")
@click.option("--insecure-upstream", is_flag=True, help="Do not verify servers' certificates.")
@click.option("--store", "store_path", default=None, metavar="PATH|URL", envvar="MIRROR_STORE",
              help="Capture store: a SQLite file, or postgresql://USER@HOST/DB for a store "
                   "shared by several proxies [env MIRROR_STORE; default: the user data "
                   "directory's captures.sqlite3].")
@click.option("--gateway-name", default=None, metavar="NAME",
              help="The name this proxy's records carry in their gateway field [default: the "
                   "host name].")
@click.option("--metrics", "metrics_listen", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT means "
                   "127.0.0.1:PORT) [default: off]. With --workers N, one endpoint for all.")
@click.option("--no-store", is_flag=True, help="Record nothing.")
@click.option("--ignore-hosts", default=None, metavar="REGEX",
              help="Hosts (SNI or destination) to pass through untouched, not intercepted.")
@click.option("--tproxy", is_flag=True,
              help="Transparent mode behind iptables TPROXY (IP_TRANSPARENT listener).")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to reach and handshake with a server.")
@click.option("--resolve", "resolves", multiple=True, metavar="HOST:PORT:ADDRESS",
              help="Connect to ADDRESS for HOST:PORT instead of resolving HOST (like curl's).")
@click.option("--upstream-proxy", default=None, metavar="URL", envvar="MIRROR_UPSTREAM_PROXY",
              help="Reach servers through this proxy: http://, https://, socks5://, socks5h://, "
                   "credentials in the URL [env MIRROR_UPSTREAM_PROXY].")
@click.option("--upstream-proxy-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A file whose first line is the --upstream-proxy URL (keeps credentials out "
                   "of the command line).")
@click.option("--route", "routes", multiple=True, metavar="REGEX=URL|direct|upstream",
              help="Per destination host (SNI or name), first match wins: through URL, "
                   "directly, or through --upstream-proxy. Repeat for more rules.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
              is_eager=True, expose_value=False, callback=_load_config,
              help="A TOML file with any of these options (e.g. upstream-proxy = \"...\", "
                   "route = [\"...\"]); the command line wins.")
@click.option("--spoof-source", is_flag=True,
              help="With --tproxy: connect upstream from the client's own address (the server "
                   "sees the client's IP; `mirror gateway up --mode tproxy` routes the replies).")
@click.option("--on-mismatch", type=click.Choice(["strict", "warn", "passthrough"]),
              default="warn", show_default=True,
              help="When a ClientHello has a field that cannot be sent (an extension, a cipher, "
                   "PSK resumption...): refuse the connection, mirror what can be and record "
                   "the rest, or relay it untouched (no interception).")
@click.option("--tls-engine", type=click.Choice(["auto", "replay", "boringssl"]),
              default="auto", show_default=True,
              help="Who makes the upstream TLS connection: replay sends the client's own "
                   "ClientHello; boringssl has curl-impersonate's BoringSSL build one like it; "
                   "auto uses boringssl where its hello is the client's exactly, else replay. "
                   "A server that picks what only BoringSSL completes (CBC, RSA key exchange, "
                   "DHE, TLS 1.0/1.1) is served by boringssl and remembered.")
@click.option("--keylog", type=click.Path(dir_okay=False), default=None,
              envvar="MIRROR_KEYLOG",
              help="Append both legs' TLS secrets (NSS key-log format, for Wireshark) to FILE.")
@click.option("--no-syn-rewrite", is_flag=True,
              help="Do not rewrite upstream SYNs (NFQUEUE); socket options still carry the "
                   "client's TTL, DF, MSS and window scale.")
@click.option("--proxy-auth", default=None, metavar="USER:PASSWORD", envvar="MIRROR_PROXY_AUTH",
              help="Require these credentials from clients of the explicit modes (HTTP Basic, "
                   "SOCKS5 username/password) [env MIRROR_PROXY_AUTH].")
@click.option("--allow", "allow", multiple=True, metavar="CIDR",
              help="Only accept clients from these networks (repeat) [default: everyone who "
                   "can reach the listener].")
@click.option("--max-conns-per-client", type=click.IntRange(0), default=0, show_default=True,
              help="Concurrent connections one client address may hold (0: no limit).")
@click.option("--start-timeout", type=click.FloatRange(0.5), default=30.0, show_default=True,
              help="Seconds a client has to send its proxy request, ClientHello, TLS handshake "
                   "or first HTTP/1 head (slow senders are closed).")
@click.option("--max-head-size", type=click.IntRange(1024), default=65536, show_default=True,
              help="Largest HTTP/1 request head accepted (bytes); larger ones get a 400.")
@click.option("--max-headers", type=click.IntRange(1), default=100, show_default=True,
              help="Most header lines in an HTTP/1 request head; more get a 400.")
@click.option("--idle-timeout", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Close a connection on which nothing moved, either way, for this long (s).")
@click.option("--upstream-response-timeout", type=click.FloatRange(0), default=60.0,
              show_default=True,
              help="Seconds a server may take to start its response once a request has been "
                   "sent whole (then 504); a response that has started is never cut (0: none).")
@click.option("--workers", "workers_count", type=click.IntRange(1, 64), default=1,
              show_default=True,
              help="Processes serving the same ports (SO_REUSEPORT), e.g. one per core; a "
                   "process holding more connections than another passes it new ones.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def run_command(modes, listens, ca_dir, upstream_ca, insecure_upstream, store_path, no_store,
                ignore_hosts, tproxy, connect_timeout, resolves, upstream_proxy,
                upstream_proxy_file, routes, spoof_source, on_mismatch, keylog, no_syn_rewrite,
                proxy_auth, allow, max_conns_per_client, max_head_size, max_headers,
                start_timeout, idle_timeout, upstream_response_timeout, workers_count,
                verbose, gateway_name=None, metrics_listen=None, tls_engine="auto") -> None:
    """Run the mirroring proxy.

    Every client's TLS ClientHello is mirrored on the connection to the server, and its HTTP
    (HTTP/1 heads, HTTP/2 frames) is relayed as sent; each connection becomes a capture record
    (see `mirror captures`).
    """
    from mirror.proxy.server import ProxyConfig

    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pattern = re.compile(ignore_hosts) if ignore_hosts else None
    except re.error as error:
        raise click.BadParameter(f"not a regular expression: {error}",
                                 param_hint="--ignore-hosts") from None
    _check_upstream_ca(upstream_ca)
    config = ProxyConfig(
        listeners=_listeners(modes, listens),
        ca_dir=Path(ca_dir) if ca_dir else paths.default_ca_dir(),
        store_path=None if no_store else store_spec(store_path),
        gateway_name=gateway_name or socket.gethostname(),
        metrics_listen=_metrics_address(metrics_listen),
        upstream_ca=upstream_ca, insecure_upstream=insecure_upstream, ignore_hosts=pattern,
        tproxy=tproxy, connect_timeout=connect_timeout, resolve=_resolve_map(resolves),
        router=_router(upstream_proxy, upstream_proxy_file, routes),
        syn_rewrite=not no_syn_rewrite, spoof_source=spoof_source, on_mismatch=on_mismatch,
        keylog=keylog, workers_count=workers_count, idle_timeout=idle_timeout,
        upstream_response_timeout=upstream_response_timeout,
        first_bytes_timeout=start_timeout, max_head_size=max_head_size, max_headers=max_headers,
        access=_access(proxy_auth, allow, max_conns_per_client), tls_engine=tls_engine,
    )
    if spoof_source and not tproxy:
        raise click.UsageError("--spoof-source needs --tproxy (a transparent listener)")
    sys.exit(run(config))


def run(config) -> int:
    """Serve; with ``config.workers_count`` > 1, that many processes share the listening ports
    (SO_REUSEPORT: the kernel spreads connections, ``worker_balance`` evens out what it spreads
    unevenly), the CA and the capture store."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if config.workers_count <= 1:
        return asyncio.run(_main(config))
    return _run_workers(config)


def _run_workers(config) -> int:
    import os
    import socket

    from mirror.ca.authority import CAError, CertificateAuthority
    from mirror.proxy.worker_balance import WorkerTable

    try:
        config.ca_created = CertificateAuthority.init(config.ca_dir).created  # before workers
    except (CAError, OSError) as error:
        print(f"mirror: cannot start: {error}", file=sys.stderr)
        return 1
    # Fix port 0 to one port for every worker; the placeholder stays bound (not listening).
    placeholders = []
    for listener in config.listeners:
        if listener.port == 0:
            family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
            placeholder = socket.socket(family, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            placeholder.bind((listener.host, 0))
            listener.port = placeholder.getsockname()[1]
            placeholders.append(placeholder)
    # Each worker writes one byte to this pipe once it listens; the first process announces
    # "listening" only when all have, and fails the start if one could not.
    ready_read, ready_write = os.pipe()
    metrics_dir = None
    if config.metrics_listen is not None:
        # prometheus_client's multiprocess mode: every worker writes its metric files here,
        # the first serves their sum (set before any worker imports prometheus_client)
        import shutil
        import tempfile

        metrics_dir = tempfile.mkdtemp(prefix="mirror-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    table = WorkerTable.create(config.workers_count)   # evens out connections between them
    children = []
    for index in range(1, config.workers_count):
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            code = asyncio.run(_main(config, worker=index, ready_fd=ready_write, table=table))
            os._exit(code)
        children.append(pid)
    os.close(ready_write)
    try:
        code = asyncio.run(_main(config, worker=0, ready_fd=ready_read,
                                 others=len(children), table=table))
    finally:
        os.close(ready_read)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        for child in children:
            _, status = os.waitpid(child, 0)
            code = code or os.waitstatus_to_exitcode(status)
        for placeholder in placeholders:
            placeholder.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


async def _main(config, worker: int = 0, ready_fd: int | None = None, others: int = 0,
                table=None) -> int:
    import os

    from mirror.ca.authority import CAError
    from mirror.proxy.server import Proxy
    from mirror.store import StoreError
    from mirror.upstream.curl.native import NativeError

    loop = asyncio.get_running_loop()
    try:
        proxy = Proxy(config, loop)
        if table is not None:
            proxy.balancer = table.balancer(worker, loop)
        await proxy.start(serve_metrics=worker == 0)
    except (CAError, NativeError, OSError, StoreError) as error:
        print(f"mirror: cannot start: {error}", file=sys.stderr)
        return 1
    signals = _catch_signals(loop)      # before anyone is told we listen
    if worker and ready_fd is not None:     # a forked worker: tell the first process
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        return await _serve(proxy, *signals)
    if (others and ready_fd is not None
            and await asyncio.to_thread(_count_ready, ready_fd, others) < others):
        print("mirror: cannot start: a worker process failed to start", file=sys.stderr)
        await proxy.stop()
        return 1
    if config.workers_count > 1:
        print(f"workers: {config.workers_count} processes (SO_REUSEPORT; a worker holding more "
              "connections than another passes it new ones)", flush=True)
    made = ("created now" if proxy.ca.created or config.ca_created else
             f"the existing CA, made {proxy.ca.cert.not_valid_before_utc:%Y-%m-%d}")
    print(f"CA certificate: {proxy.ca.cert_path} ({made}; clients must trust it; "
          f"`mirror ca export --dir {config.ca_dir}` prints it and how)", flush=True)
    for mode, host, port in proxy.bound:
        shown = f"[{host}]" if ":" in host else host
        print(f"mirror {mode} proxy listening on {shown}:{port}", flush=True)
    print(proxy.tcp.summary(), flush=True)
    router = config.router
    if router.default or router.routes:
        print(f"upstream: {router.label(router.default)}"
              + "".join(f"; route {r.display}" for r in router.routes), flush=True)
    if proxy.metrics_bound is not None:
        host, port = proxy.metrics_bound
        shown = f"[{host}]" if ":" in host else host
        print(f"metrics: http://{shown}:{port}/metrics", flush=True)
    if config.insecure_upstream:
        print("warning: --insecure-upstream: servers' certificates are NOT verified (any "
              "certificate is accepted; the TLS version and cipher suite rules still hold)",
              flush=True)
    print(f"captures: {shown_store(config.store_path) if config.store_path else 'not recorded (--no-store)'}"
          + (f" (gateway {config.gateway_name})" if config.store_path else ""), flush=True)
    for warning in sorted(set(proxy.syn_warnings)):
        print(f"warning: {warning}; TCP fingerprints will be missing", flush=True)
    return await _serve(proxy, *signals)


def _count_ready(fd: int, wanted: int) -> int:
    """Read worker readiness bytes until ``wanted`` arrived or every writer is gone."""
    import os

    seen = 0
    while seen < wanted:
        chunk = os.read(fd, wanted - seen)
        if not chunk:
            break
        seen += len(chunk)
    return seen


def _catch_signals(loop) -> tuple[asyncio.Event, asyncio.Event]:
    """(stop, now): SIGINT / SIGTERM set ``stop``; a second one sets ``now`` (a second
    Ctrl-C: stop without waiting for open connections)."""
    stop, now = asyncio.Event(), asyncio.Event()

    def signalled() -> None:
        (now if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled)
    return stop, now


async def _serve(proxy, stop: asyncio.Event, now: asyncio.Event) -> int:
    """Serve until ``stop``; then drain open connections, saying so, until ``now``."""

    def draining(count: int) -> None:
        plural = "" if count == 1 else "s"
        print(f"mirror: draining {count} connection{plural} (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    await stop.wait()
    await proxy.stop(now=now, draining=draining)
    return 0

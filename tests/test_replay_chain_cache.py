"""The cache of verified chains: a chain verified once is not verified again, and nothing else
about the handshake is taken on trust. Real handshakes against a crafted server and
``openssl s_server``; the cache is each test's own ``VerifiedChains``."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from conftest import capture_client_hello
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from replay_hostile import HostileServer
from replay_pki import Pki
from replay_servers import NAME, openssl_server, run_replay

from mirror.replay.errors import ReplayError
from mirror.replay.verify import server_chain
from mirror.verified_chains import VerifiedChains


@pytest.fixture(scope="module")
def chrome():
    return capture_client_hello("chrome", NAME)


def crafted(leaf, chrome, cache, faults=(), **config):
    server = HostileServer(*leaf, set(faults), group=0x001D)
    try:
        return run_replay(server.port, chrome, **{"chain_cache": cache, **config})
    finally:
        server.close()


def test_second_handshake_takes_the_chain_from_the_cache(pki, leaf, chrome):
    cache = VerifiedChains()
    first, reply = crafted(leaf, chrome, cache, trust=[pki.cert])
    assert reply.endswith(b"hostile but fine") and (cache.hits, cache.misses) == (0, 1)
    second, reply = crafted(leaf, chrome, cache, trust=[pki.cert])
    assert reply.endswith(b"hostile but fine") and (cache.hits, cache.misses) == (1, 1)
    assert second.peer_chain == first.peer_chain and second.peer_chain[-1] == pki.cert


def test_cached_chain_refused_for_another_name(pki, leaf, chrome):
    cache = VerifiedChains()
    crafted(leaf, chrome, cache, trust=[pki.cert])
    with pytest.raises(ReplayError) as error:
        crafted(leaf, chrome, cache, trust=[pki.cert], server_name="other.test")
    assert error.value.reason == "certificate" and "other.test" in error.value.message
    assert cache.hits == 0 and len(cache) == 1


@pytest.mark.parametrize("fault,reason", [("bad-cv", "bad-signature"),
                                          ("bad-finished", "bad-finished")])
def test_cached_chain_does_not_excuse_the_handshake(fault, reason, pki, leaf, chrome):
    cache = VerifiedChains()
    crafted(leaf, chrome, cache, trust=[pki.cert])
    with pytest.raises(ReplayError) as error:
        crafted(leaf, chrome, cache, {fault}, trust=[pki.cert])
    assert error.value.reason == reason, str(error.value)
    assert cache.hits == 1  # the chain came from the cache; the signature was still checked


def test_chain_policy_judges_a_cached_chain_too(pki, leaf, chrome):
    cache = VerifiedChains()
    crafted(leaf, chrome, cache, trust=[pki.cert])
    seen = []

    def chain_policy(chain, groups):
        seen.append(chain[-1] == pki.cert)
        return "this chain is not for these clients"

    with pytest.raises(ReplayError) as error:
        crafted(leaf, chrome, cache, trust=[pki.cert], chain_policy=chain_policy)
    assert error.value.reason == "policy" and seen == [True] and cache.hits == 1


def test_cached_chain_refused_for_another_trust(pki, leaf, chrome):
    cache = VerifiedChains()
    crafted(leaf, chrome, cache, trust=[pki.cert])
    with pytest.raises(ReplayError) as error:
        crafted(leaf, chrome, cache, trust=[Pki("Stranger CA").cert])
    assert error.value.reason == "certificate" and cache.hits == 0


def test_cached_chain_refused_outside_its_validity_and_after_its_max_age(tmp_path, pki, chrome):
    now = [time.time()]
    cache = VerifiedChains(max_age=60, clock=lambda: now[0])
    cert, key = Pki.write(tmp_path, *pki.leaf())
    with openssl_server(cert, key) as port:
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)  # past the leaf's not_after
        with pytest.raises(ReplayError) as error:
            run_replay(port, chrome, trust=[pki.cert], chain_cache=cache, now=later)
        assert error.value.reason == "certificate" and (cache.hits, cache.misses) == (0, 2)
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)  # verified again
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
        assert (cache.hits, cache.misses) == (1, 3)
        now[0] += 61  # its maximum age has passed: verified again
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
        assert (cache.hits, cache.misses) == (1, 4)


def test_cache_is_bounded_least_recently_used_first(pki):
    cache = VerifiedChains(size=2)
    ders = {name: [pki.leaf(names=(name,))[0].public_bytes(Encoding.DER)]
            for name in ("a.test", "b.test", "c.test")}

    def verify(name):
        server_chain(ders[name], trust=[pki.cert], server_name=name, cache=cache)

    for name in ("a.test", "b.test", "a.test", "c.test"):   # c pushes out b, used least lately
        verify(name)
    assert len(cache) == 2 and (cache.hits, cache.misses) == (1, 3)
    verify("a.test")
    verify("c.test")
    assert (cache.hits, cache.misses) == (3, 3)
    verify("b.test")
    assert (cache.hits, cache.misses) == (3, 4)


def test_a_chain_with_one_byte_changed_is_not_a_hit(tmp_path, pki, chrome):
    cache = VerifiedChains()
    leaf, key = pki.leaf()
    der = bytearray(leaf.public_bytes(Encoding.DER))
    der[-1] ^= 0x01                                   # the signature's last byte
    tampered = x509.load_der_x509_certificate(bytes(der))
    cert, key_path = Pki.write(tmp_path, leaf, key)
    with openssl_server(cert, key_path) as port:
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
    cert, key_path = Pki.write(tmp_path, tampered, key, stem="tampered")
    with openssl_server(cert, key_path) as port, pytest.raises(ReplayError) as error:
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
    assert error.value.reason == "certificate" and (cache.hits, cache.misses) == (0, 2)


def test_a_chain_with_one_more_certificate_is_not_a_hit(tmp_path, pki, chrome):
    cache = VerifiedChains()
    cert, key = Pki.write(tmp_path, *pki.leaf())
    extra = tmp_path / "extra.pem"
    extra.write_bytes(Pki("Unrelated CA").cert.public_bytes(Encoding.PEM))
    with openssl_server(cert, key) as port:
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    with openssl_server(cert, key, "-cert_chain", str(extra)) as port:
        run_replay(port, chrome, trust=[pki.cert], chain_cache=cache)
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)


def test_the_replay_engine_shares_one_cache_per_ca_file(tmp_path, pki, chrome):
    """Through the engine's opener, as the proxy calls it: the CA file's store is one trust,
    so a second connection hits the process's cache; another CA file never does."""
    import asyncio

    from mirror.replay.verify import SHARED_CHAINS
    from mirror.upstream.connection import UpstreamError, UpstreamTarget
    from mirror.upstream.replay.opener import ReplayOptions, open_replay
    from mirror.wire.tls import read_client_hello

    hello = read_client_hello(chrome)
    cert, key = Pki.write(tmp_path, *pki.leaf())
    ca_file, stranger = tmp_path / "ca.pem", tmp_path / "stranger.pem"
    ca_file.write_bytes(pki.cert.public_bytes(Encoding.PEM))
    stranger.write_bytes(Pki("Stranger CA").cert.public_bytes(Encoding.PEM))

    async def connect(port: int, path) -> None:
        connection = await open_replay(asyncio.get_running_loop(),
                                       UpstreamTarget("127.0.0.1", port, NAME), hello,
                                       ReplayOptions(ca_file=str(path), timeout=5))
        connection.close()

    with openssl_server(cert, key) as port:
        hits, misses = SHARED_CHAINS.hits, SHARED_CHAINS.misses
        asyncio.run(connect(port, ca_file))
        asyncio.run(connect(port, ca_file))
        assert (SHARED_CHAINS.hits - hits, SHARED_CHAINS.misses - misses) == (1, 1)
        with pytest.raises(UpstreamError) as error:
            asyncio.run(connect(port, stranger))
        assert error.value.stage == "upstream-certificate", str(error.value)
        assert (SHARED_CHAINS.hits - hits, SHARED_CHAINS.misses - misses) == (1, 2)

"""The replay engine's parsers of server bytes raise only ReplayError, whatever the bytes.

Samples are real: the flights openssl s_server sent to the engine (TLS 1.3, a HelloRetryRequest,
TLS 1.2 with its plaintext Certificate and ServerKeyExchange), replayed into fresh clients after
random edits; and every message parser fed edited valid messages and random bytes.
"""

from __future__ import annotations

import functools
import struct
import zlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fuzzing import FUZZ_SETTINGS, edits, mutate
from hypothesis import given, settings
from hypothesis import strategies as st
from replay_pki import Pki
from replay_servers import NAME, Recorder, openssl_server, run_replay, system_curl_hello

from mirror.replay import messages as m
from mirror.replay.client import ReplayClient, ReplayConfig
from mirror.replay.errors import ReplayError
from mirror.wire.tls import read_client_hello

CASES = {"tls13": ("p256", []), "hrr": ("rsa", ["-groups", "P-384"]),
         "tls12": ("rsa", ["-tls1_2"])}


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    """name -> (client first flight, server bytes, session id the server echoed)."""
    pki, directory = Pki(), tmp_path_factory.mktemp("replay-fuzz")
    hello = system_curl_hello()
    out = {}
    for name, (kind, options) in CASES.items():
        cert, key = Pki.write(directory, *pki.leaf(kind=kind), stem=kind)
        with openssl_server(cert, key, *options) as port, Recorder(port) as recorder:
            run_replay(recorder.port, hello, trust=[pki.cert])
        sent = read_client_hello(bytes(recorder.streams[0]))
        out[name] = (hello, bytes(recorder.replies[0]), sent.session_id)
    return out


def feed(hello: bytes, server: bytes, session_id: bytes, pieces: list[int]) -> None:
    client = ReplayClient(ReplayConfig(client_hello=read_client_hello(hello), trust=[],
                                       server_name=NAME, insecure=True))
    client.start()
    server = server.replace(session_id, client.hello.session_id)
    try:
        pos = 0
        for size in pieces:
            client.receive(server[pos:pos + size])
            pos += size
        client.receive(server[pos:])
        client.eof()
    except ReplayError:
        pass


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_real_server_flights_raise_only_replay_error(flights, data):
    name = data.draw(st.sampled_from(sorted(flights)))
    hello, server, session_id = flights[name]
    limit = min(len(server), 3000)  # the plaintext part and the first encrypted records
    edited = mutate(server[:limit], data.draw(edits(limit))) + server[limit:]
    feed(hello, edited, session_id, data.draw(st.lists(st.integers(1, 700), max_size=4)))


def test_unedited_flights_replay_cleanly_up_to_the_keys(flights):
    """The samples are good: a fresh client gets through the server's plaintext messages."""
    for name, (hello, server, session_id) in flights.items():
        client = ReplayClient(ReplayConfig(client_hello=read_client_hello(hello),
                                           server_name=NAME, insecure=True))
        client.start()
        with pytest.raises(ReplayError) as error:  # the keys differ: the first record fails
            client.receive(server.replace(session_id, client.hello.session_id))
        expected = {"tls12": "bad-signature"}.get(name, "bad-record-mac")
        assert error.value.reason == expected, (name, str(error.value))


@functools.cache
def _samples() -> list[tuple[str, bytes]]:
    der = Pki().cert.public_bytes(Encoding.DER)
    entry = len(der).to_bytes(3, "big") + der + b"\x00\x00"
    certificate13 = b"\x00" + len(entry).to_bytes(3, "big") + entry
    return [
        ("server_hello", b"\x03\x03" + bytes(32) + b"\x00\x13\x01\x00\x00\x2e\x00\x2b\x00\x02"
                         b"\x03\x04\x00\x33\x00\x24\x00\x1d\x00\x20" + bytes(32)),
        ("certificate13", certificate13),
        ("certificate12", (len(der) + 3).to_bytes(3, "big") + len(der).to_bytes(3, "big") + der),
        ("compressed", b"\x00\x01" + len(certificate13).to_bytes(3, "big")
         + len(zlib.compress(certificate13)).to_bytes(3, "big") + zlib.compress(certificate13)),
        ("certificate_verify", b"\x04\x03\x00\x04abcd"),
        ("certificate_request13", b"\x00\x00\x0a\x00\x0d\x00\x06\x00\x04\x04\x03\x08\x04"),
        ("certificate_request12", b"\x01\x01\x00\x02\x04\x01\x00\x00"),
        ("ticket13", bytes(8) + b"\x00\x00\x04tick\x00\x00"),
        ("ticket12", bytes(4) + b"\x00\x04tick"),
        ("key_update", b"\x01"),
        ("server_key_exchange", b"\x03\x00\x1d\x20" + bytes(32) + b"\x04\x03\x00\x02ab"),
        ("certificate_status", b"\x01\x00\x00\x03abc"),
        ("extensions", struct.pack("!HH", 16, 5) + b"\x00\x03\x02h2"),
    ]


PARSERS = [m.parse_server_hello, m.parse_certificate13, m.parse_certificate12,
           lambda body: m.decompress_certificate(m.parse_compressed_certificate(body)),
           m.parse_certificate_verify, m.parse_certificate_request13,
           m.parse_certificate_request12, m.parse_new_session_ticket13,
           m.parse_new_session_ticket12, m.parse_key_update, m.parse_server_key_exchange,
           m.parse_certificate_status, lambda body: m.parse_extensions(body, "fuzz")]


def test_samples_parse():
    for (name, body), parse in zip(_samples(), PARSERS, strict=True):
        parse(body)  # each sample is valid for its own parser
        assert name


@FUZZ_SETTINGS
@given(data=st.data())
def test_message_parsers_raise_only_replay_error(data):
    samples = _samples()
    body = data.draw(st.one_of(st.binary(max_size=300), st.sampled_from(samples).map(
        lambda sample: sample[1])))
    body = mutate(body, data.draw(edits(max(1, len(body)))))
    for parse in PARSERS:
        try:
            parse(body)
        except ReplayError:
            pass


@given(st.binary(max_size=64), st.integers(0, 3))
def test_handshake_buffer_and_record_reader_raise_only_replay_error(data, split):
    from mirror.replay.records import RecordReader

    buffer, reader = m.HandshakeBuffer(max_message=1000), RecordReader()
    try:
        for piece in (data[:split], data[split:]):
            buffer.feed(piece)
            reader.feed(piece)
            while buffer.next() is not None:
                pass
            while reader.next() is not None:
                pass
    except ReplayError:
        pass


@given(st.lists(st.tuples(st.sampled_from([20, 21, 22, 23]),
                          st.sampled_from([0, 1, 5, 300, 16384, 16401])), max_size=12),
       st.lists(st.integers(1, 70000), min_size=1, max_size=20), st.booleans())
@settings(FUZZ_SETTINGS, max_examples=100)
def test_record_reader_cuts_records_back_whatever_the_reads(records, reads, view):
    """Records however the stream is cut into reads (a record straddling two reads, a header
    split, reads of many records) come out whole, in order, and nothing is left pending."""
    from mirror.replay.records import RecordReader

    sent = [(kind, bytes([size % 251]) * size) for kind, size in records]
    stream = b"".join(struct.pack("!BHH", kind, 0x0303, len(data)) + data for kind, data in sent)
    reader, got, pos, index = RecordReader(), [], 0, 0
    while pos < len(stream):
        step = reads[index % len(reads)]
        index += 1
        reader.feed(stream[pos:pos + step])
        pos += step
        while (record := reader.next(view=view)) is not None:
            kind, header, fragment = record
            assert header == struct.pack("!BHH", kind, 0x0303, len(fragment))
            got.append((kind, bytes(fragment)))
    assert got == sent
    assert reader.pending == 0


def test_record_reader_joins_only_the_record_that_straddles_two_reads():
    """A read that completes a partial record: that record is joined, the records after it are
    views of the read itself (a 256 KiB read is not copied to add a few bytes in front)."""
    from mirror.replay.records import RecordReader

    records = [struct.pack("!BHH", 23, 0x0303, 16384) + bytes([n]) * 16384 for n in range(5)]
    stream = b"".join(records)
    first, second = stream[:10000], stream[10000:]
    reader = RecordReader()
    reader.feed(first)
    assert reader.next(view=True) is None
    reader.feed(second)
    cut = [reader.next(view=True) for _ in range(5)]
    assert reader.next() is None and reader.pending == 0
    assert [bytes(fragment) for _, _, fragment in cut] == [r[5:] for r in records]
    assert all(isinstance(fragment, memoryview) and fragment.obj is second
               for _, _, fragment in cut[1:])

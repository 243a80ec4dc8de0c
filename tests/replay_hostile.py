"""A crafted TLS 1.3 server on loopback that misbehaves on purpose, for the replay engine.

It speaks just enough TLS 1.3 (built from the engine's key schedule and record layer, checked
against real servers elsewhere) to reach the step a test wants to break: a wrong CertificateVerify
or Finished, a HelloRetryRequest for a group the client did not offer, a second HRR, a suite or
extension not offered, a downgrade sentinel, truncated or oversized records, an alert mid-
handshake, a KeyUpdate flood; or to send what is legal but rare (0.5-RTT data). ``faults``
names what to break; without any the handshake is correct (ECDSA P-256 leaf), the client's
Finished is checked and its request answered.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import zlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from mirror.replay.keyschedule import TLS13_SUITES, KeySchedule
from mirror.replay.records import RecordReader, Tls13Protection
from mirror.wire.tls import read_client_hello

HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def hs(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def split_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The complete handshake messages at the start of ``data`` as (type, whole message)."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        end = pos + 4 + int.from_bytes(data[pos + 1:pos + 4], "big")
        if end > len(data):
            break
        out.append((data[pos], data[pos:end]))
        pos = end
    return out


def record(kind: int, data: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", kind, version, len(data)) + data


BULK_BODY = bytes(range(256)) * 400  # what the "bulk" fault answers, after BULK_HEAD
BULK_HEAD = b"HTTP/1.0 200 OK\r\n\r\n"
HALF_RTT = b"sent after the server's Finished, before the client's"  # the "half-rtt" fault


def bulk_records(write: Tls13Protection, faults: set[str]) -> list[bytes]:
    """BULK_HEAD + BULK_BODY in full 16 KiB records; "padded": each record's inner plaintext
    padded with zeros; "tampered": the third record's last ciphertext byte flipped."""
    data, records = BULK_HEAD + BULK_BODY, []
    step = 16000 if "padded" in faults else 16384
    for pos in range(0, len(data), step):
        inner = data[pos:pos + step] + b"\x17" + (bytes(300) if "padded" in faults else b"")
        header = struct.pack("!BHH", 23, 0x0303, len(inner) + write.tag_len)
        nonce = (write.iv ^ write.seq).to_bytes(12, "big")
        write.seq += 1
        sealed = bytearray(header + write.aead.encrypt(nonce, inner, header))
        if "tampered" in faults and len(records) == 2:
            sealed[-1] ^= 1
        records.append(bytes(sealed))
    return records


class HostileServer:
    """Serves one connection per ``faults`` set; ``self.seen`` keeps what the server learnt."""

    def __init__(self, cert, key, faults: set[str], **options) -> None:
        self.cert, self.key, self.faults, self.options = cert, key, faults, options
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.seen: dict[str, object] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)

    def _run(self) -> None:
        # the client gives up on purpose in most tests: whatever the server hits then is moot
        with contextlib.suppress(Exception):
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(5)
                self._serve(conn)

    def _hello(self, conn, stream: bytearray):
        while True:
            hello = read_client_hello(bytes(stream))
            if hello is not None:
                del stream[:hello.consumed]
                return hello
            chunk = conn.recv(65536)
            assert chunk
            stream += chunk

    def _serve(self, conn: socket.socket) -> None:
        faults, stream = self.faults, bytearray()
        ch = self._hello(conn, stream)
        suite = TLS13_SUITES[self.options.get("suite", 0x1301)]
        code = self.options.get("cipher", suite.code)
        sv = ext(43, b"\x03\x04")
        if "downgrade" in faults:
            random = os.urandom(24) + b"DOWNGRD\x01"
            body = (b"\x03\x03" + random + bytes([len(ch.session_id)]) + ch.session_id
                    + b"\xc0\x2f\x00" + struct.pack("!H", 5) + ext(65281, b"\x00"))
            conn.sendall(record(22, hs(2, body)))
            conn.recv(100)
            return
        if self.options.get("tls12"):
            self._serve12(conn, ch, stream)
            return
        transcript = [ch.raw]
        if "hrr" in faults or "second-hrr" in faults:
            group = self.options.get("hrr_group", 0x0018)
            exts = sv if group is None else sv + ext(51, struct.pack("!H", group))
            cookie = self.options.get("cookie")
            if cookie:
                exts += ext(44, struct.pack("!H", len(cookie)) + cookie)
            hrr = hs(2, b"\x03\x03" + HRR_RANDOM + bytes([len(ch.session_id)]) + ch.session_id
                     + struct.pack("!HBH", code, 0, len(exts)) + exts)
            conn.sendall(record(22, hrr) + record(20, b"\x01"))
            stream.clear()
            while True:  # skip the client's CCS, read its second hello
                if stream[:1] == b"\x14" and len(stream) >= 6:
                    del stream[:6]
                if stream[:1] == b"\x16":
                    with contextlib.suppress(Exception):
                        ch2 = read_client_hello(bytes(stream))
                        if ch2 is not None:
                            del stream[:ch2.consumed]
                            break
                chunk = conn.recv(65536)
                assert chunk
                stream += chunk
            self.seen["second_hello"] = ch2
            if "second-hrr" in faults:
                conn.sendall(record(22, hrr))
                conn.recv(100)
                return
            ch = ch2
        group, peer = next((g, k) for g, k in ((e.group, e.key_exchange)
                                               for e in ch.key_share_entries)
                           if g == self.options.get("group", g) and g in (0x1D, 0x11EC, 0x17,
                                                                         0x18, 0x6399, 0x11EB))
        shared, public = self._exchange(group, peer)
        exts = sv + ext(51, struct.pack("!HH", group, len(public)) + public)
        sh = hs(2, b"\x03\x03" + os.urandom(32) + bytes([len(ch.session_id)]) + ch.session_id
                + struct.pack("!HBH", code, 0, len(exts)) + exts)
        if "hrr" in faults:
            import hashlib
            transcript = [hs(254, hashlib.new(suite.hash_name, transcript[0]).digest()),
                          hrr, ch.raw]
        transcript.append(sh)
        conn.sendall(record(22, sh))
        if "alert" in faults:
            conn.sendall(record(21, b"\x02\x28"))
            conn.recv(100)
            return
        ks = KeySchedule(suite)

        def th() -> bytes:
            import hashlib
            return hashlib.new(suite.hash_name, b"".join(transcript)).digest()

        c_hs, s_hs = ks.handshake(shared, th())
        write = Tls13Protection(suite, *ks.traffic_keys(s_hs))
        flight = []
        ee_exts = self.options.get("ee", b"")
        flight.append(hs(8, struct.pack("!H", len(ee_exts)) + ee_exts))
        if "cert-request" in faults:
            flight.append(hs(13, b"\x00" + struct.pack("!H", 10) + ext(13, b"\x00\x04\x04\x03\x08\x04")))
        der = self.cert.public_bytes(serialization.Encoding.DER)
        entry_exts, cv_key = b"", self.key
        if self.options.get("dc"):
            credential, cv_key = self._delegated_credential(der)
            entry_exts = ext(34, credential)
        cert_body = len(der).to_bytes(3, "big") + der + struct.pack("!H", len(entry_exts)) \
            + entry_exts
        cert_body = b"\x00" + len(cert_body).to_bytes(3, "big") + cert_body
        compression = self.options.get("compress")
        if compression:
            packed = {1: zlib.compress, 2: _brotli, 3: _zstd}[compression](cert_body)
            length = len(cert_body) + self.options.get("lie", 0)
            flight.append(hs(25, struct.pack("!H", compression) + length.to_bytes(3, "big")
                             + len(packed).to_bytes(3, "big") + packed))
        else:
            flight.append(hs(11, cert_body))
        transcript.extend(flight)
        signature = cv_key.sign(b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + th(),
                                ec.ECDSA(hashes.SHA256()))
        if "bad-cv" in faults:
            signature = self.key.sign(b"something else", ec.ECDSA(hashes.SHA256()))
        cv = hs(15, struct.pack("!HH", 0x0403, len(signature)) + signature)
        transcript.append(cv)
        verify = ks.finished(s_hs, th())
        if "bad-finished" in faults:
            verify = bytes([verify[0] ^ 1]) + verify[1:]
        fin = hs(20, verify)
        transcript.append(fin)
        c_ap, s_ap = ks.application(th())
        data = b"".join([*flight, cv, fin])
        if "data-before-finished" in faults:  # application data under the handshake keys
            records = [write.seal(22, data[:-len(fin)]),
                       write.seal(23, b"HTTP/1.0 200 OK\r\n\r\nnot yet authenticated"),
                       write.seal(22, fin)]
        else:
            records = [write.seal(22, data[i:i + 16384]) for i in range(0, len(data), 16384)]
        if "oversized" in faults:
            records = [write.seal(22, data[:100] + bytes(17000))]
        payload = b"".join(records)
        half_rtt = None
        if "half-rtt" in faults:  # 0.5-RTT data (RFC 8446 2): with the flight, under s_ap
            half_rtt = Tls13Protection(suite, *ks.traffic_keys(s_ap))
            payload += half_rtt.seal(23, HALF_RTT)
        if "truncated" in faults:
            conn.sendall(payload[:-10])
            conn.shutdown(socket.SHUT_WR)
            conn.recv(100)
            return
        conn.sendall(payload)
        read = Tls13Protection(suite, *ks.traffic_keys(c_hs))
        reader = RecordReader()
        reader.feed(bytes(stream))

        def next_record():
            while True:
                rec = reader.next()
                if rec is not None:
                    return rec
                chunk = conn.recv(65536)
                assert chunk
                reader.feed(chunk)

        client_msgs = b""
        while True:
            kind, header, fragment = next_record()
            if kind == 20:
                continue
            inner, plain = read.open(header, fragment)
            assert inner == 22, inner
            client_msgs += plain
            messages = split_messages(client_msgs)
            if messages and messages[-1][0] == 20:
                break
        for _, raw in messages[:-1]:
            transcript.append(raw)
        assert messages[-1][1][4:] == ks.finished(c_hs, th()), "client Finished wrong"
        self.seen["client_finished_ok"] = True
        self.seen["client_messages"] = [kind for kind, _ in messages]
        read = Tls13Protection(suite, *ks.traffic_keys(c_ap))
        write = half_rtt or Tls13Protection(suite, *ks.traffic_keys(s_ap))
        early_request = b""
        if "post-handshake-auth" in faults:
            transcript.append(messages[-1][1])  # the client's Finished
            signature_algorithms = ext(13, b"\x00\x04\x04\x03\x08\x04")
            request_message = hs(13, b"\x02ab" + struct.pack("!H", len(signature_algorithms))
                                 + signature_algorithms)
            conn.sendall(write.seal(22, request_message))
            transcript.append(request_message)
            answer = b""
            while True:
                kind, header, fragment = next_record()
                inner, plain = read.open(header, fragment)
                if inner == 23:  # the request may come first
                    early_request += plain
                    continue
                assert inner == 22
                answer += plain
                answered = split_messages(answer)
                if answered and answered[-1][0] == 20:
                    break
            assert [kind for kind, _ in answered] == [11, 20]
            assert answered[0][1] == hs(11, b"\x02ab\x00\x00\x00")
            transcript.append(answered[0][1])
            assert answered[1][1][4:] == ks.finished(c_ap, th()), "post-handshake Finished wrong"
            self.seen["post_handshake_auth_ok"] = True
        out = []
        if "keyupdate-flood" in faults:
            for _ in range(200):
                out.append(write.seal(22, hs(24, b"\x00")))
                s_ap = ks.next_secret(s_ap)
                write = Tls13Protection(suite, *ks.traffic_keys(s_ap))
            conn.sendall(b"".join(out))
            conn.recv(100)
            return
        if "keyupdate" in faults:
            out.append(write.seal(22, hs(4, bytes(8) + b"\x00" + b"\x00\x04tick" + b"\x00\x00")))
            out.append(write.seal(22, hs(24, b"\x01")))
            s_ap = ks.next_secret(s_ap)
            write = Tls13Protection(suite, *ks.traffic_keys(s_ap))
        conn.sendall(b"".join(out))
        request, sizes = early_request, []
        while b"\r\n\r\n" not in request or (
                "keyupdate" in faults and not self.seen.get("client_key_update")):
            kind, header, fragment = next_record()
            inner, plain = read.open(header, fragment)
            if inner == 22 and plain == hs(24, b"\x00"):
                self.seen["client_key_update"] = True
                c_ap = ks.next_secret(c_ap)
                read = Tls13Protection(suite, *ks.traffic_keys(c_ap))
                continue
            assert inner == 23
            request += plain
            sizes.append(len(plain))
        self.seen["request"], self.seen["request_sizes"] = request, sizes
        if "bulk" in faults:
            conn.sendall(b"".join(bulk_records(write, faults)) + write.seal(21, b"\x01\x00"))
            return
        conn.sendall(write.seal(23, b"HTTP/1.0 200 OK\r\n\r\nhostile but fine")
                     + write.seal(21, b"\x01\x00"))

    def _delegated_credential(self, der: bytes):
        """An RFC 9345 credential (P-256, 0x0403) signed by the leaf; faults dc-expired/bad-sig."""
        import datetime as dt

        key = ec.generate_private_key(ec.SECP256R1())
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        until = dt.datetime.now(dt.UTC) + dt.timedelta(
            hours=-1 if "dc-expired" in self.faults else 24)
        valid_time = int((until - self.cert.not_valid_before_utc).total_seconds())
        credential = struct.pack("!IH", valid_time, 0x0403) + len(spki).to_bytes(3, "big") + spki
        signed = (b" " * 64 + b"TLS, server delegated credentials\x00" + der + credential
                  + b"\x04\x03")
        if "dc-bad-sig" in self.faults:
            signed += b"!"
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return credential + b"\x04\x03" + struct.pack("!H", len(signature)) + signature, key

    def _serve12(self, conn: socket.socket, ch, stream: bytearray) -> None:
        """TLS 1.2 ECDHE-ECDSA with AES-128-GCM (or ``cipher``), faults as for TLS 1.3."""
        import hashlib

        from mirror.replay.keyschedule import TLS12_SUITES, prf12
        from mirror.replay.records import Tls12Protection

        faults = self.faults
        suite = TLS12_SUITES[self.options.get("cipher", 0xC02B)]
        server_random = os.urandom(32)
        exts = b""
        if "bad-ri" in faults:
            exts += ext(65281, b"\x01\x00")
        elif "no-ri" not in faults:
            exts += ext(65281, b"\x00")
        ems = ch.has(23) and "no-ems" not in faults
        if ems:
            exts += ext(23, b"")
        exts += self.options.get("sh_ext", b"")
        sh = hs(2, b"\x03\x03" + server_random + b"\x20" + os.urandom(32)
                + struct.pack("!HBH", suite.code, 0, len(exts)) + exts)
        der = self.cert.public_bytes(serialization.Encoding.DER)
        certificate = hs(11, (len(der) + 3).to_bytes(3, "big") + len(der).to_bytes(3, "big") + der)
        group = self.options.get("ske_group", 0x001D)
        key = x25519.X25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        if group == 0x001E:
            from cryptography.hazmat.primitives.asymmetric import x448
            public = x448.X448PrivateKey.generate().public_key().public_bytes_raw()
        params = struct.pack("!BHB", 3, group, len(public)) + public
        signed = ch.random + server_random + params
        if "bad-ske" in faults:
            signed = ch.random + os.urandom(32) + params
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        ske = hs(12, params + struct.pack("!HH", 0x0403, len(signature)) + signature)
        shd = hs(14, b"")
        transcript = [ch.raw, sh, certificate, ske, shd]
        conn.sendall(record(22, b"".join(transcript[1:])))
        reader = RecordReader()
        reader.feed(bytes(stream))

        def next_record():
            while True:
                rec = reader.next()
                if rec is not None:
                    return rec
                chunk = conn.recv(65536)
                assert chunk
                reader.feed(chunk)

        kind, _, cke = next_record()
        assert kind == 22 and cke[0] == 16, cke[:1]
        transcript.append(cke)
        pms = key.exchange(x25519.X25519PublicKey.from_public_bytes(cke[5:]))
        h = suite.hash_name

        def th() -> bytes:
            return hashlib.new(h, b"".join(transcript)).digest()

        if ems:
            ms = prf12(h, pms, b"extended master secret", th(), 48)
        else:
            ms = prf12(h, pms, b"master secret", ch.random + server_random, 48)
        k, iv = suite.key_len, suite.iv_len
        block = prf12(h, ms, b"key expansion", server_random + ch.random, 2 * k + 2 * iv)
        read = Tls12Protection(suite, block[:k], block[2 * k:2 * k + iv])
        write = Tls12Protection(suite, block[k:2 * k], block[2 * k + iv:])
        kind, _, ccs = next_record()
        assert (kind, ccs) == (20, b"\x01")
        kind, header, fragment = next_record()
        _, client_finished = read.open(header, fragment)
        assert client_finished[4:] == prf12(h, ms, b"client finished", th(), 12)
        self.seen["client_finished_ok"] = True
        transcript.append(client_finished)
        verify = prf12(h, ms, b"server finished", th(), 12)
        if "bad-finished" in faults:
            verify = bytes([verify[0] ^ 1]) + verify[1:]
        conn.sendall(record(20, b"\x01") + write.seal(22, hs(20, verify)))
        request = b""
        while b"\r\n\r\n" not in request:
            kind, header, fragment = next_record()
            request += read.open(header, fragment)[1]
        self.seen["request"] = request
        conn.sendall(write.seal(23, b"HTTP/1.0 200 OK\r\n\r\ntls12 but fine")
                     + write.seal(21, b"\x01\x00"))

    def _exchange(self, group: int, peer: bytes) -> tuple[bytes, bytes]:
        if group == 0x6399:  # X25519Kyber768Draft00: not computed here either, never completes
            return os.urandom(32), os.urandom(32 + 1088)
        if group == 0x11EC:
            shared, ciphertext = mlkem.MLKEM768PublicKey.from_public_bytes(
                peer[:1184]).encapsulate()
            key = x25519.X25519PrivateKey.generate()
            return (shared + key.exchange(x25519.X25519PublicKey.from_public_bytes(peer[1184:])),
                    ciphertext + key.public_key().public_bytes_raw())
        if group == 0x11EB:  # SecP256r1MLKEM768: the ECDH part first
            ecdh_secret, point = self._exchange(0x17, peer[:65])
            shared, ciphertext = mlkem.MLKEM768PublicKey.from_public_bytes(
                peer[65:]).encapsulate()
            return ecdh_secret + shared, point + ciphertext
        if group == 0x1D:
            key = x25519.X25519PrivateKey.generate()
            return (key.exchange(x25519.X25519PublicKey.from_public_bytes(peer)),
                    key.public_key().public_bytes_raw())
        curve = ec.SECP256R1() if group == 0x17 else ec.SECP384R1()
        key = ec.generate_private_key(curve)
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve, peer)
        return key.exchange(ec.ECDH(), public), key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _brotli(data: bytes) -> bytes:
    import brotli
    return brotli.compress(data)


def _zstd(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(data)

"""The check that a replayed ClientHello is the client's own with only the fresh fields made
fresh (random, session id, key shares, ECH enc); shared by the replay engine's tests."""

from __future__ import annotations

from mirror.wire.tls import (
    EXT_EARLY_DATA,
    EXT_ENCRYPTED_CLIENT_HELLO,
    EXT_KEY_SHARE,
    EXT_PRE_SHARED_KEY,
    EXT_SESSION_TICKET,
    ClientHello,
    is_grease,
)


def assert_same_but_fresh(original: ClientHello, again: ClientHello) -> None:
    """``again`` is ``original`` with only the fields a client makes fresh made fresh."""
    assert again.record_version == original.record_version
    assert again.legacy_version == original.legacy_version
    assert again.cipher_suites == original.cipher_suites
    assert again.compression_methods == original.compression_methods
    assert again.random != original.random
    assert len(again.session_id) == len(original.session_id)
    if original.session_id:
        assert again.session_id != original.session_id
    kept = [e for e in original.extensions
            if e.type not in (EXT_PRE_SHARED_KEY, EXT_EARLY_DATA)]
    assert [e.type for e in again.extensions] == [e.type for e in kept]
    for mine, theirs in zip(again.extensions, kept, strict=True):
        if mine.type == EXT_KEY_SHARE:
            assert [(k.group, k.key_length) for k in mine.value] == \
                   [(k.group, k.key_length) for k in theirs.value]
            for new, old in zip(mine.value, theirs.value, strict=True):
                if is_grease(new.group):
                    assert new.key_exchange == old.key_exchange
                else:
                    assert new.key_exchange != old.key_exchange
        elif mine.type == EXT_ENCRYPTED_CLIENT_HELLO and theirs.value.ech_type == 0:
            new, old = mine.value, theirs.value
            assert (new.kdf_id, new.aead_id, len(new.enc), new.payload_length) == \
                   (old.kdf_id, old.aead_id, len(old.enc), old.payload_length)
            assert new.enc != old.enc
        elif mine.type == EXT_SESSION_TICKET:
            assert mine.data == b"" or mine.data == theirs.data
        else:
            assert mine.data == theirs.data, mine.name
    if not original.pre_shared_key and not original.has(EXT_EARLY_DATA) \
            and not original.session_ticket:
        assert len(again.raw) == len(original.raw)

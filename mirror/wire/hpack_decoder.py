"""HPACK (RFC 7541) header block decoding for the HTTP/2 reader, cheap enough for every request.

One job: turn a connection's header blocks, in order, into ``(name, value)`` lists (latin-1
strings, so every byte round-trips), keeping the connection's dynamic table. It is what a
relay runs on the event loop for each request and each response, so the common cases are made
cheap: indexed fields cost a list lookup, integers that fit their prefix need no loop, and a
Huffman-coded string that was seen before (a server's ``date`` within the second, its
``server`` and ``content-type``, a client's user agent before its encoder indexed it) is a dict
lookup in a small bounded cache shared by all connections (the decoding of a byte string never
changes). A whole block that does not read the dynamic table (static indexes and literals
only, no size update: how nginx sends its responses) is cached the same way, with the entries
it adds to the table, so a response identical to an earlier one costs a lookup and those adds.
Other strings are decoded four bits at a time from a table built once from RFC 7541
Appendix B's code (as the ``hpack`` package ships it).

Limits, each a :class:`~mirror.wire.errors.WireError` (layer ``"http2"``, message starting
``HPACK:``):

* a decoded header list larger than ``max_header_list_size`` (RFC 9113 §6.5.2 size: name +
  value + 32 per field), checked field by field while decoding: the HPACK-bomb guard (a few
  bytes that index a large table entry again and again);
* a dynamic table size update above ``max_table_size`` (the SETTINGS_HEADER_TABLE_SIZE we
  advertised) or anywhere but at the start of a block;
* integers longer than 5 continuation bytes, index 0 or past the tables, strings that run past
  the block, Huffman strings with EOS, more than 7 bits of padding, or padding that is not all
  ones.

After an error the decoder's table may be half-updated: the connection is over (RFC 7541 §2.3:
a decoding error is a connection error).
"""

from __future__ import annotations

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from mirror.wire.errors import WireError

# RFC 7541 Appendix A.
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""),
    ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""), ("set-cookie", ""),
    ("strict-transport-security", ""), ("transfer-encoding", ""), ("user-agent", ""),
    ("vary", ""), ("via", ""), ("www-authenticate", ""),
)
_STATIC = len(STATIC_TABLE)
_ENTRY_OVERHEAD = 32
_MAX_INTEGER_BYTES = 5          # continuation bytes: values up to 2^35, far above any limit

_CACHE_MAX_ENTRIES = 4096       # decoded Huffman strings kept (the cache is then cleared)
_CACHE_MAX_LENGTH = 128         # only strings this short (encoded) are kept: bounded memory
_huffman_cache: dict[bytes, str] = {}
_BLOCKS_MAX_ENTRIES = 512       # whole blocks that do not read the dynamic table
_BLOCKS_MAX_LENGTH = 1024
Fields = tuple[tuple[str, str], ...]
_block_cache: dict[bytes, tuple[Fields, int, Fields]] = {}   # block: fields, size, table adds


def _error(message: str) -> WireError:
    return WireError(f"HPACK: {message}", layer="http2")


# --------------------------------------------------------------------------- Huffman


def _build_nibble_table() -> tuple[list[tuple[int, bytes]], frozenset[int]]:
    """A state machine that decodes four bits per step: states are the code tree's inner
    nodes (0 = the root), plus a failure state that EOS leads to and never leaves. Entry
    ``state * 16 + nibble`` is (next state, the bytes completed on the way). Also the states
    a string may end in: the root, or a node reached by at most 7 one-bits (EOS's prefix)."""
    children: list[list[int | None]] = [[None, None]]       # inner nodes; leaves are ~symbol
    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                children[node][bit] = ~symbol
            else:
                child = children[node][bit]
                if child is None:
                    children.append([None, None])
                    child = children[node][bit] = len(children) - 1
                node = child
    fail = len(children)
    table: list[tuple[int, bytes]] = []
    for state in range(fail + 1):
        for nibble in range(16):
            if state == fail:
                table.append((fail, b""))
                continue
            node, out = state, bytearray()
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child is None or child == ~256:          # no such code, or EOS
                    node = fail
                    break
                if child < 0:
                    out.append(~child)
                    node = 0
                else:
                    node = child
            table.append((node, bytes(out)))
    accepting, node = {0}, 0
    for _ in range(7):                  # EOS's code starts with 30 one-bits: inner nodes all
        node = children[node][1] or 0
        accepting.add(node)
    return table, frozenset(accepting)


_NIBBLES, _ACCEPTING = _build_nibble_table()


def huffman_decode(data: bytes) -> bytes:
    """RFC 7541 §5.2 Huffman decoding (no cache); WireError on EOS or bad padding."""
    table = _NIBBLES
    state = 0
    out = []
    for byte in data:
        state, emitted = table[(state << 4) | (byte >> 4)]
        if emitted:
            out.append(emitted)
        state, emitted = table[(state << 4) | (byte & 15)]
        if emitted:
            out.append(emitted)
    if state not in _ACCEPTING:
        raise _error("invalid Huffman code (EOS, or padding that is not 1-7 one-bits)")
    return b"".join(out)


def _huffman_str(data: bytes) -> str:
    text = _huffman_cache.get(data)
    if text is None:
        text = huffman_decode(data).decode("latin-1")
        if len(data) <= _CACHE_MAX_LENGTH:
            if len(_huffman_cache) >= _CACHE_MAX_ENTRIES:
                _huffman_cache.clear()
            _huffman_cache[data] = text
    return text


# --------------------------------------------------------------------------- the decoder


class HpackDecoder:
    """The decoding side of one HPACK context (one per connection and direction)."""

    __slots__ = ("_entries", "_size", "max_header_list_size", "max_table_size", "table_size")

    def __init__(self, *, max_header_list_size: int = 65536, max_table_size: int = 4096) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_table_size = max_table_size    # what the peer may use (our SETTINGS value)
        self.table_size = max_table_size        # what it uses now (its size updates)
        self._entries: list[tuple[str, str]] = []   # the dynamic table, oldest first
        self._size = 0

    @property
    def dynamic_table(self) -> list[tuple[str, str]]:
        """The dynamic table's entries, newest first (index 62 first)."""
        return self._entries[::-1]

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The fields of one complete header block, in order."""
        limit = self.max_header_list_size
        known = _block_cache.get(block)
        if known is not None:
            fields, size, adds = known
            if size > limit:
                raise _error(f"header list larger than {limit} bytes (name + value + 32 per "
                             f"field)")
            if adds and self.table_size:        # size 0 (nginx's choice): adds are dropped
                for field in adds:
                    self._add(field)
            return list(fields)
        headers: list[tuple[str, str]] = []
        total = 0
        pure = True                   # no dynamic table read, no size update: the bytes decide
        added: list[tuple[str, str]] = []   # what the block adds to the table, in order
        pos, end = 0, len(block)
        while pos < end:
            first = block[pos]
            if first & 0x80:                              # indexed field (§6.1)
                index = first & 0x7F
                pos += 1
                if index == 0x7F:
                    index, pos = self._integer(block, pos, index)
                if index > _STATIC:
                    pure = False
                field = self._field(index)
            elif first & 0x20 and not first & 0x40:      # dynamic table size update (§6.3)
                if headers:
                    raise _error("dynamic table size update after a field")
                size = first & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = self._integer(block, pos, size)
                if size > self.max_table_size:
                    raise _error(f"dynamic table size update to {size}, above the "
                                 f"{self.max_table_size} allowed")
                self.table_size = size
                self._evict(size)
                pure = False
                continue
            else:                                         # literals (§6.2)
                indexing = first & 0x40
                prefix = 0x3F if indexing else 0x0F
                index = first & prefix
                pos += 1
                if index == prefix:
                    index, pos = self._integer(block, pos, index)
                if index:
                    if index > _STATIC:
                        pure = False
                    name = self._field(index)[0]
                else:
                    name, pos = self._string(block, pos)
                value, pos = self._string(block, pos)
                field = (name, value)
                if indexing:
                    self._add(field)
                    added.append(field)
            total += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if total > limit:
                raise _error(f"header list larger than {limit} bytes (name + value + 32 per "
                             f"field)")
            headers.append(field)
        if pure and end <= _BLOCKS_MAX_LENGTH:
            if len(_block_cache) >= _BLOCKS_MAX_ENTRIES:
                _block_cache.clear()
            _block_cache[bytes(block)] = (tuple(headers), total, tuple(added))
        return headers

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _integer(block: bytes, pos: int, value: int) -> tuple[int, int]:
        """The rest of an integer whose prefix was all ones (§5.1)."""
        shift = 0
        for _ in range(_MAX_INTEGER_BYTES):
            if pos >= len(block):
                raise _error("header block ends inside an integer")
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
        raise _error(f"integer longer than {_MAX_INTEGER_BYTES} continuation bytes")

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(block):
            raise _error("header block ends before a string")
        first = block[pos]
        length = first & 0x7F
        pos += 1
        if length == 0x7F:
            length, pos = self._integer(block, pos, length)
        end = pos + length
        if end > len(block):
            raise _error(f"string of {length} bytes runs past the header block")
        if first & 0x80:
            return _huffman_str(block[pos:end]), end
        return block[pos:end].decode("latin-1"), end

    def _field(self, index: int) -> tuple[str, str]:
        if 0 < index <= _STATIC:
            return STATIC_TABLE[index - 1]
        entries = self._entries
        position = index - _STATIC
        if index == 0 or position > len(entries):
            raise _error(f"index {index} is not in the tables ({_STATIC} static, "
                         f"{len(entries)} dynamic)")
        return entries[-position]

    def _add(self, field: tuple[str, str]) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        if size > self.table_size:          # §4.4: a too-large entry empties the table
            self._entries.clear()
            self._size = 0
            return
        self._entries.append(field)
        self._size += size
        self._evict(self.table_size)

    def _evict(self, limit: int) -> None:
        entries = self._entries
        drop = 0
        size = self._size
        while size > limit:
            name, value = entries[drop]
            size -= len(name) + len(value) + _ENTRY_OVERHEAD
            drop += 1
        if drop:
            del entries[:drop]
            self._size = size

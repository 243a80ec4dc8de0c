"""Read symbol addresses from an ELF64 file's symbol tables (``.symtab`` and ``.dynsym``).

curl_cffi links BoringSSL statically and exports only libcurl's functions. The BoringSSL
functions the proxy needs (ALPN, ALPS, key-log callbacks) are still in the shared object's
symbol table, so their addresses are the library's load address plus their ``st_value``.
Pure: bytes in, a name -> offset mapping out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

SHT_SYMTAB = 2
SHT_DYNSYM = 11
STT_FUNC = 2


class ElfError(ValueError):
    """Not a little-endian ELF64 file, or a damaged section table."""


def function_offsets(image: bytes, names: Iterable[str]) -> dict[str, int]:
    """Offsets (``st_value``) of the named functions; names not found are absent."""
    wanted = {name.encode() for name in names}
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ElfError("not a little-endian 64-bit ELF file")
    try:
        (shoff,) = struct.unpack_from("<Q", image, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize)
                    for i in range(shnum)]
        found: dict[str, int] = {}
        for _name, kind, _f, _a, offset, size, link, _i, _al, entsize in sections:
            if kind not in (SHT_SYMTAB, SHT_DYNSYM) or entsize != 24:
                continue
            str_off = sections[link][4]
            for pos in range(offset, offset + size, 24):
                st_name, st_info, _other, _shndx, st_value, _size = struct.unpack_from(
                    "<IBBHQQ", image, pos)
                if st_value == 0 or st_info & 0xF != STT_FUNC:
                    continue
                start = str_off + st_name
                end = image.index(b"\0", start)
                name = image[start:end]
                if name in wanted:
                    found[name.decode()] = st_value
        return found
    except (struct.error, IndexError, ValueError) as error:
        raise ElfError(f"damaged ELF section or symbol table: {error}") from None

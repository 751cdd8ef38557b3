"""Decoders for encapsulated section data: LZMA, LZMA with the x86 BCJ filter, EFI/Tiano,
Brotli, and the CRC32 check. Every decoder learns the output size from the stream's own header
and charges it against the parse limits before producing a byte, so a bomb is refused early.
"""

from __future__ import annotations

import lzma
import re
import struct
import zlib
from typing import Callable

from ovmftool.errors import ImageError
from ovmftool.model import structs as S
from ovmftool.model.limits import Limits


class DecodeError(ImageError):
    """Compressed data could not be decoded."""


def _lzma(data: bytes, limits: Limits, where: str) -> bytes:
    # The ".lzma alone" format EDK II's LzmaCompress writes: 5 property bytes, u64 size, stream.
    if len(data) < 13:
        raise DecodeError("LZMA data shorter than its 13-byte header", where)
    size = struct.unpack_from("<Q", data, 5)[0]
    if size == 0xFFFFFFFFFFFFFFFF:
        raise DecodeError("LZMA stream without a declared size", where)
    limits.charge_expansion(size, where)
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    try:
        out = dec.decompress(data, max_length=size + 1)
    except lzma.LZMAError as e:
        raise DecodeError(f"LZMA decode failed ({e})", where) from None
    if len(out) != size:
        raise DecodeError(f"LZMA stream yields {len(out)} bytes, header says {size}", where)
    return out


_E8E9 = re.compile(rb"[\xe8\xe9]")


def _ms_byte_ok(b: int) -> bool:
    return ((b + 1) & 0xFE) == 0


def x86_convert(buf: bytearray, ip: int = 0, encoding: bool = False) -> bytearray:
    """The LZMA SDK's x86 BCJ filter (Bra86.c), in place: call/jmp rel32 targets made absolute
    (encoding) or relative again (decoding). EDK II's LZMA-F86 sections apply it after LZMA."""
    size = len(buf)
    if size < 5:
        return buf
    limit = size - 4
    ip += 5
    pos = 0
    mask = 0
    while True:
        m = _E8E9.search(buf, pos, limit)
        if m is None:
            return buf
        p = m.start()
        d = p - pos
        pos = p
        if d > 2:
            mask = 0
        else:
            mask >>= d
            if mask != 0 and (mask > 4 or mask == 3 or _ms_byte_ok(buf[p + (mask >> 1) + 1])):
                mask = (mask >> 1) | 4
                pos += 1
                continue
        if _ms_byte_ok(buf[p + 4]):
            v = int.from_bytes(buf[p + 1 : p + 5], "little")
            cur = (ip + pos) & 0xFFFFFFFF
            pos += 5
            v = (v + cur if encoding else v - cur) & 0xFFFFFFFF
            if mask != 0:
                sh = (mask & 6) << 2
                if _ms_byte_ok((v >> sh) & 0xFF):
                    v ^= ((0x100 << sh) - 1) & 0xFFFFFFFF
                    v = (v + cur if encoding else v - cur) & 0xFFFFFFFF
                mask = 0
            buf[p + 1 : p + 4] = (v & 0xFFFFFF).to_bytes(3, "little")
            buf[p + 4] = 0xFF if (v >> 24) & 1 else 0x00
        else:
            mask = (mask >> 1) | 4
            pos += 1


def _lzma_f86(data: bytes, limits: Limits, where: str) -> bytes:
    return bytes(x86_convert(bytearray(_lzma(data, limits, where))))


def _efi_common(data: bytes, limits: Limits, where: str, tiano: bool) -> bytes:
    # EFI and Tiano streams start with CompSize u32, OrigSize u32.
    if len(data) < 8:
        raise DecodeError("EFI/Tiano data shorter than its 8-byte header", where)
    comp, orig = struct.unpack_from("<II", data)
    if comp + 8 > len(data):
        raise DecodeError(f"EFI/Tiano compressed size {comp} exceeds the {len(data) - 8} bytes present", where)
    limits.charge_expansion(orig, where)
    if orig == 0:
        return b""
    from uefi_firmware import efi_compressor  # C extension, loaded only when needed

    fn = efi_compressor.TianoDecompress if tiano else efi_compressor.EfiDecompress
    try:
        out = fn(bytes(data[: comp + 8]), comp + 8)
    except Exception as e:  # the extension raises bare Exceptions
        raise DecodeError(f"{'Tiano' if tiano else 'EFI'} decode failed ({e})", where) from None
    if len(out) != orig:
        raise DecodeError(f"decoded {len(out)} bytes, header says {orig}", where)
    return bytes(out)


def _efi(data: bytes, limits: Limits, where: str) -> bytes:
    return _efi_common(data, limits, where, tiano=False)


def _tiano(data: bytes, limits: Limits, where: str) -> bytes:
    return _efi_common(data, limits, where, tiano=True)


def _brotli(data: bytes, limits: Limits, where: str) -> bytes:
    # EDK II BrotliCompress: u64 decompressed size, u64 scratch size, then the Brotli stream.
    if len(data) < 16:
        raise DecodeError("Brotli data shorter than its 16-byte header", where)
    size = struct.unpack_from("<Q", data)[0]
    limits.charge_expansion(size, where)
    import brotli

    dec = brotli.Decompressor()
    try:
        out = dec.process(bytes(data[16:]), output_buffer_limit=size + 1)
    except brotli.error as e:
        raise DecodeError(f"Brotli decode failed ({e})", where) from None
    if len(out) != size or not dec.is_finished():
        raise DecodeError(f"Brotli stream yields {len(out)}+ bytes, header says {size}", where)
    return out


Decoder = Callable[[bytes, Limits, str], bytes]
GUIDED_DECODERS: dict[str, Decoder] = {
    S.LZMA_GUID: _lzma,
    S.LZMA_F86_GUID: _lzma_f86,
    S.TIANO_GUID: _tiano,
    S.BROTLI_GUID: _brotli,
}
COMPRESSION_DECODERS: dict[int, Decoder] = {1: _efi}


def crc32(data: bytes) -> int:
    """The CRC32 EDK II's GUIDed CRC32 sections carry (IEEE 802.3, as zlib computes it)."""
    return zlib.crc32(data) & 0xFFFFFFFF

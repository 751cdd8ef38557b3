"""Decoders for encapsulated section data: LZMA, LZMA with the x86 BCJ filter, EFI/Tiano,
Brotli, and the CRC32 check. Every decoder learns the output size from the stream's own header
and charges it against the parse limits before producing a byte, so a bomb is refused early.
"""

from __future__ import annotations

import lzma
import re
import struct
import zlib
from collections.abc import Callable

from ovmftool.errors import DecodeError
from ovmftool.model import structs as S
from ovmftool.model.limits import Limits


class LzmaStream:
    """The decoding of one LZMA stream in EDK II's format (".lzma alone" as LzmaCompress writes it:
    5 property bytes, u64 size, then the stream), fed piece by piece: `feed` returns the bytes
    each piece decodes to, `end` checks the total. `_lzma` decodes a whole section with it; the
    encoder proves a stream it writes with it while it writes it."""

    def __init__(self, header: bytes, limits: Limits, where: str) -> None:
        hsize = S.LZMA_HEADER.size
        if len(header) < hsize:
            raise DecodeError(f"LZMA data shorter than its {hsize}-byte header", where)
        self.size = S.LZMA_UNCOMPRESSED_SIZE.get(header)
        if self.size == 0xFFFFFFFFFFFFFFFF:
            raise DecodeError("LZMA stream without a declared size", where)
        limits.charge_expansion(self.size, where)
        self.where, self.got = where, 0
        # EDK II decodes into the output buffer (its dictionary size is not used); liblzma allocates
        # the dictionary the header declares (up to 4 GiB). A dictionary larger than the output is
        # never reached into, so decode with one no larger than the output: same bytes, bounded memory.
        head = bytearray(header[:hsize])
        if S.LZMA_DICTIONARY_SIZE.get(head) > max(self.size, 4096):
            S.LZMA_DICTIONARY_SIZE.put(head, 0, max(self.size, 4096))
        self._dec = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
        self.feed(bytes(head))

    def feed(self, piece: bytes | memoryview) -> bytes:
        """What `piece` (the stream's next bytes) decodes to; never more than the declared size + 1."""
        try:
            out = self._dec.decompress(piece, max_length=self.size + 1 - self.got)
        except lzma.LZMAError as e:
            raise DecodeError(f"LZMA decode failed ({e})", self.where) from None
        self.got += len(out)
        return out

    def end(self) -> None:
        """The stream yielded exactly the size its header declares."""
        if self.got != self.size:
            raise DecodeError(f"LZMA stream yields {self.got} bytes, header says {self.size}", self.where)


def _lzma(data: bytes, limits: Limits, where: str) -> bytes:
    s = LzmaStream(data, limits, where)
    out = s.feed(memoryview(data)[S.LZMA_HEADER.size :])
    s.end()
    return out


_E8E9_MS = re.compile(rb"[\xe8\xe9](?=...[\x00\xff])", re.S)  # a call/jmp whose rel32 top byte is 00/FF
_IS_E8E9 = bytes(1 if b in (0xE8, 0xE9) else 0 for b in range(256))
_IS_MS = bytes(1 if b in (0x00, 0xFF) else 0 for b in range(256))


def x86_convert(buf: bytearray, ip: int = 0, encoding: bool = False) -> bytearray:
    """The LZMA SDK's x86 BCJ filter (Bra86.c, the one EDK II's LzmaCustomDecompressLib builds),
    in place: call/jmp rel32 targets made absolute (encoding) or relative again (decoding).

    Bra86.c walks every E8/E9 byte with a 3-bit mask of the E8/E9 bytes among the 3 before it
    (those after the last converted instruction). Here the regex engine finds only the E8/E9
    bytes that can be converted (00/FF four bytes on) and the mask is read from the bytes before
    them, so Python runs once per convertible byte, not once per E8/E9 (a section of E8 bytes is
    one regex scan). Decoding uses liblzma's identical filter (`bcj_x86_decode`), in C."""
    size = len(buf)
    if size < 5:
        return buf
    data = bytes(buf)
    ip += 5
    pos = 0  # first byte after the last converted instruction
    is_e, is_ms = _IS_E8E9, _IS_MS
    unpack, pack = struct.unpack_from, struct.pack_into
    for m in _E8E9_MS.finditer(data):
        p = m.start()
        if p < pos:
            continue  # inside the instruction just converted
        if p - 3 >= pos:
            mask = (is_e[data[p - 1]] << 2) | (is_e[data[p - 2]] << 1) | is_e[data[p - 3]]
        else:
            mask = 0
            if p - 1 >= pos:
                mask = is_e[data[p - 1]] << 2
                if p - 2 >= pos:
                    mask |= is_e[data[p - 2]] << 1
        if mask and (mask > 4 or mask == 3 or is_ms[data[p + (mask >> 1) + 1]]):
            continue
        cur = (ip + p) & 0xFFFFFFFF
        v = unpack("<I", data, p + 1)[0]
        v = (v + cur if encoding else v - cur) & 0xFFFFFFFF
        if mask:
            sh = (mask & 6) << 2
            if is_ms[(v >> sh) & 0xFF]:
                v ^= (0x100 << sh) - 1
                v = (v + cur if encoding else v - cur) & 0xFFFFFFFF
        pack("<I", buf, p + 1, (v & 0xFFFFFF) | (0xFF000000 if v & 0x1000000 else 0))
        pos = p + 5
    return buf


_BCJ_FILTERS = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "dict_size": 1 << 16}]


def bcj_x86_decode(data: bytes) -> bytes:
    """`x86_convert(data)` (decoding, ip 0) by liblzma's x86 BCJ filter, which is the LZMA SDK's
    (tests check them against each other): `data` is wrapped as LZMA2 stored chunks (64 KiB each)
    and decoded through the raw filter chain X86 <- LZMA2, so the conversion runs in C. A
    decoded section of 128 MiB converts in about a second, whatever its bytes."""
    n, mv = len(data), memoryview(data)
    parts: list[bytes | memoryview] = []
    for i in range(0, n, 1 << 16):
        k = min(1 << 16, n - i)
        parts.append(bytes((1 if i == 0 else 2, (k - 1) >> 8, (k - 1) & 0xFF)))
        parts.append(mv[i : i + k])
    parts.append(b"\0")
    return lzma.decompress(b"".join(parts), format=lzma.FORMAT_RAW, filters=_BCJ_FILTERS)


def _lzma_f86(data: bytes, limits: Limits, where: str) -> bytes:
    # EDK II: LzmaUefiDecompress, then x86_Convert(Output, OutputSize, 0, &state, 0) on all of it.
    return bcj_x86_decode(_lzma(data, limits, where))


def _efi_common(data: bytes, limits: Limits, where: str, tiano: bool) -> bytes:
    # EFI and Tiano streams start with CompSize u32, OrigSize u32.
    hsize = S.EFI_COMPRESS_HEADER.size
    if len(data) < hsize:
        raise DecodeError(f"EFI/Tiano data shorter than its {hsize}-byte header", where)
    comp, orig = S.EFI_COMPRESS_HEADER.unpack_from(data)
    if comp + hsize > len(data):
        raise DecodeError(f"EFI/Tiano compressed size {comp} exceeds the {len(data) - hsize} bytes present", where)
    limits.charge_expansion(orig, where)
    if orig == 0:
        return b""
    from uefi_firmware import efi_compressor  # C extension, loaded only when needed

    fn = efi_compressor.TianoDecompress if tiano else efi_compressor.EfiDecompress
    try:
        out = fn(bytes(data[: comp + hsize]), comp + hsize)
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
    hsize = S.BROTLI_HEADER.size
    if len(data) < hsize:
        raise DecodeError(f"Brotli data shorter than its {hsize}-byte header", where)
    size = S.BROTLI_HEADER.unpack_from(data)[0]
    limits.charge_expansion(size, where)
    import brotli

    dec = brotli.Decompressor()
    try:
        out = dec.process(bytes(data[hsize:]), output_buffer_limit=size + 1)
    except brotli.error as e:
        raise DecodeError(f"Brotli decode failed ({e})", where) from None
    if len(out) != size or not dec.is_finished():
        raise DecodeError(f"Brotli stream yields {len(out)}+ bytes, header says {size}", where)
    return bytes(out)


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

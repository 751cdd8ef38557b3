"""A small, independent writer of PI structures for tests: sections, FFS files, volumes.

It deliberately does not reuse ovmftool's parser code, so tests check the parser against a
second reading of the specification. Compression uses the real compressors: Python's lzma
(the .lzma alone format EDK II's LzmaCompress writes), Brotli, and EDK II's own EFI/Tiano C
code as shipped in uefi-firmware.
"""

from __future__ import annotations

import lzma
import struct
import uuid
import zlib

FFS2 = "8c8ce578-8a3d-4f1c-9935-896185c32dd3"
FFS3 = "5473c07a-3dcb-4dca-bd6f-1e9689e7349a"
LZMA = "ee4e5898-3914-4259-9d6e-dc7bd79403cf"
LZMAF86 = "d42ae6bd-1352-4bfb-909a-ca72a6eae889"
TIANO = "a31280ad-481e-41b6-95e8-127f4c984779"
BROTLI = "3d532050-5cda-4fd0-879e-0f7f630d5afb"
CRC32 = "fc1bcdb0-7d31-49aa-936a-a4600d9dd083"


def g(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def section(stype: int, body: bytes) -> bytes:
    size = 4 + len(body)
    if size >= 0xFFFFFF:
        return struct.pack("<3sBI", b"\xff\xff\xff", stype, size + 4) + body
    return size.to_bytes(3, "little") + bytes([stype]) + body


def sections(*secs: bytes) -> bytes:
    out = b""
    for s in secs:
        out = pad4(out) + s
    return out


def ui(name: str) -> bytes:
    return section(0x15, (name + "\0").encode("utf-16-le"))


def version(build: int, text: str) -> bytes:
    return section(0x14, struct.pack("<H", build) + (text + "\0").encode("utf-16-le"))


def guided(guid: str, payload: bytes, attrs: int = 1, extra: bytes = b"") -> bytes:
    data_offset = 4 + 20 + len(extra)
    return section(0x02, g(guid) + struct.pack("<HH", data_offset, attrs) + extra + payload)


def lzma_alone(data: bytes) -> bytes:
    # EDK II's LzmaCompress records the uncompressed size in the header; Python writes -1 there.
    out = bytearray(
        lzma.compress(data, format=lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 20}])
    )
    out[5:13] = struct.pack("<Q", len(data))
    return bytes(out)


def lzma_section(inner: bytes) -> bytes:
    return guided(LZMA, lzma_alone(inner))


def brotli_section(inner: bytes) -> bytes:
    import brotli

    return guided(BROTLI, struct.pack("<QQ", len(inner), 0) + brotli.compress(inner))


def tiano_section(inner: bytes) -> bytes:
    from uefi_firmware import efi_compressor

    return guided(TIANO, efi_compressor.TianoCompress(inner, len(inner)))


def efi_section(inner: bytes) -> bytes:
    from uefi_firmware import efi_compressor

    comp = efi_compressor.EfiCompress(inner, len(inner))
    return section(0x01, struct.pack("<IB", len(inner), 1) + comp)


def stored_section(inner: bytes) -> bytes:
    return section(0x01, struct.pack("<IB", len(inner), 0) + inner)


def crc_section(inner: bytes) -> bytes:
    return guided(CRC32, inner, attrs=2, extra=struct.pack("<I", zlib.crc32(inner) & 0xFFFFFFFF))


def ffs(
    guid: str, ftype: int, body: bytes, attrs: int = 0, checksum: bool = False, erase: int = 0xFF, large: bool = False
) -> bytes:
    hsize = 32 if large else 24
    size = hsize + len(body)
    if checksum:
        attrs |= 0x40
    if large:
        attrs |= 0x01
    size3 = b"\0\0\0" if large else size.to_bytes(3, "little")
    state = 0xF8 if erase == 0xFF else 0x07
    fsum = (-sum(body)) & 0xFF if checksum else 0xAA
    hdr = bytearray(g(guid) + bytes([0, fsum, ftype, attrs]) + size3 + bytes([state]))
    if large:
        hdr += struct.pack("<Q", size)
    hdr[16] = (-(sum(hdr) - hdr[17] - hdr[23])) & 0xFF
    return bytes(hdr) + body


def fv(
    files: list[bytes],
    size: int = 0x10000,
    fs: str = FFS2,
    name: str | None = None,
    erase: int = 0xFF,
    block: int = 0x1000,
) -> bytes:
    hlen = 56 + 16
    attrs = 0x0004FEFF if erase == 0xFF else 0x0004F6FF
    body = b""
    if name is not None:
        ext = g(name) + struct.pack("<I", 20)
        body = ffs("ffffffff-ffff-ffff-ffff-ffffffffffff", 0xF0, ext, erase=erase)
        extoff = hlen + 24
    else:
        extoff = 0
    for f in files:
        body += bytes([erase]) * (-(hlen + len(body)) % 8) + f
    assert hlen + len(body) <= size, "volume too small"
    hdr = bytearray(b"\0" * 16 + g(fs) + struct.pack("<Q4sIHHHBB", size, b"_FVH", attrs, hlen, 0, extoff, 0, 2))
    hdr += struct.pack("<IIII", size // block, block, 0, 0)
    csum = (-sum(struct.unpack(f"<{hlen // 2}H", hdr))) & 0xFFFF
    hdr[50:52] = struct.pack("<H", csum)
    out = bytes(hdr) + body
    return out + bytes([erase]) * (size - len(out))


def fv_section(vol: bytes) -> bytes:
    return section(0x17, vol)

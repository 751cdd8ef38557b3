"""Firmware volumes (PI vol. 3, 3.2.1): header, extended header, block map, files, free space."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ovmftool.model import structs as S
from ovmftool.model.checksums import fv_header_checksum, sum16
from ovmftool.model.context import ParseContext
from ovmftool.model.node import Node, Space

# FvNameGuid values of the volumes OVMF's FDF files declare.
KNOWN_VOLUMES = {
    "763bed0d-de9f-48f5-81f1-3e90e1b1a015": "SECFV",
    "6938079b-b503-4e3d-9d24-b28337a25806": "PEIFV",
    "7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1": "DXEFV",
    "48db5e17-707c-472d-91cd-1613e7ef51b0": "FVMAIN_COMPACT",
}


@dataclass
class FreeSpace:
    """The erased tail of a volume after its last file."""

    offset: int
    size: int
    clean: bool  # every byte is the erase value


@dataclass(eq=False, repr=False)
class Volume(Node):
    """One firmware volume. Children are its FFS files, in order."""

    fs_guid: str = ""
    attributes: int = 0
    header_length: int = 0
    revision: int = 0
    checksum: int = 0
    checksum_ok: bool = False
    fv_length: int = 0
    block_map: list[tuple[int, int]] = field(default_factory=list)
    name_guid: str | None = None
    ext_entries: list[tuple[int, int]] = field(default_factory=list)  # (type, size)
    free: FreeSpace | None = None
    name: str = ""

    kind = "volume"

    @property
    def file_system(self) -> str:
        """FFS2, FFS3, NVRAM or the file system GUID."""
        return S.FILE_SYSTEMS.get(self.fs_guid, self.fs_guid)

    @property
    def erase_byte(self) -> int:
        """The value of erased flash in this volume."""
        return 0xFF if self.attributes & S.EFI_FVB2_ERASE_POLARITY else 0x00

    @property
    def alignment(self) -> int:
        """Required alignment of the volume (from attribute bits 16..20)."""
        return 1 << ((self.attributes >> S.EFI_FVB2_ALIGNMENT_SHIFT) & 0x1F)


def looks_like_volume(data: bytes, off: int) -> bool:
    """Cheap test: signature at +40 and a header length that fits."""
    if off < 0 or off + S.FV_HEADER.size > len(data):
        return False
    if data[off + S.FV_SIGNATURE_OFFSET : off + S.FV_SIGNATURE_OFFSET + 4] != S.FV_SIGNATURE:
        return False
    hlen = S.FV_HEADER_LENGTH.get(data, off)
    return S.FV_HEADER.size <= hlen <= 0x1000


def has_volume(data: bytes) -> bool:
    """Some offset of `data` holds a firmware volume header whose checksum holds (stricter than
    the parse's cheap test: a PE's code can hold the bytes `_FVH`, e.g. DxeCore comparing them)."""
    pos = 0
    while True:
        hit = data.find(S.FV_SIGNATURE, pos + S.FV_SIGNATURE_OFFSET)
        if hit < 0:
            return False
        start = hit - S.FV_SIGNATURE_OFFSET
        if start % 8 == 0 and looks_like_volume(data, start):
            hlen = S.FV_HEADER_LENGTH.get(data, start)
            hdr = data[start : start + hlen]
            if len(hdr) == hlen and hlen % 2 == 0 and sum(struct.unpack(f"<{hlen // 2}H", hdr)) & 0xFFFF == 0:
                return True
        pos = start + 1


def parse_volume(ctx: ParseContext, space: Space, off: int, limit: int, parent: Node | None) -> Volume:
    """Parse the volume whose header starts at `off` in `space`, not reading past `limit`."""
    data = space.data
    (_zero, fsg, fvlen, _sig, attrs, hlen, csum, extoff, _res, rev) = S.FV_HEADER.unpack_from(data, off)
    vol = Volume(space, off, 0, parent)
    vol.fs_guid, vol.attributes, vol.header_length = S.guid_str(fsg), attrs, hlen
    vol.revision, vol.checksum, vol.fv_length = rev, csum, fvlen
    ctx.limits.charge_node(space.place(off))
    size = fvlen
    if fvlen < hlen or fvlen < S.FV_HEADER.size:
        vol.size = min(max(hlen, S.FV_HEADER.size), limit - off)
        vol.damage(f"volume length 0x{fvlen:X} is smaller than its header (0x{hlen:X})")
        return vol
    if off + fvlen > limit:
        size = limit - off
        vol.damage(f"volume length 0x{fvlen:X} runs past the end of its container (0x{size:X} bytes left)")
    vol.size = size
    if hlen > size:
        vol.damage(f"volume header length 0x{hlen:X} exceeds the bytes present")
        return vol
    hdr = data[off : off + hlen]
    vol.checksum_ok = sum16(hdr) == 0
    if not vol.checksum_ok:
        vol.damage(f"volume header checksum 0x{csum:04X} is wrong")
    # Block map: (NumBlocks, Length) pairs ending with (0, 0).
    p = off + S.FV_HEADER.size
    while p + S.FV_BLOCK.size <= off + hlen:
        nb, ln = S.FV_BLOCK.unpack_from(data, p)
        p += S.FV_BLOCK.size
        if nb == 0 and ln == 0:
            break
        vol.block_map.append((nb, ln))
    else:
        vol.damage("block map has no (0, 0) terminator inside the header")
    mapped = sum(count * length for count, length in vol.block_map)
    if vol.block_map and mapped != fvlen:
        vol.damage(f"block map covers 0x{mapped:X} bytes, volume length is 0x{fvlen:X}")
    if extoff:
        _parse_ext_header(vol, extoff)
    vol.name = KNOWN_VOLUMES.get(vol.name_guid or "", "")
    if vol.fs_guid in (S.FFS2_GUID, S.FFS3_GUID):
        ctx.files(vol)
    return vol


def _parse_ext_header(vol: Volume, extoff: int) -> None:
    data, base, end = vol.space.data, vol.offset, vol.end
    p = base + extoff
    if extoff < vol.header_length or p + S.FV_EXT_HEADER.size > end:
        vol.damage(f"extended header offset 0x{extoff:X} is outside the volume")
        return
    name, ext_size = S.FV_EXT_HEADER.unpack_from(data, p)
    vol.name_guid = S.guid_str(name)
    if ext_size < S.FV_EXT_HEADER.size or p + ext_size > end:
        vol.damage(f"extended header size 0x{ext_size:X} is out of range", p)
        return
    q, qend = p + S.FV_EXT_HEADER.size, p + ext_size
    while q + S.FV_EXT_ENTRY.size <= qend:
        esize, etype = S.FV_EXT_ENTRY.unpack_from(data, q)
        if esize < S.FV_EXT_ENTRY.size or q + esize > qend:
            vol.damage(f"extended header entry size 0x{esize:X} is out of range", q)
            return
        vol.ext_entries.append((etype, esize))
        q += esize


def volume_header(fs_guid: str, length: int, attributes: int, revision: int, block_size: int) -> bytes:
    """A firmware volume header of `length` bytes in blocks of `block_size`: one block map entry
    and its terminator, no extended header, the checksum made right (the volume's bytes after it
    are the caller's)."""
    header_length = S.FV_HEADER.size + 2 * S.FV_BLOCK.size

    def pack(checksum: int) -> bytes:
        return (
            S.FV_HEADER.pack(
                b"\0" * 16,
                S.guid_bytes(fs_guid),
                length,
                S.FV_SIGNATURE,
                attributes,
                header_length,
                checksum,
                0,
                0,
                revision,
            )
            + S.FV_BLOCK.pack(length // block_size, block_size)
            + S.FV_BLOCK.pack(0, 0)
        )

    return pack(fv_header_checksum(pack(0)))

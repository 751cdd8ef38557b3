"""Grow a module to rewrite IoFifo.nasm routines (REP only, no room for a loop in place).

The IN/OUT loops go into new code, and each routine's entry becomes `jmp rel32` to its loop
(the rest of the routine's bytes become INT3). The code lives, in this order of preference:

- in slack: the zero bytes between the end of the linker's `.text` output section and the end
  of the PE section holding it (GenFw pads to the section alignment). Only a build's symbols can
  prove where `.text` ends (EDK II's GccBase.lds merges constants into `.text`, so trailing
  zeros may be the tail of a zero-filled table), so this is used only when the caller passes
  that end (`patch --symbols`). Nothing moves: the image keeps its size;
- in a new section `.sioloop` when the section table has room for one more header;
- otherwise at the end of the last section, which is then marked executable.

The new code sits at file offset == RVA (EDK II images execute in place that way), it carries
no absolute addresses, and nothing covered by a base relocation is touched.

Loops keep the routines' contract (IoReadFifoN/IoWriteFifoN (Port, Count, Buffer)): DF cleared as
the original `cld` does, count 0 moves nothing, non-volatile registers untouched (X64: the loop
uses only RCX, RDX, R8 and RAX; IA32: EDI/ESI saved and restored as the original does).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ovmftool.model import structs as S
from ovmftool.model.pe import PeImage, optional_header

SECTION_NAME = b".sioloop"
_CODE = S.IMAGE_SCN_CNT_CODE | S.IMAGE_SCN_MEM_EXECUTE | S.IMAGE_SCN_MEM_READ


def _x64(direction: str, width: int) -> bytes:
    """cld; xchg rdx, rcx; jrcxz done; L: <move one unit>; add r8, w; loop L; done: ret."""
    o16 = b"\x66" if width == 16 else b""
    if direction == "in":
        unit = o16 + (b"\xec" if width == 8 else b"\xed") + o16 + (b"\x41\x88\x00" if width == 8 else b"\x41\x89\x00")
    else:
        unit = o16 + (b"\x41\x8a\x00" if width == 8 else b"\x41\x8b\x00") + o16 + (b"\xee" if width == 8 else b"\xef")
    body = unit + b"\x49\x83\xc0" + bytes([width // 8])
    loop = bytes([0xE2, (-(len(body) + 2)) & 0xFF])
    return b"\xfc\x48\x87\xca" + bytes([0xE3, len(body) + 2]) + body + loop + b"\xc3"


def _ia32(direction: str, width: int) -> bytes:
    """push edi|esi; cld; mov dx,[esp+8]; mov ecx,[esp+12]; mov edi|esi,[esp+16]; jecxz done;
    L: <move one unit>; add edi|esi, w; loop L; done: pop edi|esi; ret."""
    o16 = b"\x66" if width == 16 else b""
    if direction == "in":
        save, load_buf, step = b"\x57", b"\x8b\x7c\x24\x10", b"\x83\xc7"
        unit = o16 + (b"\xec" if width == 8 else b"\xed") + o16 + (b"\x88\x07" if width == 8 else b"\x89\x07")
    else:
        save, load_buf, step = b"\x56", b"\x8b\x74\x24\x10", b"\x83\xc6"
        unit = o16 + (b"\x8a\x06" if width == 8 else b"\x8b\x06") + o16 + (b"\xee" if width == 8 else b"\xef")
    body = unit + step + bytes([width // 8])
    loop = bytes([0xE2, (-(len(body) + 2)) & 0xFF])
    pop = bytes([save[0] + 8])
    return (
        save
        + b"\xfc\x66\x8b\x54\x24\x08\x8b\x4c\x24\x0c"
        + load_buf
        + bytes([0xE3, len(body) + 2])
        + body
        + loop
        + pop
        + b"\xc3"
    )


def loop_code(arch: str, direction: str, width: int) -> bytes:
    """The IN/OUT loop equivalent to a REP INS/OUTS FIFO routine."""
    return (_x64 if arch == "X64" else _ia32)(direction, width)


@dataclass(frozen=True)
class Routine:
    """One IoFifo.nasm routine to redirect: entry RVA, length, name, direction, width."""

    rva: int
    length: int
    name: str
    direction: str
    width: int


@dataclass(frozen=True)
class Grown:
    """A grown image: its new bytes and, per routine, (entry rva, old bytes, new bytes, loop rva)."""

    data: bytes
    entries: tuple[tuple[int, bytes, bytes, int], ...]
    placement: str  # "slack", "new-section" or "last-section"


class CannotGrow(Exception):
    """The image's layout leaves no way to add code."""


def _align(n: int, a: int) -> int:
    return n + (-n) % max(a, 1)


def _pieces(arch: str, routines: list[Routine]) -> tuple[bytes, list[int]]:
    """The loops for `routines`, each 16-byte aligned: (code, offset of each loop)."""
    code = bytearray()
    offsets = []
    for rt in routines:
        code += b"\xcc" * ((-len(code)) % 16)
        offsets.append(len(code))
        code += loop_code(arch, rt.direction, rt.width)
    return bytes(code), offsets


def slack_room(img: PeImage, code_end: int) -> tuple[int, int] | None:
    """[start, end) RVAs of usable slack after `code_end` (where the build's .text ends): inside
    the executable section holding the code, file offset == RVA, all zero, no relocations."""
    sec = next(
        (s for s in img.sections if s.executable and s.rva < code_end <= s.rva + min(s.virtual_size, s.raw_size)), None
    )
    if sec is None or sec.rva != sec.raw_offset:
        return None
    start, end = _align(code_end, 16), sec.rva + min(sec.virtual_size, sec.raw_size)
    if start >= end or any(img.data[code_end:end]) or img.relocated_in(code_end, end):
        return None
    return start, end


def grow(img: PeImage, arch: str, routines: list[Routine], code_end: int | None = None) -> Grown:
    """Add the loops for `routines` to `img` and redirect each routine's entry to its loop.

    `code_end`: where the build's `.text` output section ends (from its symbols); the slack after
    it is used when the loops fit there."""
    for rt in routines:
        if img.relocated_in(rt.rva, rt.rva + rt.length):
            raise CannotGrow(f"{rt.name} has bytes covered by a base relocation")
    code, offsets = _pieces(arch, routines)
    entries: list[tuple[int, bytes, bytes, int]] = []

    def build(start: int) -> tuple[bytes, list[tuple[int, bytes]]]:
        entries.clear()
        patches = []
        for rt, off in zip(routines, offsets):
            target = start + off
            new = b"\xe9" + struct.pack("<i", target - (rt.rva + 5)) + b"\xcc" * (rt.length - 5)
            entries.append((rt.rva, bytes(img.memory[rt.rva : rt.rva + rt.length]), new, target))
            patches.append((rt.rva, new))
        return code, patches

    data, placement = add_code(img, build, code_end)
    return Grown(data, tuple(entries), placement)


def add_code(img: PeImage, build, code_end: int | None = None) -> tuple[bytes, str]:
    """`img`'s bytes with new code added and bytes patched: `build(start)` gives the code to
    place at rva `start` (its length the same whatever `start`) and the (rva, bytes) patches to
    make, which may depend on `start`. The code goes into the slack after `code_end`, a new
    section, or the end of the last section (the module doc). Returns (data, placement)."""
    if img.format == "TE":
        raise CannotGrow("TE images have no room for another section header")
    raw = bytearray(img.data)
    coff, opt = optional_header(raw)
    nsec = S.COFF_NUMBER_OF_SECTIONS.get(raw, coff)
    table = opt + S.COFF_SIZE_OF_OPTIONAL_HEADER.get(raw, coff)
    hsize = S.PE_SECTION.size
    if any(s.rva != s.raw_offset for s in img.sections if s.raw_size):
        raise CannotGrow("sections are not placed at file offset == RVA")
    first_raw = min((s.raw_offset for s in img.sections if s.raw_size), default=len(raw))
    size = len(build(0)[0])
    room = slack_room(img, code_end) if code_end is not None else None
    if room is not None and room[0] + size <= room[1]:
        code, patches = build(room[0])
        raw[room[0] : room[0] + len(code)] = code
        _apply(img, raw, patches)
        return bytes(raw), "slack"
    salign, falign = img.section_alignment or 0x20, img.file_alignment or 0x20
    for what, a in (("section", salign), ("file", falign)):
        if a & (a - 1) or a > 0x10000:  # padding to it would take gigabytes
            raise CannotGrow(f"{what} alignment 0x{a:X} is not a power of two up to 64 KiB")
    new_header = table + hsize * (nsec + 1) <= min(first_raw, img.size_of_headers)
    last = max(img.sections, key=lambda s: s.rva)
    if new_header:
        start = _align(max(img.size_of_image, len(raw)), max(salign, falign))
        placement = "new-section"
    else:
        start = _align(last.rva + max(last.virtual_size, last.raw_size), 16)
        if start < len(raw) and any(raw[start:]):
            raise CannotGrow("data follows the last section")
        placement = "last-section"
    code, patches = build(start)
    raw_size = _align(len(code), falign)
    if len(raw) < start:
        raw += b"\0" * (start - len(raw))
    raw[start:] = b""
    raw += code + b"\0" * (raw_size - len(code) if new_header else (-len(code)) % falign)
    if new_header:
        hdr = S.PE_SECTION.pack(SECTION_NAME, len(code), start, raw_size, start, 0, 0, 0, 0, _CODE)
        raw[table + hsize * nsec : table + hsize * (nsec + 1)] = hdr
        S.COFF_NUMBER_OF_SECTIONS.put(raw, coff, nsec + 1)
        image_end = start + _align(len(code), salign)
    else:
        i = img.sections.index(last)
        h = table + hsize * i
        new_vsize = start + len(code) - last.rva
        new_rsize = len(raw) - last.raw_offset
        chars = (last.characteristics | _CODE) & ~S.IMAGE_SCN_MEM_DISCARDABLE
        S.PE_SECTION_VIRTUAL_SIZE.put(raw, h, new_vsize)
        S.PE_SECTION_VIRTUAL_ADDRESS.put(raw, h, last.rva)
        S.PE_SECTION_SIZE_OF_RAW_DATA.put(raw, h, new_rsize)
        S.PE_SECTION_POINTER_TO_RAW_DATA.put(raw, h, last.raw_offset)
        S.PE_SECTION_CHARACTERISTICS.put(raw, h, chars)
        image_end = _align(last.rva + new_vsize, salign)
    S.OPT_SIZE_OF_IMAGE.put(raw, opt, max(img.size_of_image, image_end))
    size_of_code = S.OPT_SIZE_OF_CODE.get(raw, opt)
    S.OPT_SIZE_OF_CODE.put(raw, opt, size_of_code + _align(len(code), falign))
    _apply(img, raw, patches)
    return bytes(raw), placement


def _apply(img: PeImage, raw: bytearray, patches: list[tuple[int, bytes]]) -> None:
    for rva, new in patches:
        fo = img.rva_to_offset(rva)
        raw[fo : fo + len(new)] = new
